"""Stopping the service as an operator does: Ctrl-C in scripts/serve.sh's terminal, or `docker stop`'s SIGTERM to
the image's runner (deployments/run.py). `serve run` alone lost every request in flight: Serve kills its proxies
first. The runner drains: requests taken are answered (slow uploads, and a slow client's large answer to its last
byte), new ones get a retriable 503, then Serve shuts down."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import place_test_weights
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import serve_run, until
from tests.support.slow_clients import PHOTO, SlowReader, SlowUpload


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
        assert first.begun.wait(30) and second.begun.wait(30)
        time.sleep(0.5)  # their heads are at the proxy: three requests in flight there
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
