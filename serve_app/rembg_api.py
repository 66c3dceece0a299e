"""rembg's HTTP API (``POST /api/remove``), translated onto ours, so scripts written for rembg's server work
unchanged. Its options come as form fields or query parameters with rembg's names; the answer is a PNG, as
rembg's is.

- ``model``: rembg's model names map onto our tiers (``MODEL_TIERS``): the small models to ``fast``, the general
  ones to ``balanced``, the high-resolution ones to ``quality``. Without it, the service's default tier.
- ``om`` (only mask): the grey mask. ``bgc`` (``R,G,B,A``): the subject on that colour; with ``A`` under 255 the
  PNG keeps an alpha channel (the cut-out composited onto the translucent colour, as rembg does).
- ``ppm`` (post-process mask): rembg smooths the mask and cuts it at half; here, a hard mask at 0.5.
- ``a``, ``af``, ``ab``, ``ae`` (alpha matting with a trimap): InSPyReNet's mask is already a soft matte, so no
  trimap matting runs; ``a=true`` takes the edge colours from full-size foreground estimation (``refine=full``).
- ``extras``: must be JSON; its keys are rembg model options (SAM prompts and the like) that no tier uses.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.catalogue import Tier
from serve_app.schemas import Effect, Refine, RemoveParams, parse_color

MODEL_TIERS: dict[str, Tier] = {
    "u2netp": Tier.FAST,
    "silueta": Tier.FAST,
    "birefnet-general-lite": Tier.FAST,
    "u2net": Tier.BALANCED,
    "u2net_human_seg": Tier.BALANCED,
    "u2net_cloth_seg": Tier.BALANCED,
    "isnet-general-use": Tier.BALANCED,
    "isnet-anime": Tier.BALANCED,
    "birefnet-general": Tier.QUALITY,
    "birefnet-portrait": Tier.QUALITY,
    "birefnet-dis": Tier.QUALITY,
    "birefnet-hrsod": Tier.QUALITY,
    "birefnet-cod": Tier.QUALITY,
    "birefnet-massive": Tier.QUALITY,
    "bria-rmbg": Tier.QUALITY,
}


def _is_color(value: str) -> bool:
    try:
        parse_color(value)
    except ValueError:
        return False
    return True


class RembgParams(BaseModel):
    """rembg's options, with its names and defaults. Other names are ignored, as rembg's server ignores them (a
    script's cache-busting query parameter, a client's own form field): /v1/remove refuses them."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        None, description="A rembg model name: the small ones run the fast tier, the high-resolution ones quality."
    )
    a: bool = Field(False, description="Alpha matting: here, the edge colours from full-size foreground estimation.")
    af: int = Field(240, ge=0, le=255, description="rembg's matting foreground threshold (accepted; no trimap here).")
    ab: int = Field(10, ge=0, le=255, description="rembg's matting background threshold (accepted; no trimap here).")
    ae: int = Field(10, ge=0, description="rembg's matting erosion size (accepted; no trimap here).")
    om: bool = Field(False, description="Only the mask: the grey matte.")
    ppm: bool = Field(False, description="Post-process the mask: a hard mask at 0.5.")
    bgc: str | None = Field(None, description="R,G,B,A: the subject on that colour (alpha under 255 keeps alpha).")
    extras: str | None = Field(None, description="JSON of rembg model options; none applies here.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None) -> str | None:
        if value is not None and value not in MODEL_TIERS:
            raise ValueError(f"unknown rembg model {value!r}; known: {', '.join(MODEL_TIERS)}")
        return value

    @field_validator("bgc")
    @classmethod
    def _rgba(cls, value: str | None) -> str | None:
        if value is not None and (value.count(",") != 3 or not _is_color(value)):
            raise ValueError(f"bgc {value!r}: expected R,G,B,A with each 0..255")
        return value

    @field_validator("extras")
    @classmethod
    def _json(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                json.loads(value)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
                raise ValueError("extras must be JSON") from None
        return value

    def to_remove_params(self) -> RemoveParams:
        """Our request for the same picture."""
        options: dict[str, Any] = {"format": "png", "refine": Refine.FULL if self.a else Refine.FAST}
        if self.model is not None:
            options["tier"] = MODEL_TIERS[self.model]
        if self.ppm:
            options["threshold"] = 0.5
        if self.om:
            options["effect"] = Effect.MASK
        elif self.bgc is not None:
            options["effect"], options["color"] = Effect.COLOR, self.bgc
        return RemoveParams(**options)
