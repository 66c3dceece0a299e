"""Stopping the service as an operator does: Ctrl-C in scripts/serve.sh's terminal, or `docker stop`'s SIGTERM to
the image's runner (deployments/run.py). `serve run` alone lost every request in flight: Serve kills its proxies
first. The runner drains: requests taken are answered (slow uploads, and a slow client's large answer to its last
byte), new ones get a retriable 503, then Serve shuts down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import png_bytes
from tests.integration.conftest import place_test_weights
from tests.support import scenes
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import serve_run, until

PHOTO = png_bytes(scenes.make_scenes(seed=40, count=1, height=96, width=128)[0].image)
FIRST_PART = 200  # bytes sent before the stop; the rest only once the test says so


class SlowUpload(threading.Thread):
    """A POST /v1/remove whose upload sends FIRST_PART bytes, then waits for ``rest`` before the others: a request
    in flight at the proxy for as long as the test wants."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.rest = url, threading.Event()
        self.answer: httpx.Response | None = None
        self.failure: Exception | None = None

    def body(self) -> Iterator[bytes]:
        yield PHOTO[:FIRST_PART]
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


def fast_tier_config(directory: Path) -> Path:
    """The test config with the fast tier only (a quicker start) and room for uploads that wait on the test."""
    config: dict[str, Any] = yaml.safe_load(TEST_CONFIG.read_text())
    args = config["applications"][0]["args"]
    args["tiers"] = {"fast": args["tiers"]["fast"]}
    args.update(default_tier="fast", upload_stall_s=60)
    path = directory / "fast-only.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_a_stop_answers_the_requests_in_flight_and_refuses_new_ones(
    tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path
) -> None:
    weights_dir = place_test_weights(tmp_path_factory, segmenting_weights)
    scratch = tmp_path_factory.mktemp("stop")
    log = scratch / "serve.log"
    with serve_run(fast_tier_config(scratch), weights_dir, log) as served:
        first, second, reader = SlowUpload(served.url), SlowUpload(served.url), SlowReader(served.url)
        for client in (first, second, reader):
            client.start()
        assert reader.answering.wait(60) and reader.status == 200, reader.failure
        assert reader.declared > 6 * 1024 * 1024  # over the 4 MB the kernel's send buffer grows to (tcp_wmem)
        time.sleep(1)  # the uploads have begun too: three requests in flight at the proxy
        os.kill(served.pid, signal.SIGTERM)  # docker stop

        refused: list[httpx.Response] = []

        def refuses_new_requests() -> bool:
            answer = httpx.post(f"{served.url}/v1/remove", content=PHOTO, timeout=30)
            refused.append(answer)
            return answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"

        assert until(refuses_new_requests, timeout_s=20), [(r.status_code, r.text) for r in refused]
        assert refused[-1].headers["retry-after"] == "5" and refused[-1].headers["connection"] == "close"
        assert httpx.get(f"{served.url}/readyz", timeout=30).status_code == 503  # load balancers stop sending

        first.rest.set()
        first.join(60)
        assert first.answer is not None, first.failure
        assert first.answer.status_code == 200 and first.answer.headers["content-type"] == "image/png"
        time.sleep(2)
        assert served.process.poll() is None, "the service stopped with a request still in flight"

        second.rest.set()
        second.join(60)
        assert second.answer is not None and second.answer.status_code == 200, second.failure
        # Its answer made, the proxy still holds most of the large one: the drain waits for the slow reader.
        time.sleep(2)
        assert served.process.poll() is None, "the service stopped while a client was still reading its answer"
        reader.rest.set()
        reader.join(60)
        assert reader.received == reader.declared, (reader.received, reader.declared, reader.failure)
        try:
            code = served.process.wait(timeout=60)  # it stops by itself once nothing is in flight
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not stop after its drain; its log:\n{log.read_text()[-3000:]}")
        assert code == 0
    said = log.read_text()
    assert "Stopping: new requests get 503" in said and "Drained in" in said, said[-3000:]
