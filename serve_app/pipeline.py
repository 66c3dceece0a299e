"""The ingress's CPU work as two plain functions around the model call: ``prepare`` before, ``render`` after."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.codec import MEDIA_TYPES, decode_image, encode_image
from serve_app.effects import apply_effect, finalize_alpha
from serve_app.resize import to_model_input, upsample_mask
from serve_app.schemas import RemoveParams
from serve_app.tiers import ResizePolicy


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray  # upright RGB upload, HxWx3 uint8
    model_input: np.ndarray  # resized for the tier, hxwx3 uint8


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    width: int
    height: int


def prepare(data: bytes, policy: ResizePolicy, base_size: int, max_pixels: int) -> Prepared:
    image = decode_image(data, max_pixels=max_pixels)
    return Prepared(image=image, model_input=to_model_input(image, policy, base_size))


def render(image: np.ndarray, model_mask: np.ndarray, params: RemoveParams) -> Rendered:
    height, width = image.shape[:2]
    alpha = finalize_alpha(upsample_mask(model_mask, height, width), params.threshold, params.reverse)
    output = apply_effect(image, alpha, params.effect, params.rgb, estimate_colours=params.threshold is None)
    return Rendered(
        body=encode_image(output, params.format), media_type=MEDIA_TYPES[params.format], width=width, height=height
    )
