from pathlib import Path

import pytest
from pydantic import ValidationError

from serve_app.catalogue import Tier
from serve_app.schemas import (
    CONTROL_HEADROOM,
    MAX_DEFAULT_SHUTDOWN_S,
    SHUTDOWN_MARGIN_S,
    TIER_DEPLOYMENT_DEFAULTS,
    UPLOAD_HEADROOM,
    AppConfig,
    IngressConfig,
    RemoveParams,
    ServedTier,
    TierConfig,
    parse_color,
)
from serve_app.weights import ResolvedWeights


@pytest.mark.parametrize(
    ("text", "rgb"),
    [
        ("#00ff00", (0, 255, 0)),
        ("00ff00", (0, 255, 0)),
        ("#0f0", (0, 255, 0)),
        ("0,128,255", (0, 128, 255)),
        (" 10, 20 ,30 ", (10, 20, 30)),
        ("white", (255, 255, 255)),
        ("#FFA500", (255, 165, 0)),
        ("0,128,255,64", (0, 128, 255, 64)),
        ("#00ff0080", (0, 255, 0, 128)),
        ("0f08", (0, 255, 0, 136)),
    ],
)
def test_colours_parse(text: str, rgb: tuple[int, ...]) -> None:
    assert parse_color(text) == (rgb if len(rgb) == 4 else (*rgb, 255))  # opaque unless an alpha is given


@pytest.mark.parametrize(
    "text", ["", "#12345", "256,0,0", "1,2", "1,2,3,4,5", "1,2,3,256", "-1,2,3", "notacolour", "#gggggg"]
)
def test_bad_colours_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="color"):
        parse_color(text)
    with pytest.raises(ValidationError):
        RemoveParams(color=text)


def test_request_defaults_and_bounds() -> None:
    params = RemoveParams()
    assert params.tier is None and params.effect.value == "rgba" and params.format.value == "png"
    assert params.threshold is None and params.reverse is False and params.rgba == (255, 255, 255, 255)
    for bad in ({"threshold": 1.5}, {"threshold": -0.1}, {"tier": "ultra"}, {"effect": "sepia"}, {"x": 1}):
        with pytest.raises(ValidationError):
            RemoveParams.model_validate(bad)
    for field in ("blur_sigma", "threshold"):  # nan was refused as "less than or equal to 100": a puzzle
        for value in ("nan", "inf", "-inf"):
            with pytest.raises(ValidationError, match="finite number"):
                RemoveParams.model_validate({field: value})


def gpus(share: float) -> dict:  # type: ignore[type-arg]
    return {"ray_actor_options": {"num_gpus": share}}


def test_gpu_share_selects_cuda() -> None:
    assert TierConfig().resolved_device == "cpu"
    assert TierConfig(deployment=gpus(0.3)).resolved_device == "cuda"
    assert TierConfig(device="cuda", deployment=gpus(0.5)).resolved_device == "cuda"
    assert TierConfig(deployment=gpus(0.3), device="cpu").resolved_device == "cpu"
    with pytest.raises(ValidationError, match="needs a GPU share"):
        TierConfig(device="cuda")


def test_deployment_options_merge_over_the_defaults() -> None:
    """Serve's options pass through; ray_actor_options merges key by key instead of replacing the defaults."""
    config = TierConfig(deployment={"health_check_period_s": 3, "ray_actor_options": {"num_gpus": 0.5}})
    assert config.deployment_options() == {
        **TIER_DEPLOYMENT_DEFAULTS,
        "health_check_period_s": 3,
        "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0.5},
        "graceful_shutdown_timeout_s": 60.0 + SHUTDOWN_MARGIN_S,  # its deadline's worth
    }
    assert TIER_DEPLOYMENT_DEFAULTS["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0}  # not mutated
    autoscaled = TierConfig(deployment={"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}})
    assert "num_replicas" not in autoscaled.deployment_options()  # Serve refuses both
    assert TierConfig().num_cpus == 0.25 and IngressConfig().num_cpus == 1.0


def test_ingress_cpu_pool_follows_its_cpu_share() -> None:
    assert IngressConfig().cpu_workers == 1
    assert IngressConfig(deployment={"ray_actor_options": {"num_cpus": 2}}).cpu_workers == 2
    assert IngressConfig(deployment={"ray_actor_options": {"num_cpus": 0.5}}).cpu_workers == 1
    assert IngressConfig(deployment={"ray_actor_options": {"num_cpus": 2.5}}).cpu_workers == 3


@pytest.mark.parametrize("key", ["num_cpus", "num_gpus", "num_replicas", "max_ongoing_requests", "max_queued_requests"])
def test_serve_options_outside_deployment_say_where_they_go(key: str) -> None:
    with pytest.raises(ValidationError, match=f"{key} \\(now deployment:"):
        TierConfig.model_validate({key: 1})


def test_builder_owned_deployment_options_are_refused() -> None:
    for key in ("name", "user_config"):
        with pytest.raises(ValidationError, match="set by the builder"):
            TierConfig(deployment={key: "x"})


def test_base_size_must_suit_the_backbone() -> None:
    assert TierConfig(base_size=128).base_size == 128
    for bad in (100, 16):
        with pytest.raises(ValidationError):
            TierConfig(base_size=bad)


def test_max_image_pixels_stops_at_pillows_own_limit() -> None:
    """Above it Pillow refuses to decode (its decompression-bomb guard): a higher setting would promise sizes that
    get 413 anyway."""
    assert AppConfig(max_image_pixels=89_478_485).max_image_pixels == 89_478_485
    with pytest.raises(ValidationError, match="max_image_pixels"):
        AppConfig(max_image_pixels=100_000_000)


def test_app_config_tiers() -> None:
    assert set(AppConfig().tiers) == set(Tier)
    only_fast = AppConfig.model_validate({"tiers": {"fast": {}}, "default_tier": "fast"})
    assert set(only_fast.tiers) == {Tier.FAST}
    with pytest.raises(ValidationError, match="default_tier"):
        AppConfig.model_validate({"tiers": {"fast": {}}})
    with pytest.raises(ValidationError):
        AppConfig.model_validate({"tiers": {"fast": {"wieghts": "x"}}})  # typos are errors, not ignored


def test_served_tier_names_its_weights_and_sizes(tmp_path: Path) -> None:
    """X-Weights and /v1/tiers come from here, the one source of the label."""

    def served(tier: Tier, **config: object) -> ServedTier:
        return ServedTier(tier=tier, config=TierConfig.model_validate(config), weights_dir=tmp_path)

    assert served(Tier.FAST).weights_label == "ckpt_fast.pth"
    assert served(Tier.FAST, weights="untrained").weights_label == "untrained"
    assert served(Tier.BALANCED, weights="/models/mine.pth").weights_label == "mine.pth"
    assert served(Tier.FAST, base_size=128).input_size == "128x128"
    assert served(Tier.QUALITY).input_size.startswith("dynamic")
    settings = served(Tier.FAST, weights="untrained", base_size=128).runtime_settings(
        ResolvedWeights(None, "untrained")
    )
    assert settings.base_size == 128 and settings.static_size and settings.export_dir == tmp_path / "onnx"
    assert settings.device == "cpu" and "--base-size 128" in (settings.export_command or "")
    assert not served(Tier.QUALITY).runtime_settings(ResolvedWeights(None, "untrained")).static_size


def test_admission_is_sized_from_the_tiers_outwards() -> None:
    """Each tier holds replicas x max_ongoing_requests + max_queued_requests; the ingress admits all of that plus
    the upload headroom, and keeps CONTROL_HEADROOM slots for the light routes."""
    config = AppConfig.model_validate(
        {
            "tiers": {
                "fast": {"deployment": {"num_replicas": 2, "max_ongoing_requests": 8, "max_queued_requests": 8}},
                "balanced": {
                    "deployment": {
                        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
                        "max_ongoing_requests": 4,
                        "max_queued_requests": 2,
                    }
                },
            }
        }
    )
    assert config.tiers[Tier.FAST].capacity == 2 * 8 + 8
    assert config.tiers[Tier.BALANCED].capacity == 3 * 4 + 2
    assert config.image_request_limit() == 24 + 14 + UPLOAD_HEADROOM
    assert config.ingress_deployment_options()["max_ongoing_requests"] == 24 + 14 + UPLOAD_HEADROOM + CONTROL_HEADROOM


def test_a_stopping_replica_may_finish_what_it_holds_up_to_the_longest_deadline() -> None:
    """Serve's default graceful shutdown, 20 s, cut off a 60 s request that an update's old replica had accepted
    (a retriable 503, but work lost)."""
    config = AppConfig.model_validate(
        {"default_tier": "fast", "tiers": {"fast": {"deadline_s": 30}, "quality": {"deadline_s": 100}}}
    )
    assert config.ingress_deployment_options()["graceful_shutdown_timeout_s"] == 100 + SHUTDOWN_MARGIN_S
    assert config.tiers[Tier.FAST].deployment_options()["graceful_shutdown_timeout_s"] == 30 + SHUTDOWN_MARGIN_S
    # Capped: on configs/cpu.yaml's 2 cores an update's new ingress waits for the old one's CPU, so a 590 s drain
    # (quality's 580 s deadline) would be a 590 s outage.
    slow = AppConfig.model_validate({"default_tier": "quality", "tiers": {"quality": {"deadline_s": 580}}})
    assert slow.ingress_deployment_options()["graceful_shutdown_timeout_s"] == MAX_DEFAULT_SHUTDOWN_S == 120
    own = AppConfig.model_validate(
        {
            "default_tier": "fast",
            "ingress": {"deployment": {"graceful_shutdown_timeout_s": 5}},
            "tiers": {"fast": {"deployment": {"graceful_shutdown_timeout_s": 7}}},
        }
    )
    assert own.ingress_deployment_options()["graceful_shutdown_timeout_s"] == 5  # a set one wins
    assert own.tiers[Tier.FAST].deployment_options()["graceful_shutdown_timeout_s"] == 7


def test_explicit_admission_limits_win() -> None:
    config = AppConfig.model_validate(
        {"ingress": {"max_image_requests": 10, "deployment": {"max_ongoing_requests": 50}}}
    )
    assert config.image_request_limit() == 10
    assert config.ingress_deployment_options()["max_ongoing_requests"] == 50


def test_an_ingress_cap_that_leaves_no_room_for_health_checks_is_refused() -> None:
    with pytest.raises(ValidationError, match="starve /healthz"):
        AppConfig.model_validate({"ingress": {"max_image_requests": 10, "deployment": {"max_ongoing_requests": 10}}})


def test_an_unbounded_tier_queue_counts_its_replicas_only() -> None:
    tier = TierConfig(deployment={"max_queued_requests": -1, "max_ongoing_requests": 8})
    assert tier.capacity is None
    config = AppConfig(tiers={Tier.FAST: tier}, default_tier=Tier.FAST)
    assert config.image_request_limit() == 8 + UPLOAD_HEADROOM
