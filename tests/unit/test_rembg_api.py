"""rembg's options onto ours (serve_app/rembg_api.py); tests/integration/test_service.py sends them over HTTP."""

import pytest
from pydantic import ValidationError

from serve_app.catalogue import Tier
from serve_app.rembg_api import MODEL_TIERS, RembgParams
from serve_app.schemas import Effect, OutputFormat, Refine


def test_defaults_are_an_rgba_png_on_the_default_tier() -> None:
    params = RembgParams().to_remove_params()
    assert params.tier is None and params.effect == Effect.RGBA and params.format == OutputFormat.PNG
    assert params.refine == Refine.FAST and params.threshold is None


def test_options_map_onto_ours() -> None:
    assert RembgParams(om="true").to_remove_params().effect == Effect.MASK
    assert RembgParams(ppm="1").to_remove_params().threshold == 0.5
    assert RembgParams(a="true").to_remove_params().refine == Refine.FULL
    coloured = RembgParams(bgc="0,255,0,255").to_remove_params()
    assert coloured.effect == Effect.COLOR and coloured.rgba == (0, 255, 0, 255)
    assert RembgParams(bgc="0,0,255,128").to_remove_params().rgba == (0, 0, 255, 128)  # translucent, as rembg
    assert RembgParams(om="true", bgc="0,255,0,255").to_remove_params().effect == Effect.MASK  # om wins, as in rembg
    assert RembgParams(extras='{"sam_prompt": []}').extras is not None


@pytest.mark.parametrize(
    ("model", "tier"), [("u2netp", Tier.FAST), ("u2net", Tier.BALANCED), ("birefnet-general", Tier.QUALITY)]
)
def test_models_map_onto_tiers(model: str, tier: Tier) -> None:
    assert RembgParams(model=model).to_remove_params().tier == tier


def test_every_model_has_a_tier() -> None:
    assert set(MODEL_TIERS.values()) == set(Tier)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"model": "no-such-model"}, "unknown rembg model"),
        ({"bgc": "0,255,0"}, "R,G,B,A"),
        ({"bgc": "0,255,0,256"}, "R,G,B,A"),
        ({"extras": "{not json"}, "JSON"),
        ({"extras": "[" * 100_000}, "JSON"),  # deeper than json's parser goes: RecursionError, once a 500
        ({"af": "300"}, "less than or equal"),
    ],
)
def test_bad_options_are_refused_with_why(options: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        RembgParams(**options)


def test_names_rembg_does_not_know_are_ignored_as_rembgs_server_ignores_them() -> None:
    """A cache-busting query parameter or a client's own form field got a 422 here, and 200 from rembg."""
    assert RembgParams.model_validate({"om": "true", "_": "1732700000", "filename": "a.png"}) == RembgParams(om=True)
