"""Clients that keep a request in flight for as long as a test wants: an upload that waits before its rest, and a
reader that waits before taking the rest of a large answer (tests/e2e/test_stop.py, test_cluster.py)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import numpy as np

from tests.conftest import png_bytes
from tests.support import scenes

PHOTO = png_bytes(scenes.make_scenes(seed=40, count=1, height=96, width=128)[0].image)
FIRST_PART = 200  # bytes sent before the stop; the rest only once the test says so


class SlowUpload(threading.Thread):
    """A POST /v1/remove whose upload sends FIRST_PART bytes, then waits for ``rest`` before the others: a request
    in flight at the proxy for as long as the test wants."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.rest, self.begun = url, threading.Event(), threading.Event()
        self.answer: httpx.Response | None = None
        self.failure: Exception | None = None

    def body(self) -> Iterator[bytes]:
        yield PHOTO[:FIRST_PART]
        self.begun.set()  # httpx asks for more once the head and the first part are sent
        self.rest.wait(120)
        yield PHOTO[FIRST_PART:]

    def run(self) -> None:
        headers = {"content-type": "image/png", "content-length": str(len(PHOTO))}
        try:
            self.answer = httpx.post(f"{self.url}/v1/remove", content=self.body(), headers=headers, timeout=120)
        except Exception as exc:
            self.failure = exc


class SlowReader(threading.Thread):
    """A POST /v1/remove whose answer is large (an rgba PNG of noise, ~8 MB: more than the kernel's socket
    buffers hold) and read slowly: the first part, then the rest only once the test says so. Its request is not
    done while the proxy still holds most of its answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.answering, self.rest = url, threading.Event(), threading.Event()
        self.photo = png_bytes(np.random.default_rng(41).integers(0, 256, (1600, 1600, 3), dtype=np.uint8))
        self.status, self.declared, self.received = 0, -1, 0
        self.failure: Exception | None = None

    def run(self) -> None:
        small_window = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)]
        transport = httpx.HTTPTransport(socket_options=small_window)
        try:
            with (
                httpx.Client(transport=transport, timeout=120) as client,
                client.stream("POST", f"{self.url}/v1/remove", content=self.photo) as answer,
            ):
                self.status, self.declared = answer.status_code, int(answer.headers["content-length"])
                parts = answer.iter_raw(64 * 1024)
                self.received += len(next(parts))
                self.answering.set()
                self.rest.wait(120)
                for part in parts:
                    self.received += len(part)
        except Exception as exc:
            self.failure = exc
        finally:
            self.answering.set()
