"""The tier catalogue, defined once: which checkpoint each quality tier runs and how its input is sized.

Checkpoint names, URLs and md5 sums are transparent-background 1.3.4's ``config.yaml``; the resize policies are
those of its ``Remover`` (static: a square of ``base_size``, aspect not kept; dynamic: ``dynamic_resize(L=1280)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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
    description: str = ""


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


@dataclass(frozen=True)
class TierSpec:
    tier: Tier
    checkpoint: Checkpoint
    base_size: int  # the size the model is built for (its attention modules pool to fractions of it)
    resize: ResizePolicy
    summary: str


CATALOGUE: dict[Tier, TierSpec] = {
    Tier.FAST: TierSpec(
        tier=Tier.FAST,
        checkpoint=Checkpoint(
            filename="ckpt_fast.pth", url=f"{RELEASE_URL}/ckpt_fast.pth", md5="9efdbfbcc49b79ef0f7891c83d2fd52f"
        ),
        base_size=384,
        resize=StaticResize(),
        summary="ckpt_fast.pth at 384x384: lowest latency, softer edges",
    ),
    Tier.BALANCED: TierSpec(
        tier=Tier.BALANCED,
        checkpoint=Checkpoint(
            filename="ckpt_base.pth", url=f"{RELEASE_URL}/ckpt_base.pth", md5="d692e3dd5fa1b9658949d452bebf1cda"
        ),
        base_size=1024,
        resize=StaticResize(),
        summary="ckpt_base.pth at 1024x1024: the default",
    ),
    Tier.QUALITY: TierSpec(
        tier=Tier.QUALITY,
        checkpoint=Checkpoint(
            filename="ckpt_base_nightly.pth",
            url=f"{RELEASE_URL}/ckpt_base_nightly.pth",
            md5=None,  # none published: its sha256 is recorded at the first download and checked from then on
        ),
        base_size=1024,
        resize=DynamicResize(),
        summary="ckpt_base_nightly.pth at the photo's own size (shorter side at most 1280): finest detail",
    ),
}
