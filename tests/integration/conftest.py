"""The real application on a local Ray, deployed the way an operator does it: `serve deploy configs/test.yaml`
(Serve's REST API through the dashboard) against a Ray started here, with the segmenting test weights.
Requests go over HTTP; handles are used only to reach a tier deployment directly.

The tests keep to themselves: a Ray of their own (never one already running on the machine), its dashboard and
Serve's HTTP port on free ports, so they pass beside another `serve run`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import free_port, wait_until_ready

APP_NAME = "bgserve"


def place_test_weights(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Path:
    """A weights directory with the test checkpoint, and OpenVINO's converted models (configs/test.yaml's fast tier
    runs openvino) kept beside the cached checkpoint: each service the tests start converts only once per machine."""
    from serve_app.runtimes.openvino import CONVERTED_DIR

    directory = tmp_path_factory.mktemp("weights")
    (directory / "test-segmenting.pth").symlink_to(segmenting_weights)
    converted = segmenting_weights.parent / CONVERTED_DIR
    converted.mkdir(exist_ok=True)
    (directory / CONVERTED_DIR).symlink_to(converted)
    return directory


@dataclass(frozen=True)
class Cluster:
    """This test session's Ray: where its dashboard and Serve's HTTP proxy listen, and how to deploy to it."""

    dashboard: str
    http_port: int
    deploy_dir: Path
    metrics_port: int  # Ray's Prometheus endpoint (every metric of the cluster, ours included)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def test_config(self) -> dict[str, Any]:
        """configs/test.yaml, on this session's HTTP port."""
        config = yaml.safe_load(TEST_CONFIG.read_text())
        config["http_options"]["port"] = self.http_port
        return config

    def with_extra_app(self, name: str, route_prefix: str, args: dict[str, Any]) -> dict[str, Any]:
        """The test config plus one more application of ours (the test app itself stays as it is)."""
        config = self.test_config()
        config["applications"].append(
            {"name": name, "route_prefix": route_prefix, "import_path": "deployments.app:build_app", "args": args}
        )
        return config

    def deploy(self, config: dict[str, Any]) -> None:
        """`serve deploy` a config (what an operator runs against a cluster); Ray 2.60's CLI needs the token mode."""
        path = self.deploy_dir / f"deploy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        serve_cli = Path(sys.executable).with_name("serve")
        env = {**os.environ, "RAY_AUTH_MODE": "token"}
        done = subprocess.run(
            [str(serve_cli), "deploy", str(path), "-a", self.dashboard],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"serve deploy failed:\n{done.stdout}\n{done.stderr}"


def fast_tier_app(cpus: float = 0.1, **fast: Any) -> dict[str, Any]:
    """The ``args`` of a small extra application: the fast tier alone, on untrained weights (``fast``'s settings go
    over these), its ingress and its tier replica asking for ``cpus`` each."""
    return {
        "default_tier": "fast",
        "ingress": {"deployment": {"ray_actor_options": {"num_cpus": cpus}}},
        "tiers": {"fast": {"weights": "untrained", "deployment": {"ray_actor_options": {"num_cpus": cpus}}, **fast}},
    }


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[Cluster]:
    import ray
    from ray import serve

    # The app is built in a task on the cluster: it sees the environment Ray was started with.
    os.environ["BGSERVE_WEIGHTS_DIR"] = str(place_test_weights(tmp_path_factory, segmenting_weights))
    os.environ.pop("RAY_ADDRESS", None)  # it would win over address="local"
    os.environ[PROXY_CALLBACK_VARIABLE] = PROXY_CALLBACK  # Serve's proxy loads our guard, as scripts/serve.sh has it
    dashboard_port, metrics_port = free_port(), free_port()
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 (Ray spells it so); metrics arrive in ~1 s
    ray.init(
        address="local",  # a Ray of our own: without it, ray.init joins any Ray already running on the machine
        num_cpus=4,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    yield Cluster(f"http://127.0.0.1:{dashboard_port}", free_port(), tmp_path_factory.mktemp("deploy"), metrics_port)
    serve.shutdown()
    ray.shutdown()
    os.environ.pop("BGSERVE_WEIGHTS_DIR", None)
    os.environ.pop(PROXY_CALLBACK_VARIABLE, None)
    os.environ.pop("RAY_metrics_report_interval_ms", None)


@pytest.fixture(scope="session")
def service(cluster: Cluster) -> str:
    cluster.deploy(cluster.test_config())
    with httpx.Client(base_url=cluster.url, timeout=120) as client:
        wait_until_ready(client)
    return cluster.url


@pytest.fixture
def client(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, timeout=120) as c:
        yield c
