"""Parity with Remover at the catalogue's own sizes (384, 1024, dynamic), not the test sizes (opt in: -m slow;
a few minutes on 2 cores). The segmenting weights were trained at 128 px, so the masks are rough here, but both
sides run the same weights and must agree."""

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.pipeline import prepare, render
from serve_app.runtimes import RuntimeSettings, create_runtime
from serve_app.schemas import RemoveParams
from serve_app.tiers import CATALOGUE, Tier
from serve_app.weights import ResolvedWeights
from tests.conftest import png_bytes, skimage_photo
from tests.support.reference import REMOVER_MODES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tier", list(Tier), ids=lambda t: t.value)
def test_mask_matches_remover_at_catalogue_sizes(
    tier: Tier, segmenting_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRANSPARENT_BACKGROUND_FILE_PATH", str(tmp_path))  # its stock config.yaml
    mode, resize = REMOVER_MODES[tier]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transparent_background import Remover

        remover = Remover(mode=mode, ckpt=str(segmenting_weights), resize=resize, device="cpu")
    photo = skimage_photo("rocket")  # 427x640
    reference = np.asarray(remover.process(Image.fromarray(photo), type="map"))[..., 0].astype(int)
    spec = CATALOGUE[tier]
    runtime = create_runtime("eager", RuntimeSettings(ResolvedWeights(segmenting_weights, "s"), spec.base_size, "cpu"))
    runtime.load()
    prepared = prepare(png_bytes(photo), spec.resize, spec.base_size, max_pixels=10**8)
    mask = runtime.predict(prepared.model_input[None])[0]
    ours = np.asarray(Image.open(io.BytesIO(render(prepared.image, mask, RemoveParams(effect="mask")).body)))
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference).mean() <= 1.0
    assert np.abs(ours.astype(int) - reference).max() <= 1
