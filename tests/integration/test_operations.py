"""What operators rely on: live batching changes, and start-up failures that explain themselves, all through
`serve deploy`."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from ray.util.state import list_actors

from tests.conftest import png_bytes
from tests.integration.conftest import APP_NAME, read_test_config, serve_deploy, with_extra_app
from tests.support import scenes


def fast_replica_actors() -> set[str]:
    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=False)
    return {a.actor_id for a in actors if a.class_name == f"ServeReplica:{APP_NAME}:fast"}


def burst_batch_sizes(client: httpx.Client, count: int = 4) -> list[int]:
    uploads = [png_bytes(s.image) for s in scenes.make_scenes(seed=5150, count=count, height=96, width=96)]

    def send(data: bytes) -> int:
        response = client.post("/v1/remove", params={"tier": "fast", "effect": "mask"}, content=data)
        assert response.status_code == 200, response.text
        return int(response.headers["x-batch-size"])

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(send, uploads))


def until(condition, timeout_s: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1.0)
    return False


def test_batching_changes_live_without_reloading_the_model(client: httpx.Client, deploy_dir: Path) -> None:
    before = fast_replica_actors()
    assert len(before) == 1
    config = read_test_config()
    config["applications"][0]["deployments"] = [
        {"name": "fast", "user_config": {"max_batch_size": 1, "batch_wait_timeout_s": 0.5}}
    ]
    try:
        serve_deploy(config, deploy_dir)
        assert until(lambda: burst_batch_sizes(client) == [1, 1, 1, 1]), "max_batch_size=1 never took effect"
        assert fast_replica_actors() == before  # the same replica: reconfigured, not restarted
    finally:
        serve_deploy(read_test_config(), deploy_dir)  # back to the builder's batching (4)
    assert until(lambda: max(burst_batch_sizes(client)) > 1)
    assert fast_replica_actors() == before


def explanation(client: httpx.Client, needle: str, timeout_s: float = 240) -> dict:  # type: ignore[type-arg]
    """The tier's /v1/tiers entry once its message contains ``needle``."""
    found: dict = {}  # type: ignore[type-arg]

    def check() -> bool:
        try:
            response = client.get("/v1/tiers")
        except httpx.TransportError:
            return False
        if response.status_code == 200 and needle in response.json()[0]["message"]:
            found.update(response.json()[0])
            return True
        return False

    if not until(check, timeout_s):
        pytest.fail(f"/v1/tiers never explained {needle!r}")
    return found


def test_gpu_config_without_gpu_explains_itself(service: str, deploy_dir: Path) -> None:
    """Ray would leave GPU replicas pending forever on this machine: the service says so instead of hanging."""
    args = {
        "default_tier": "fast",
        "ingress": {"num_cpus": 0.1},
        "tiers": {"fast": {"weights": "untrained", "num_gpus": 0.5, "num_cpus": 0.1}},
    }
    serve_deploy(with_extra_app("gpu-check", "/gpu", args), deploy_dir)
    try:
        with httpx.Client(base_url=f"{service}/gpu", timeout=30) as client:
            tier = explanation(client, "no GPU")
            assert tier["ready"] is False and tier["device"] == "cuda"
            assert "configs/cpu.yaml" in tier["message"]
            assert client.get("/readyz").status_code == 503
            started = time.monotonic()
            image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
            response = client.post("/v1/remove", content=image, headers={"content-type": "image/png"})
            assert time.monotonic() - started < 10  # answered at once, not left waiting for a GPU
            assert response.status_code == 503 and response.headers["retry-after"]
            error = response.json()["error"]
            assert error["code"] == "tier_unavailable" and "no GPU" in error["message"]
    finally:
        serve_deploy(read_test_config(), deploy_dir)


def test_missing_weights_offline_explain_what_to_do(service: str, deploy_dir: Path, tmp_path: Path) -> None:
    args = {
        "weights_dir": str(tmp_path),
        "default_tier": "fast",
        "ingress": {"num_cpus": 0.1},
        "tiers": {"fast": {"weights": "auto", "allow_download": False, "num_cpus": 0.1}},
    }
    serve_deploy(with_extra_app("offline-check", "/offline", args), deploy_dir)
    try:
        with httpx.Client(base_url=f"{service}/offline", timeout=30) as client:
            tier = explanation(client, "downloads are turned off")
            assert tier["ready"] is False and str(tmp_path / "ckpt_fast.pth") in tier["message"]
            response = client.post("/v1/remove", content=png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image))
            assert response.status_code == 503
            assert "ckpt_fast.pth" in response.json()["error"]["message"]
    finally:
        serve_deploy(read_test_config(), deploy_dir)
