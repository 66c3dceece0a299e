"""The reference for "correct": transparent_background.Remover on the same weights, built in one place for the
tests and the benchmarks (at the catalogue's sizes, or at the small sizes of configs/test.yaml)."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.resize import DynamicResize

TEST_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test.yaml"
REMOVER_MODES = {Tier.FAST: "fast", Tier.BALANCED: "base", Tier.QUALITY: "base-nightly"}  # tier → Remover mode


def read_test_config_args() -> dict[str, Any]:
    """The builder args of configs/test.yaml, as the YAML has them."""
    return yaml.safe_load(TEST_CONFIG.read_text())["applications"][0]["args"]


def base_size_in_test_config(tier: Tier) -> int:
    """The model size configs/test.yaml gives the tier."""
    return int(read_test_config_args()["tiers"][tier.value]["base_size"])


def upload_stall_s_in_test_config() -> float:
    """How long configs/test.yaml lets an upload pause before its 408 (the slow-upload tests wait this long)."""
    return float(read_test_config_args()["upload_stall_s"])


@contextmanager
def reference_remover(tier: Tier, weights: Path, base_size: int | None = None, device: str = "cpu") -> Iterator[Any]:
    """A ``Remover`` for the tier on ``weights``, at the catalogue's size or at ``base_size``.

    Remover reads its modes from ``$TRANSPARENT_BACKGROUND_FILE_PATH/.transparent-background/config.yaml`` when it
    is built: the variable points at a private copy (with the size changed, if asked) while it is built and is
    restored afterwards."""
    import transparent_background

    mode = REMOVER_MODES[tier]
    resize = "dynamic" if isinstance(CATALOGUE[tier].resize, DynamicResize) else "static"
    config = yaml.safe_load((Path(transparent_background.__file__).parent / "config.yaml").read_text())
    if base_size is not None:
        config[mode]["base_size"] = [base_size, base_size]
    with tempfile.TemporaryDirectory() as home:
        (Path(home) / ".transparent-background").mkdir()
        (Path(home) / ".transparent-background" / "config.yaml").write_text(yaml.safe_dump(config))
        old = os.environ.get("TRANSPARENT_BACKGROUND_FILE_PATH")
        os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = home
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from transparent_background import Remover

                remover = Remover(mode=mode, ckpt=str(weights), resize=resize, device=device)
        finally:
            if old is None:
                del os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"]
            else:
                os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = old
        yield remover


def reference_mask(remover: Any, image: np.ndarray) -> np.ndarray:
    """Remover's ``map`` for an upright RGB array, as one HxW uint8 channel."""
    return np.asarray(remover.process(Image.fromarray(image), type="map"))[..., 0]
