"""The tier catalogue, defined once: which checkpoint each quality tier runs and how its input is sized.

Checkpoint names, URLs and md5 sums are transparent-background 1.3.4's ``config.yaml``; the resize policies are
those of its ``Remover`` (static: a square of ``base_size``, aspect not kept; dynamic: ``dynamic_resize(L=1280)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from serve_app.resize import DynamicResize, ResizePolicy, StaticResize

RELEASE_URL = "https://github.com/plemeri/transparent-background/releases/download/1.2.12"


class Tier(str, Enum):
    FAST = "fast"
    BALANCED = "balanced"
    QUALITY = "quality"


@dataclass(frozen=True)
class Checkpoint:
    filename: str
    url: str
    md5: str | None  # published by transparent-background; None where it publishes none


@dataclass(frozen=True)
class ModelSpec:
    """What a tier runs: its checkpoint, the size the model is built for, and how an upload is sized for it."""

    checkpoint: Checkpoint
    base_size: int  # the size the model is built for (its attention modules pool to fractions of it)
    resize: ResizePolicy


CATALOGUE: dict[Tier, ModelSpec] = {
    Tier.FAST: ModelSpec(
        checkpoint=Checkpoint(
            filename="ckpt_fast.pth", url=f"{RELEASE_URL}/ckpt_fast.pth", md5="9efdbfbcc49b79ef0f7891c83d2fd52f"
        ),
        base_size=384,
        resize=StaticResize(),
    ),
    Tier.BALANCED: ModelSpec(
        checkpoint=Checkpoint(
            filename="ckpt_base.pth", url=f"{RELEASE_URL}/ckpt_base.pth", md5="d692e3dd5fa1b9658949d452bebf1cda"
        ),
        base_size=1024,
        resize=StaticResize(),
    ),
    Tier.QUALITY: ModelSpec(
        checkpoint=Checkpoint(
            filename="ckpt_base_nightly.pth",
            url=f"{RELEASE_URL}/ckpt_base_nightly.pth",
            md5=None,  # none published: its sha256 is recorded at the first download and checked from then on
        ),
        base_size=1024,
        resize=DynamicResize(),
    ),
}
