import warnings
from pathlib import Path

import pytest
import transparent_background
import yaml
from PIL import Image

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.resize import DynamicResize, StaticResize

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from transparent_background.utils import dynamic_resize


def test_catalogue_matches_transparent_background_config() -> None:
    config = yaml.safe_load((Path(transparent_background.__file__).parent / "config.yaml").read_text())
    for tier, mode in ((Tier.FAST, "fast"), (Tier.BALANCED, "base"), (Tier.QUALITY, "base-nightly")):
        spec = CATALOGUE[tier]
        assert spec.checkpoint.filename == config[mode]["ckpt_name"]
        assert spec.checkpoint.url == config[mode]["url"]
        assert spec.checkpoint.md5 == config[mode]["md5"]
        assert [spec.base_size, spec.base_size] == config[mode]["base_size"]
    assert isinstance(CATALOGUE[Tier.QUALITY].resize, DynamicResize)
    assert set(CATALOGUE) == set(Tier)


@pytest.mark.parametrize(
    "size",
    [
        (1920, 1080),
        (1080, 1920),
        (4000, 3000),
        (3000, 4000),
        (1281, 1281),
        (1280, 720),
        (640, 480),
        (200, 150),
        (176, 144),
        (33, 47),
        (1300, 1290),
        (2561, 1400),
        (80, 80),
        (48, 48),
    ],
)
def test_dynamic_resize_equals_remover_inside_its_bounds(size: tuple[int, int]) -> None:
    expected = dynamic_resize(L=1280)(Image.new("RGB", size)).size
    assert DynamicResize().model_input_size(*size, base_size=1024) == expected


def test_dynamic_resize_guards() -> None:
    policy = DynamicResize()
    with pytest.raises(ValueError):  # Remover rounds the 12 px side to 0 and fails
        dynamic_resize(L=1280)(Image.new("RGB", (12, 200)))
    assert policy.model_input_size(12, 200, 1024) == (32, 192)
    width, height = policy.model_input_size(20000, 1300, 1024)  # a panorama: Remover would keep 19692 wide
    assert width == 2560 and height % 32 == 0 and height < 200


def test_static_resize_ignores_aspect() -> None:
    assert StaticResize().model_input_size(1920, 1080, 384) == (384, 384)
