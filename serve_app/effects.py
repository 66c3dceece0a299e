"""Effects: pure functions from an upright RGB image and its alpha matte to the output array.

They follow ``transparent_background.Remover.process``: soft alphas scale to uint8 by truncation, ``rgba`` takes
its colours from pymatting's multi-level foreground estimation (so background colour does not bleed into soft
edges), composites are ``image * alpha + background * (1 - alpha)``, and ``blur`` uses a Gaussian of sigma 15.

Memory: a 50-megapixel upload is within the limits, so full-size temporaries stay float32 (4 bytes a value) and
are reused in place; nothing here makes a float64 copy of the image.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.schemas import RGB, RGBA, Effect, Refine

logger = logging.getLogger(__name__)

BLUR_SIGMA = 15.0
EXACT_BLUR_SIGMA = 16.0  # the default's and below: OpenCV's Gaussian itself
GREEN: RGB = (120, 255, 155)  # transparent-background's green, for `green` and `overlay`
WHITE: RGB = (255, 255, 255)
# pymatting resizes with numba `parallel=True` kernels. numba's tbb and omp threading layers may be entered from
# several threads at once; its fallback layer, workqueue, may not, so there foreground estimation runs one at a
# time per process.
_workqueue_lock = threading.Lock()
THREADSAFE_LAYERS = ("tbb", "omp")


def finalize_alpha(alpha: np.ndarray, threshold: float | None, reverse: bool) -> np.ndarray:
    """The request's alpha: hard where a threshold is given, swapped when ``reverse`` is set."""
    out = alpha.astype(np.float32, copy=False)
    if threshold is not None:
        out = (out > threshold).astype(np.float32)
    if reverse:
        out = 1.0 - out
    return out


@dataclass(frozen=True)
class Box:
    """A rectangle of the upright image, in pixels; width and height 0: no subject."""

    top: int
    left: int
    width: int
    height: int

    @property
    def empty(self) -> bool:
        return self.width == 0 or self.height == 0


EMPTY_BOX = Box(0, 0, 0, 0)


SUBJECT_LEVEL = 0.5  # where alpha is over this, the pixel is the subject's (as overlay's outline draws it)


def foreground_box(alpha: np.ndarray) -> Box:
    """The smallest box holding the subject (alpha over ``SUBJECT_LEVEL``), as remove.bg's X-Foreground-* headers
    give it. Not every pixel with some alpha: a model's mask is rarely exactly 0 far from the subject, and such a
    box would be the whole image."""
    visible = alpha > np.float32(SUBJECT_LEVEL)
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if rows.size == 0:
        return EMPTY_BOX
    return Box(int(rows[0]), int(cols[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def crop_box(box: Box, margin: str, height: int, width: int) -> Box:
    """``box`` grown by ``margin`` on each side (pixels, "12", or a percentage of the box's longer side, "10%"),
    kept within the image. A box with no subject crops nothing: the whole image."""
    if box.empty:
        return Box(0, 0, width, height)
    grow = round(max(box.width, box.height) * float(margin[:-1]) / 100) if margin.endswith("%") else int(margin)
    top, left = max(0, box.top - grow), max(0, box.left - grow)
    bottom, right = min(height, box.top + box.height + grow), min(width, box.left + box.width + grow)
    return Box(top, left, right - left, bottom - top)


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    return (alpha * 255.0).astype(np.uint8)  # truncation, as Remover's `map`


def _matting_guard() -> contextlib.AbstractContextManager[object]:
    """No lock where numba's threading layer is thread-safe; the workqueue lock otherwise, or before numba has
    chosen a layer (the first parallel kernel chooses it)."""
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet in this process
        return _workqueue_lock
    return contextlib.nullcontext() if layer in THREADSAFE_LAYERS else _workqueue_lock


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours for a soft alpha (pymatting's estimate_foreground_ml), as uint8 RGB: what
    ``Remover`` does, on every pixel at full size.

    pymatting computes in float32 whatever it is given, so it gets float32: the same numbers as from float64
    input, without two full-size float64 copies."""
    from pymatting import estimate_foreground_ml  # heavy import (numba): only when an rgba is asked for

    if max(alpha.shape) < 2:  # pymatting divides by its pyramid's depth, 0 for one pixel: its colour is its own
        return image.copy()
    scaled = np.divide(image, np.float32(255.0), dtype=np.float32)
    with _matting_guard():
        foreground = estimate_foreground_ml(scaled, alpha.astype(np.float32, copy=False))
    del scaled
    np.clip(foreground, 0.0, 1.0, out=foreground)
    foreground *= 255.0
    foreground += 0.5
    return foreground.astype(np.uint8)


# Where fast estimation works: at most this many pixels (about 1920x1080 at a quarter of each side). The colours
# it estimates vary slowly, so a smaller copy loses little (tests/unit/test_effects.py holds the bound).
FAST_MATTING_PIXELS = 160_000
UPSAMPLE = cv2.INTER_LINEAR


def estimate_foreground_fast(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours where the alpha is soft, as uint8 RGB; every other pixel keeps the image's colour
    (where alpha is 1 the image is the foreground, where it is 0 nothing shows).

    pymatting's estimate_foreground_ml runs on a copy scaled down to at most ``FAST_MATTING_PIXELS`` and also
    gives the background; in the soft band, the upsampled estimates are corrected so the band's pixels satisfy
    the compositing equation ``image = alpha * F + (1 - alpha) * B`` at full size (the step Forte and Pitie's
    blur fusion ends with). On a 1920x1080 photo: ~45 ms instead of ~220 ms for full-size estimation, with the
    colour error in the band within a few percent of it."""
    from pymatting import estimate_foreground_ml

    band = np.flatnonzero((alpha > 0.0) & (alpha < 1.0))
    out = image.copy()
    if band.size == 0 or max(alpha.shape) < 2:
        return out
    height, width = alpha.shape
    scale = min(1.0, (FAST_MATTING_PIXELS / alpha.size) ** 0.5)
    small = (max(2, round(width * scale)), max(2, round(height * scale)))
    image_small = cv2.resize(image, small, interpolation=cv2.INTER_AREA).astype(np.float32)
    image_small *= np.float32(1.0 / 255.0)
    alpha_small = cv2.resize(alpha.astype(np.float32, copy=False), small, interpolation=cv2.INTER_AREA)
    with _matting_guard():
        fore_small, back_small = estimate_foreground_ml(image_small, alpha_small, return_background=True)
    # Upsampled estimates, read at the band's pixels only.
    fore = cv2.resize(fore_small, (width, height), interpolation=UPSAMPLE).reshape(-1, 3)[band]
    back = cv2.resize(back_small, (width, height), interpolation=UPSAMPLE).reshape(-1, 3)[band]
    a = alpha.reshape(-1)[band].astype(np.float32)[:, None]
    observed = image.reshape(-1, 3)[band].astype(np.float32) * np.float32(1.0 / 255.0)
    fore += a * (observed - a * fore - (1.0 - a) * back)
    np.clip(fore, 0.0, 1.0, out=fore)
    out.reshape(-1, 3)[band] = (fore * 255.0 + 0.5).astype(np.uint8)
    return out


def warm_up_matting() -> None:
    """Compile pymatting's kernels (tens of seconds on a fresh install) before the first request needs them."""
    rng = np.random.default_rng(0)
    estimate_foreground(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((32, 32)).astype(np.float32))


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``image * alpha + background * (1 - alpha)`` in float32, truncated to uint8; two full-size float32
    buffers, updated in place."""
    a = alpha[..., None]
    out = image.astype(np.float32)
    out *= a
    behind = background.astype(np.float32)
    behind *= 1.0 - a
    out += behind
    return out.astype(np.uint8)


def over(image: np.ndarray, alpha: np.ndarray, behind: np.ndarray, behind_alpha: np.ndarray | int) -> np.ndarray:
    """The subject over something with an alpha of its own (Pillow's ``alpha_composite`` of the cut-out onto it, as
    rembg's ``bgc`` does): HxWx4, alpha ``a + b (1 - a)`` (truncated, as the cut-out's), colour ``(image a + behind
    b (1 - a)) / alpha`` (rounded). ``behind``: HxWx3 uint8 or one colour; ``behind_alpha``: HxW uint8 or one
    number, 0-255. Two full-size float32 colour buffers and two single-channel ones, as ``composite`` needs."""
    a = alpha[..., None].astype(np.float32, copy=False)
    out_alpha = 1.0 - a  # what is behind shows through this much of each pixel...
    out_alpha *= behind_alpha[..., None] if isinstance(behind_alpha, np.ndarray) else behind_alpha
    out_alpha *= np.float32(1 / 255)  # ...times its own alpha
    out = np.multiply(behind, out_alpha, dtype=np.float32)
    subject = image.astype(np.float32)
    subject *= a
    out += subject
    del subject
    out_alpha += a
    np.divide(out, out_alpha, out=out, where=out_alpha > 0)
    out += 0.5
    colours = out.astype(np.uint8)
    del out
    out_alpha *= 255.0  # truncated, as alpha_to_uint8 (Remover's): over a transparent backdrop, rgba's own alpha
    return np.dstack([colours, out_alpha[..., 0].astype(np.uint8)])


def overlay(image: np.ndarray, alpha: np.ndarray, green: RGB = GREEN) -> np.ndarray:
    """transparent-background's `overlay`: the subject tinted halfway to green, its outline (Canny edges of
    alpha > 0.5) drawn in green, the rest as it was."""
    tinted = ((image.astype(np.uint16) + np.array(green, np.uint16)) // 2).astype(np.uint8)
    out = composite(tinted, alpha, image)
    outline = cv2.Canny(((alpha > 0.5) * 255).astype(np.uint8), 50, 100)
    out[outline != 0] = green
    return out


def cover(background: np.ndarray, height: int, width: int) -> np.ndarray:
    """``background`` scaled to cover ``height`` x ``width`` (keeping its aspect ratio) and centre-cropped to it.
    Cropped first, at its own size: scaled first, a 1-pixel-wide background behind a wide photo asked for
    gigabytes. One already at that size is returned as it is (postprocess covers it before converting colours).
    One with an alpha channel (HxWx4) is scaled premultiplied: the colours under its transparent pixels do not
    bleed into their neighbours."""
    bh, bw = background.shape[:2]
    if (bh, bw) == (height, width):
        return background
    if bw * height > width * bh:  # wider than the target: keep its full height
        ch, cw = bh, max(1, min(bw, round(bh * width / height)))
    else:
        ch, cw = max(1, min(bh, round(bw * height / width))), bw
    top, left = (bh - ch) // 2, (bw - cw) // 2
    crop = background[top : top + ch, left : left + cw]
    if (ch, cw) == (height, width):  # the crop alone fits: nothing to scale
        return np.ascontiguousarray(crop)
    interpolation = cv2.INTER_AREA if ch > height else cv2.INTER_LINEAR
    if has_alpha(crop):
        scaled = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGBA2mRGBA), (width, height), interpolation=interpolation)
        return cv2.cvtColor(scaled, cv2.COLOR_mRGBA2RGBA)
    return cv2.resize(crop, (width, height), interpolation=interpolation)


def has_alpha(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[2] == 4


def blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` under a Gaussian of ``sigma`` pixels. Up to ``EXACT_BLUR_SIGMA`` that is OpenCV's Gaussian; a wider
    one costs in proportion to sigma (sigma 100 took 2-3 s a megapixel), so it blurs a copy shrunk to keep sigma
    at ``EXACT_BLUR_SIGMA`` and scales it back: the shrink's own smoothing is ~1/1000 of the blur's variance."""
    if sigma <= EXACT_BLUR_SIGMA:
        return cv2.GaussianBlur(image, (0, 0), sigma)
    height, width = image.shape[:2]
    factor = sigma / EXACT_BLUR_SIGMA
    small = cv2.resize(
        image, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA
    )
    # Each axis's own shrink (a narrow image's width stays at 1 or rounds coarsely).
    small = cv2.GaussianBlur(small, (0, 0), sigma * small.shape[1] / width, sigmaY=sigma * small.shape[0] / height)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def times_own_alpha(alpha: np.ndarray, own_alpha: np.ndarray | None) -> np.ndarray:
    """The matte an output shows: ``alpha`` (HxW float) times the upload's own transparency (HxW uint8), if any.
    A new array, never ``alpha`` changed in place (it may be the mask cache's)."""
    return alpha if own_alpha is None else alpha * (own_alpha / np.float32(255))


def apply_effect(
    image: np.ndarray,
    alpha: np.ndarray,
    effect: Effect,
    color: RGBA = (255, 255, 255, 255),
    refine: Refine = Refine.FAST,
    blur_sigma: float = BLUR_SIGMA,
    background: np.ndarray | None = None,
    green: RGB = GREEN,
    white: RGB = WHITE,
    own_alpha: np.ndarray | None = None,
) -> np.ndarray:
    """``image`` HxWx3 uint8, ``alpha`` HxW float in [0, 1] → HxW (mask), HxWx4 (rgba, color with an alpha under
    255, and background on a ``background`` with an alpha channel, HxWx4) or HxWx3 uint8. ``color``, ``green``
    and ``white`` are in the image's colour space.

    ``refine``: for rgba, where the colours of soft-alpha pixels come from (Remover estimates them for a soft
    alpha, i.e. without a threshold; a hard alpha has no soft pixel, and the caller passes NONE).

    ``own_alpha`` (HxW uint8): the upload's own transparency. What it hid stays hidden in every output: it
    multiplies the matte (``shown``), and blur and overlay, which show the photo itself around the subject, show
    it as it looks on white. rgba's colours are estimated on the matte alone: the upload's own soft pixels
    already hold the subject's colours, and an estimate took them for a blend with their background."""
    if image.shape[:2] != alpha.shape:
        raise ValueError(f"image {image.shape[:2]} and alpha {alpha.shape} differ in size")
    shown = times_own_alpha(alpha, own_alpha)
    if effect == Effect.MASK:
        return alpha_to_uint8(shown)
    if effect == Effect.RGBA:
        estimators = {Refine.FAST: estimate_foreground_fast, Refine.FULL: estimate_foreground}
        colours = estimators[refine](image, alpha) if refine in estimators else image
        return np.dstack([colours, alpha_to_uint8(shown)])
    alpha = shown
    if own_alpha is not None and effect in (Effect.BLUR, Effect.OVERLAY):
        image = composite(image, own_alpha / np.float32(255), np.full_like(image, 255))
    if effect == Effect.COLOR and color[3] < 255:
        return over(image, alpha, np.array(color[:3], np.float32), color[3])
    if effect == Effect.COLOR:
        return composite(image, alpha, np.broadcast_to(np.array(color[:3], dtype=np.uint8), image.shape))
    if effect in (Effect.GREEN, Effect.WHITE):
        solid = green if effect == Effect.GREEN else white
        return composite(image, alpha, np.broadcast_to(np.array(solid, dtype=np.uint8), image.shape))
    if effect == Effect.BLUR:
        return composite(image, alpha, blurred(image, blur_sigma))
    if effect == Effect.OVERLAY:
        return overlay(image, alpha, green)
    if effect == Effect.BACKGROUND:
        if background is None:
            raise ValueError("effect background needs a background image")
        behind = cover(background, *image.shape[:2])
        if has_alpha(behind):  # what its own transparency hides stays transparent behind the subject
            return over(image, alpha, behind[..., :3], behind[..., 3])
        return composite(image, alpha, behind)
    raise ValueError(f"unknown effect {effect!r}")
