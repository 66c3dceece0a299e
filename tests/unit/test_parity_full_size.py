"""Parity with Remover at the catalogue's own sizes (384, 1024, dynamic), not the test sizes (opt in: -m slow;
a few minutes on 2 cores). The segmenting weights were trained at 128 px, so the masks are rough here, but both
sides run the same weights and must agree."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.pipeline import postprocess, preprocess
from serve_app.runtimes import RuntimeSettings, create_runtime
from serve_app.schemas import RemoveParams
from serve_app.weights import ResolvedWeights
from tests.conftest import png_bytes, skimage_photo
from tests.support.reference import reference_mask, reference_remover

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tier", list(Tier), ids=lambda t: t.value)
def test_mask_matches_remover_at_catalogue_sizes(tier: Tier, segmenting_weights: Path) -> None:
    photo = skimage_photo("rocket")  # 427x640
    with reference_remover(tier, segmenting_weights) as remover:
        reference = reference_mask(remover, photo).astype(int)
    spec = CATALOGUE[tier]
    runtime = create_runtime("eager", RuntimeSettings(ResolvedWeights(segmenting_weights, "s"), spec.base_size, "cpu"))
    runtime.load()
    prepared = preprocess(png_bytes(photo), spec.resize, spec.base_size, max_pixels=10**8)
    mask = runtime.predict(prepared.model_input[None])[0]
    ours = np.asarray(Image.open(io.BytesIO(postprocess(prepared.image, mask, RemoveParams(effect="mask")).body)))
    assert ours.shape == reference.shape
    assert np.abs(ours.astype(int) - reference).mean() <= 1.0
    assert np.abs(ours.astype(int) - reference).max() <= 1
