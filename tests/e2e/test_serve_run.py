"""What an operator does: `serve run configs/test.yaml` from the command line, then curl-like requests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, png_bytes
from tests.integration.conftest import place_test_weights, wait_until_ready
from tests.support import scenes
from tests.support.reference import TEST_CONFIG


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[str]:
    weights_dir = place_test_weights(tmp_path_factory, segmenting_weights)
    log = tmp_path_factory.mktemp("serve-run") / "serve.log"
    env = {**os.environ, "BGSERVE_WEIGHTS_DIR": str(weights_dir)}
    serve_cli = Path(sys.executable).with_name("serve")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(serve_cli), "run", str(TEST_CONFIG)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    http = yaml.safe_load(TEST_CONFIG.read_text())["http_options"]
    url = f"http://{http['host']}:{http['port']}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            try:
                wait_until_ready(client)
            except TimeoutError:
                pytest.fail(f"`serve run` never became ready; its log:\n{log.read_text()[-5000:]}")
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does: serve run shuts Serve and its Ray down
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_serve_run_config_serves_every_tier(served: str) -> None:
    scene = scenes.make_scenes(seed=31, count=1, height=128, width=160)[0]
    with httpx.Client(base_url=served, timeout=60) as client:
        tiers = client.get("/v1/tiers").json()
        assert [t["tier"] for t in tiers] == ["fast", "balanced", "quality"] and all(t["ready"] for t in tiers)
        for tier in ("fast", "balanced", "quality"):
            response = client.post(
                "/v1/remove",
                params={"tier": tier, "effect": "mask"},
                content=png_bytes(scene.image),
                headers={"content-type": "image/png"},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-tier"] == tier and response.headers["x-weights"] == "test-segmenting.pth"
        default = client.post("/v1/remove", content=png_bytes(scene.image))
        assert default.headers["x-tier"] == "balanced" and default.headers["content-type"] == "image/png"
