"""Uploads a public endpoint gets: images of every size down to one pixel, every pixel mode, and bytes that are
not quite an image. Drawn by hypothesis; the pipeline must answer each at the right size, or raise one of the
documented request errors (which the ingress turns into a 4xx) and nothing else."""

import io

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.codec import decode_image
from serve_app.errors import EmptyUploadError, InvalidImageError, PayloadTooLargeError
from serve_app.pipeline import postprocess, preprocess
from serve_app.schemas import Effect, OutputFormat, RemoveParams

MODES = ("RGB", "RGBA", "L", "LA", "P", "I;16", "CMYK", "1")
REQUEST_ERRORS = (EmptyUploadError, InvalidImageError, PayloadTooLargeError)  # 400, 400, 413
MAX_PIXELS = 10_000_000
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def encoded(array: np.ndarray, mode: str, fmt: str) -> bytes:
    image = Image.fromarray(array, "RGB")
    image = image.convert("I;16") if mode == "I;16" else image.convert(mode)
    if fmt == "JPEG" and mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@SETTINGS
@given(
    height=st.integers(1, 40) | st.sampled_from([1, 2]),
    width=st.integers(1, 40) | st.sampled_from([1, 2]),
    mode=st.sampled_from(MODES),
    effect=st.sampled_from(list(Effect)),
    fmt=st.sampled_from(list(OutputFormat)),
    threshold=st.none() | st.floats(0, 1),
    reverse=st.booleans(),
    tier=st.sampled_from(list(Tier)),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_size_and_mode_comes_back_at_its_size(
    height: int,
    width: int,
    mode: str,
    effect: Effect,
    fmt: OutputFormat,
    threshold: float | None,
    reverse: bool,
    tier: Tier,
    seed: int,
) -> None:
    """Down to 1x1, 1xN and Nx1, every mode, effect and format: the result has the upload's width and height.
    (The model is left out: a random mask at the model's input size stands in for its answer.)"""
    rng = np.random.default_rng(seed)
    container = "TIFF" if mode == "CMYK" else "PNG"  # PNG has no CMYK
    upload = encoded(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), mode, container)
    spec = CATALOGUE[tier]
    prepared = preprocess(upload, spec.resize, 64, MAX_PIXELS)
    assert prepared.image.shape == (height, width, 3) and prepared.model_input.dtype == np.uint8
    mask = rng.random(prepared.model_input.shape[:2]).astype(np.float32)
    params = RemoveParams(effect=effect, format=fmt, threshold=threshold, reverse=reverse)
    background_size = (int(rng.integers(1, 41)), int(rng.integers(1, 41)), 3)  # any size: it is resized to cover
    background = rng.integers(0, 256, background_size, dtype=np.uint8) if effect == Effect.BACKGROUND else None
    rendered = postprocess(prepared.image, mask, params, background)
    assert Image.open(io.BytesIO(rendered.body)).size == (width, height)


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A valid PNG, JPEG, WebP or GIF, then bytes overwritten, cut off or spliced in."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    data = bytearray(encoded(array, "RGB", draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF"]))))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["overwrite", "truncate", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if action == "overwrite" and data:
            data[at] = draw(st.integers(0, 255))
        elif action == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@SETTINGS
@given(data=damaged_images() | st.binary(max_size=256))
def test_damaged_or_random_bytes_raise_only_request_errors(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except REQUEST_ERRORS:
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 1
