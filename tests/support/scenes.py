"""Synthetic scenes with a known subject: a textured ellipse on a textured background.

The test weights are trained on these and every mask test compares against the known shape, so a
transposed, shifted or batch-corrupted mask fails (a constant or random mask cannot reach the IoU bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool, True on the subject


def _smooth_texture(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a small random grid upsampled bicubically."""
    grid = rng.random((cells, cells, 3)).astype(np.float32)
    up = Image.fromarray((grid * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    return np.asarray(up, dtype=np.float32) / 255.0


def ellipse_mask(height: int, width: int, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    cos, sin = np.cos(angle), np.sin(angle)
    u = (dx * cos + dy * sin) / rx
    v = (-dx * sin + dy * cos) / ry
    return (u * u + v * v) <= 1.0


def make_scene(rng: np.random.Generator, height: int = 128, width: int = 128, subject: bool = True) -> Scene:
    """A muted, smooth background and a saturated, grainy subject placed off-centre at random."""
    texture = 0.3 + 0.4 * _smooth_texture(rng, height, width, cells=4)
    grey = texture.mean(axis=2, keepdims=True)
    background = 0.75 * grey + 0.25 * texture  # mostly grey: colour says "subject", as saliency would
    if not subject:
        image = background
        mask = np.zeros((height, width), dtype=bool)
    else:
        short = min(height, width)
        ry = rng.uniform(0.18, 0.34) * short
        rx = rng.uniform(0.18, 0.34) * short
        cy = rng.uniform(0.38, 0.62) * height
        cx = rng.uniform(0.38, 0.62) * width
        mask = ellipse_mask(height, width, cy, cx, ry, rx, rng.uniform(0, np.pi))
        hue = rng.permutation(np.array([1.0, 0.15, rng.uniform(0.0, 0.6)], dtype=np.float32))
        subject_texture = 0.55 + 0.45 * _smooth_texture(rng, height, width, cells=10)
        foreground = np.clip(subject_texture * hue + 0.1 * rng.standard_normal((height, width, 3)), 0, 1)
        image = np.where(mask[..., None], foreground, background)
    return Scene(image=(np.clip(image, 0, 1) * 255).astype(np.uint8), mask=mask)


def make_scenes(seed: int, count: int, height: int = 128, width: int = 128) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [make_scene(rng, height, width) for _ in range(count)]


@dataclass(frozen=True)
class SoftComposite:
    """An image made from a known foreground, background and soft alpha: ``image = alpha F + (1 - alpha) B``."""

    image: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray  # HxW float32 in [0, 1]
    foreground: np.ndarray  # HxWx3 float32 in [0, 1]: the true colours under the soft edge


def soft_composite(seed: int, height: int = 1080, width: int = 1920, feather: float = 6.0) -> SoftComposite:
    """A textured reddish subject with hair-like strands and a feathered edge, on a contrasting bluish texture:
    where the alpha is soft, the image's colours mix both, and only estimation recovers the subject's."""
    import cv2

    rng = np.random.default_rng(seed)
    foreground = _smooth_texture(rng, height, width, cells=24) * np.array([1.0, 0.35, 0.2], np.float32)
    background = _smooth_texture(rng, height, width, cells=8) * np.array([0.2, 0.6, 1.0], np.float32)
    hard = np.zeros((height, width), np.float32)
    cv2.ellipse(hard, (width // 2, height // 2), (width // 4, height // 3), 15, 0, 360, 1.0, -1)
    for _ in range(60):  # strands: thin lines that end up wholly soft
        x0, y0 = int(rng.integers(width // 4, 3 * width // 4)), int(rng.integers(height // 6, height // 3))
        x1, y1 = x0 + int(rng.integers(-80, 80)), y0 - int(rng.integers(20, 120))
        cv2.line(hard, (x0, y0), (x1, y1), 1.0, 2)
    alpha = np.clip(cv2.GaussianBlur(hard, (0, 0), feather), 0.0, 1.0)
    a = alpha[..., None]
    image = np.round((foreground * a + background * (1.0 - a)) * 255.0).astype(np.uint8)
    return SoftComposite(image=image, alpha=alpha, foreground=foreground)


def soft_band_colour_error(colours: np.ndarray, composite: SoftComposite) -> float:
    """Mean absolute colour error (0..1) against the true foreground over the soft band, each pixel weighted by its
    alpha (how much of its colour shows once the cut-out is put on a new background)."""
    band = (composite.alpha > 0.02) & (composite.alpha < 0.98)
    weight = composite.alpha[band]
    error = np.abs(colours.astype(np.float32) / 255.0 - composite.foreground)[band].mean(axis=1)
    return float((error * weight).sum() / weight.sum())
