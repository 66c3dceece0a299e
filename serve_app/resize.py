"""Sizing between the upload and the model, as transparent-background's Remover does it.

The policies say which size the model sees (static: the tier's square; dynamic: the photo's own size within
bounds). Down: PIL bilinear (antialiased when shrinking) to that size. Up: bilinear with ``align_corners=True``
from the model's mask back to the upright upload size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class StaticResize:
    """Stretch to a square of the model's base size, as ``Remover(resize="static")``."""

    def model_input_size(self, width: int, height: int, base_size: int) -> tuple[int, int]:
        return base_size, base_size


@dataclass(frozen=True)
class DynamicResize:
    """``Remover(resize="dynamic")``: shrink only when the shorter side exceeds ``max_short_side``, then round
    each side to the nearest multiple of 32 (Python's round, as Remover).

    Two guards Remover lacks, where it would crash or run out of memory: a side never rounds below 32 (Remover
    rounds sides under 16 px to 0), and the long side is capped at ``max_long_side`` (Remover has no cap).
    Inside both bounds the size is exactly Remover's.
    """

    max_short_side: int = 1280
    max_long_side: int = 2560
    multiple: int = 32

    def model_input_size(self, width: int, height: int, base_size: int) -> tuple[int, int]:
        w, h = float(width), float(height)
        if w >= h and h > self.max_short_side:
            w, h = w / (h / self.max_short_side), float(self.max_short_side)
        elif h > w and w > self.max_short_side:
            w, h = float(self.max_short_side), h / (w / self.max_short_side)
        long_side = max(w, h)
        if long_side > self.max_long_side:
            w, h = w * self.max_long_side / long_side, h * self.max_long_side / long_side
        m = self.multiple
        return max(m, round(w / m) * m), max(m, round(h / m) * m)


ResizePolicy = StaticResize | DynamicResize


def to_model_input(image: np.ndarray, policy: ResizePolicy, base_size: int) -> np.ndarray:
    """HxWx3 uint8 → the model's input size (policy and base size decide it), still uint8."""
    height, width = image.shape[:2]
    size = policy.model_input_size(width, height, base_size)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """hxw float mask → HxW float32, bilinear with aligned corners."""
    # A copy (the mask is model-sized, small): a mask from Ray arrives read-only, which torch.from_numpy warns about.
    tensor = torch.tensor(mask, dtype=torch.float32)[None, None]
    with torch.inference_mode():
        up = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)
    return up[0, 0].numpy()
