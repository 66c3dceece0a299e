"""The real application on a local Ray: built from configs/test.yaml's args with the segmenting test weights,
started once per session with ``serve.run``, and reached over HTTP."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.reference import TEST_CONFIG, read_test_config_args

APP_NAME = "bgserve"
READY_TIMEOUT_S = 600


def place_test_weights(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Path:
    directory = tmp_path_factory.mktemp("weights")
    (directory / "test-segmenting.pth").symlink_to(segmenting_weights)
    return directory


def wait_until_ready(client: httpx.Client, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = client.get("/readyz")
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(1.0)
    raise TimeoutError(f"service not ready after {timeout_s}s: {last}")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[str]:
    import ray
    from ray import serve

    from deployments.app import build_app
    from serve_app.schemas import AppConfig

    weights_dir = place_test_weights(tmp_path_factory, segmenting_weights)
    os.environ["BGSERVE_WEIGHTS_DIR"] = str(weights_dir)
    http = yaml.safe_load(TEST_CONFIG.read_text())["http_options"]
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": http["host"], "port": http["port"]})
    serve.run(
        build_app(AppConfig.model_validate(read_test_config_args())), name=APP_NAME, route_prefix="/", blocking=False
    )
    url = f"http://{http['host']}:{http['port']}"
    with httpx.Client(base_url=url, timeout=120) as client:
        wait_until_ready(client)
    yield url
    serve.shutdown()
    ray.shutdown()
    os.environ.pop("BGSERVE_WEIGHTS_DIR", None)


@pytest.fixture
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=120) as c:
        yield c
