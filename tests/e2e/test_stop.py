"""Stopping the service as an operator does: Ctrl-C in scripts/serve.sh's terminal, or `docker stop`'s SIGTERM to
the image's runner (deployments/run.py). `serve run` alone lost every request in flight: Serve kills its proxies
first. The runner drains: requests taken are answered, new ones get a retriable 503, then Serve shuts down."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
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
        first, second = SlowUpload(served.url), SlowUpload(served.url)
        first.start()
        second.start()
        time.sleep(2)  # both uploads have begun: their requests are in flight at the proxy
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
        try:
            code = served.process.wait(timeout=60)  # it stops by itself once nothing is in flight
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not stop after its drain; its log:\n{log.read_text()[-3000:]}")
        assert code == 0
    said = log.read_text()
    assert "Stopping: new requests get 503" in said and "Drained in" in said, said[-3000:]
