"""What an operator does: `serve run configs/test.yaml` from the command line, then curl-like requests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import png_bytes
from tests.integration.conftest import place_test_weights
from tests.support import scenes
from tests.support.reference import TEST_CONFIG
from tests.support.serve_run import serve_run


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, segmenting_weights: Path) -> Iterator[str]:
    weights_dir = place_test_weights(tmp_path_factory, segmenting_weights)
    with serve_run(TEST_CONFIG, weights_dir, tmp_path_factory.mktemp("serve-run") / "serve.log") as served:
        yield served.url


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
