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

import cv2
import numpy as np

from serve_app.schemas import RGB, Effect

logger = logging.getLogger(__name__)

BLUR_SIGMA = 15.0
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
    """Foreground colours for a soft alpha (pymatting's estimate_foreground_ml), as uint8 RGB.

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
