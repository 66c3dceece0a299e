"""Sizing between the upload and the model, as transparent-background's Remover does it.

Down: PIL bilinear (antialiased when shrinking) to the tier's model input. Up: bilinear with
``align_corners=True`` from the model's mask back to the upright upload size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from serve_app.tiers import ResizePolicy


def to_model_input(image: np.ndarray, policy: ResizePolicy, base_size: int) -> np.ndarray:
    """HxWx3 uint8 → the model's input size (policy and base size decide it), still uint8."""
    height, width = image.shape[:2]
    size = policy.model_input_size(width, height, base_size)
    if size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """hxw float mask → HxW float32, bilinear with aligned corners."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    with torch.inference_mode():
        up = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=True)
    return up[0, 0].numpy()
