"""The reference for "correct": transparent_background.Remover on the same weights, at the test sizes."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from serve_app.tiers import Tier

TEST_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test.yaml"
REMOVER_MODES = {
    Tier.FAST: ("fast", "static"),
    Tier.BALANCED: ("base", "static"),
    Tier.QUALITY: ("base-nightly", "dynamic"),
}


def read_test_config_args() -> dict:  # type: ignore[type-arg]
    """The builder args of configs/test.yaml, as the YAML has them."""
    return yaml.safe_load(TEST_CONFIG.read_text())["applications"][0]["args"]


# tier → (Remover mode, Remover resize, the base size configs/test.yaml gives the tier)
TEST_TIERS: dict[Tier, tuple[str, str, int]] = {
    tier: (*REMOVER_MODES[tier], int(read_test_config_args()["tiers"][tier.value]["base_size"])) for tier in Tier
}


@contextmanager
def remover_home(directory: Path) -> Iterator[None]:
    """Remover reads its modes from $TRANSPARENT_BACKGROUND_FILE_PATH/.transparent-background/config.yaml:
    point it at one with the test sizes for as long as the context lasts."""
    import transparent_background

    config = yaml.safe_load((Path(transparent_background.__file__).parent / "config.yaml").read_text())
    for mode, _, size in TEST_TIERS.values():
        config[mode]["base_size"] = [size, size]
    (directory / ".transparent-background").mkdir(parents=True, exist_ok=True)
    (directory / ".transparent-background" / "config.yaml").write_text(yaml.safe_dump(config))
    old = os.environ.get("TRANSPARENT_BACKGROUND_FILE_PATH")
    os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"]
        else:
            os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = old


def make_remover(tier: Tier, weights: Path):  # type: ignore[no-untyped-def]
    """A Remover for the tier (call inside ``remover_home``)."""
    mode, resize, _ = TEST_TIERS[tier]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transparent_background import Remover

        return Remover(mode=mode, ckpt=str(weights), resize=resize, device="cpu")


def reference_mask(remover, image: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Remover's ``map`` for an upright RGB array, as one HxW uint8 channel."""
    return np.asarray(remover.process(Image.fromarray(image), type="map"))[..., 0]
