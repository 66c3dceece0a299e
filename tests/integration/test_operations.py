"""What operators rely on: live batching changes, and start-up failures that explain themselves."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from ray import serve
from ray.util.state import list_actors

from deployments.app import build_app
from serve_app.schemas import AppConfig
from tests.conftest import png_bytes
from tests.integration.conftest import APP_NAME
from tests.support import scenes
from tests.support.reference import read_test_config_args


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


def deploy_test_app(fast_batching: dict[str, float]) -> None:
    args = read_test_config_args()
    args["tiers"]["fast"]["batching"] = fast_batching
    serve.run(build_app(AppConfig.model_validate(args)), name=APP_NAME, route_prefix="/")


def test_batching_changes_live_without_reloading_the_model(client: httpx.Client) -> None:
    original = dict(read_test_config_args()["tiers"]["fast"]["batching"])
    before = fast_replica_actors()
    assert len(before) == 1
    try:
        deploy_test_app({"max_batch_size": 1, "batch_wait_timeout_s": 0.5})
        assert burst_batch_sizes(client) == [1, 1, 1, 1]
        assert fast_replica_actors() == before  # the same replica: reconfigured, not restarted
    finally:
        deploy_test_app(original)
    assert max(burst_batch_sizes(client)) > 1
    assert fast_replica_actors() == before


def test_missing_weights_offline_explain_what_to_do(service: str, tmp_path: Path) -> None:
    config = AppConfig.model_validate(
        {
            "weights_dir": str(tmp_path),
            "default_tier": "fast",
            "ingress": {"num_cpus": 0.1},
            "tiers": {"fast": {"weights": "auto", "allow_download": False, "num_cpus": 0.1}},
        }
    )
    serve.run_many(
        [serve.RunTarget(target=build_app(config), name="offline-check", route_prefix="/offline")],
        wait_for_applications_running=False,
    )
    try:
        with httpx.Client(base_url=f"{service}/offline", timeout=30) as client:
            deadline = time.monotonic() + 240
            while True:
                try:
                    tiers = client.get("/v1/tiers")
                    if tiers.status_code == 200 and "ckpt_fast.pth" in tiers.json()[0]["message"]:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no explanation in /v1/tiers: {tiers.text if 'tiers' in dir() else 'no answer'}")
                time.sleep(2)
            (tier,) = tiers.json()
            assert tier["ready"] is False
            assert "downloads are turned off" in tier["message"] and str(tmp_path / "ckpt_fast.pth") in tier["message"]
            response = client.post("/v1/remove", content=png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image))
            assert response.status_code == 503
            assert "ckpt_fast.pth" in response.json()["error"]["message"]
    finally:
        serve.delete("offline-check")
