"""A GPU config on a machine without a GPU must not hang silently: Ray would leave such replicas pending forever,
so the service says so in /v1/tiers and answers requests with a 503 that explains it."""

from __future__ import annotations

import time

import httpx
from ray import serve

from deployments.app import build_app
from serve_app.schemas import AppConfig
from tests.conftest import png_bytes
from tests.support import scenes


def test_gpu_tier_on_a_cluster_without_gpu_explains_itself(service: str) -> None:
    config = AppConfig.model_validate(
        {
            "default_tier": "fast",
            "ingress": {"num_cpus": 0.1},
            "tiers": {"fast": {"weights": "untrained", "num_gpus": 0.5, "num_cpus": 0.1}},
        }
    )
    serve.run_many(
        [serve.RunTarget(target=build_app(config), name="gpu-check", route_prefix="/gpu")],
        wait_for_applications_running=False,  # it never will be: that is the point
    )
    try:
        with httpx.Client(base_url=f"{service}/gpu", timeout=30) as client:
            deadline = time.monotonic() + 120
            while True:  # until the ingress (CPU) is up
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the ingress of the GPU app never came up"
                time.sleep(1)
            (tier,) = client.get("/v1/tiers").json()
            assert tier["ready"] is False and tier["device"] == "cuda"
            assert "no GPU" in tier["message"] and "configs/cpu.yaml" in tier["message"]
            assert client.get("/readyz").status_code == 503
            started = time.monotonic()
            image = png_bytes(scenes.make_scenes(1, 1, 64, 64)[0].image)
            response = client.post("/v1/remove", content=image, headers={"content-type": "image/png"})
            assert time.monotonic() - started < 10  # answered, not left waiting for a GPU
            assert response.status_code == 503 and response.headers["retry-after"]
            error = response.json()["error"]
            assert error["code"] == "tier_unavailable" and "no GPU" in error["message"]
    finally:
        serve.delete("gpu-check")
