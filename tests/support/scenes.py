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
