"""Effects: pure functions from an upright RGB image and its alpha matte to the output array.

They follow ``transparent_background.Remover.process``: soft alphas scale to uint8 by truncation, ``rgba`` takes
its colours from pymatting's multi-level foreground estimation (so background colour does not bleed into soft
edges), composites are ``image * alpha + background * (1 - alpha)``, and ``blur`` uses a Gaussian of sigma 15.
"""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np

from serve_app.schemas import RGB, Effect

logger = logging.getLogger(__name__)

BLUR_SIGMA = 15.0
# pymatting's helpers run numba `parallel=True` kernels, and numba's default threading layer must not be entered
# from two threads at once: rgba foreground estimation runs one at a time per process.
_matting_lock = threading.Lock()


def finalize_alpha(alpha: np.ndarray, threshold: float | None, reverse: bool) -> np.ndarray:
    """The request's alpha: hard where a threshold is given, swapped when ``reverse`` is set."""
    out = alpha.astype(np.float32, copy=False)
    if threshold is not None:
        out = (out > threshold).astype(np.float32)
    if reverse:
        out = 1.0 - out
    return out


def alpha_to_uint8(alpha: np.ndarray) -> np.ndarray:
    return (alpha * 255.0).astype(np.uint8)  # truncation, as Remover's `map`


def estimate_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Foreground colours for a soft alpha (pymatting's estimate_foreground_ml), as uint8 RGB."""
    from pymatting import estimate_foreground_ml  # heavy import (numba): only when an rgba is asked for

    with _matting_lock:
        foreground = estimate_foreground_ml(image.astype(np.float64) / 255.0, alpha.astype(np.float64))
    return (255.0 * np.clip(foreground, 0.0, 1.0) + 0.5).astype(np.uint8)


def warm_up_matting() -> None:
    """Compile pymatting's kernels (tens of seconds on a fresh install) before the first request needs them."""
    rng = np.random.default_rng(0)
    estimate_foreground(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), rng.random((32, 32)).astype(np.float32))


def composite(image: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    return (image.astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)).astype(np.uint8)


def apply_effect(
    image: np.ndarray,
    alpha: np.ndarray,
    effect: Effect,
    color: RGB = (255, 255, 255),
    estimate_colours: bool = True,
) -> np.ndarray:
    """``image`` HxWx3 uint8, ``alpha`` HxW float in [0, 1] → HxW (mask), HxWx4 (rgba) or HxWx3 uint8.

    ``estimate_colours``: for rgba, take the colours from foreground estimation (Remover does so for a soft
    alpha, i.e. without a threshold) rather than from the image."""
    if image.shape[:2] != alpha.shape:
        raise ValueError(f"image {image.shape[:2]} and alpha {alpha.shape} differ in size")
    if effect == Effect.MASK:
        return alpha_to_uint8(alpha)
    if effect == Effect.RGBA:
        colours = estimate_foreground(image, alpha) if estimate_colours else image
        return np.dstack([colours, alpha_to_uint8(alpha)])
    if effect == Effect.COLOR:
        return composite(image, alpha, np.broadcast_to(np.array(color, dtype=np.uint8), image.shape))
    if effect == Effect.BLUR:
        return composite(image, alpha, cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA))
    raise ValueError(f"unknown effect {effect!r}")
