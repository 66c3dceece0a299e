"""The real application on a local Ray, deployed the way an operator does it: `serve deploy configs/test.yaml`
(Serve's REST API through the dashboard) against a Ray started here, with the segmenting test weights.
Requests go over HTTP; handles are used only to reach a tier deployment directly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import wait_until_ready

APP_NAME = "bgserve"
DASHBOARD = "http://127.0.0.1:8265"


def place_test_weights(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Path:
    directory = tmp_path_factory.mktemp("weights")
    (directory / "test-segmenting.pth").symlink_to(segmenting_weights)
    return directory


def read_test_config() -> dict[str, Any]:
    return yaml.safe_load(TEST_CONFIG.read_text())


def serve_deploy(config: dict[str, Any], directory: Path) -> None:
    """`serve deploy` a config (what an operator runs against a cluster); Ray 2.60's CLI needs the token mode."""
    path = directory / f"deploy-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    serve_cli = Path(sys.executable).with_name("serve")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    done = subprocess.run(
        [str(serve_cli), "deploy", str(path), "-a", DASHBOARD], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"serve deploy failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="session")
def deploy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deploy")


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path, deploy_dir: Path) -> Iterator[str]:
    import ray
    from ray import serve

    # The app is built in a task on the cluster: it sees the environment Ray was started with.
    os.environ["BGSERVE_WEIGHTS_DIR"] = str(place_test_weights(tmp_path_factory, segmenting_weights))
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=8265, log_to_driver=False)
    config = read_test_config()
    serve_deploy(config, deploy_dir)
    http = config["http_options"]
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


def with_extra_app(name: str, route_prefix: str, args: dict[str, Any]) -> dict[str, Any]:
    """configs/test.yaml plus one more application of ours (the test app itself stays as it is)."""
    config = read_test_config()
    config["applications"].append(
        {"name": name, "route_prefix": route_prefix, "import_path": "deployments.app:build_app", "args": args}
    )
    return config
