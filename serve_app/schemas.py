"""Typed request, response and configuration models, with every default in one place.

``AppConfig`` is what ``serve_config.yaml`` passes as ``args`` to the application builder; ``TierConfig`` is one
tier's part of it; ``BatchingConfig`` is the model deployment's ``user_config`` (changed live, no redeploy);
``ServedTier`` is one tier as this application serves it (what its model deployment is built with);
``RemoveParams`` are the query parameters of ``POST /v1/remove``; ``MaskResult`` is what a model deployment sends
back for one image.

Serve's own deployment options (replicas, autoscaling, health checks, queue limits, ``ray_actor_options``) are
not shadowed here: each tier and the ingress take a ``deployment:`` mapping of them, merged over the defaults
below (``ray_actor_options`` key by key), and Serve validates it as it documents it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
from PIL import Image, ImageColor
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from serve_app.catalogue import CATALOGUE, ModelSpec, Tier
from serve_app.resize import DynamicResize, ResizePolicy, StaticResize
from serve_app.runtimes import RuntimeSettings, runtime_choices
from serve_app.runtimes.onnx_artifacts import EXPORT_DIR, export_command
from serve_app.runtimes.openvino import CONVERTED_DIR
from serve_app.weights import ResolvedWeights, weights_identity, weights_label


class Effect(str, Enum):
    RGBA = "rgba"  # the cut-out with a transparent background
    MASK = "mask"  # the alpha matte as a grey image
    COLOR = "color"  # the cut-out on a solid colour
    BLUR = "blur"  # the cut-out on its own background, blurred
    GREEN = "green"  # on transparent-background's green, (120, 255, 155)
    WHITE = "white"  # on white
    OVERLAY = "overlay"  # the subject tinted green with a green outline, on its own background
    BACKGROUND = "background"  # on a second uploaded image (multipart field `background`), resized to cover


class Refine(str, Enum):
    """How rgba's colours are found where the alpha is soft (so the old background does not bleed into edges)."""

    FAST = "fast"  # estimation on a smaller copy, corrected at full size in the soft band (effects.py)
    FULL = "full"  # pymatting's estimation on every pixel at full size: Remover's rgba, ~5x slower
    NONE = "none"  # the image's own colours


REFINE_ALIASES = {"true": Refine.FAST, "1": Refine.FAST, "false": Refine.NONE, "0": Refine.NONE}


class OutputFormat(str, Enum):
    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"


def _known_runtime(name: str) -> str:
    if name not in runtime_choices():
        raise ValueError(f"unknown runtime {name!r}; valid: {', '.join(runtime_choices())}")
    return name


# A tier's runtime: a name from the runtime registry (serve_app/runtimes), or auto. Not an Enum, so the registry
# stays the only list.
RuntimeChoice = Annotated[
    str, AfterValidator(_known_runtime), WithJsonSchema({"type": "string", "enum": runtime_choices()})
]


class Device(str, Enum):
    AUTO = "auto"  # cuda when the tier asks for a GPU share, else cpu
    CPU = "cpu"
    CUDA = "cuda"


RGB = tuple[int, int, int]
RGBA = tuple[int, int, int, int]
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_color(value: str) -> RGBA:
    """``#00ff00``, ``00ff00``, ``#0f0``, a CSS name like ``white``, or ``r,g,b`` with each 0..255; an alpha may
    follow (``#00ff0080``, ``#0f08``, ``r,g,b,a``), else the colour is opaque (alpha 255)."""
    text = value.strip()
    if "," in text:
        parts = text.split(",")
        if len(parts) not in (3, 4) or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(f"color {value!r}: expected r,g,b or r,g,b,a with each 0..255")
        r, g, b, a = (int(p) for p in [*parts, "255"][:4])
        return r, g, b, a
    if len(text) in (3, 4, 6, 8) and all(c in _HEX_DIGITS for c in text):
        text = "#" + text  # '#' must be sent as %23 in a URL, so accept hex without it
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(
            f"color {value!r}: expected #rrggbb, #rgb (alpha: #rrggbbaa), a colour name or r,g,b"
        ) from None
    r, g, b = rgb[:3]
    return r, g, b, rgb[3] if len(rgb) == 4 else 255


FILE_EXTENSIONS: dict[OutputFormat, str] = {
    OutputFormat.PNG: "png",
    OutputFormat.WEBP: "webp",
    OutputFormat.JPEG: "jpg",
}


@dataclass(frozen=True)
class OutputSpec:
    """One output of a request: an effect encoded in a format, named ``<effect>.<ext>`` in a ZIP of several."""

    effect: Effect
    format: OutputFormat

    @property
    def filename(self) -> str:
        return f"{self.effect.value}.{FILE_EXTENSIONS[self.format]}"


def parse_outputs(value: str, default_format: OutputFormat = OutputFormat.PNG) -> list[OutputSpec]:
    """``rgba,white:jpeg,mask:webp``: effects, each with an optional ``:format`` (else ``default_format``)."""
    specs: list[OutputSpec] = []
    for item in value.split(","):
        effect_name, _, format_name = item.strip().partition(":")
        try:
            effect = Effect(effect_name.strip())
            fmt = OutputFormat(format_name.strip()) if format_name else default_format
        except ValueError:
            raise ValueError(
                f"outputs: {item.strip()!r} is not effect or effect:format (effects: "
                f"{', '.join(e.value for e in Effect)}; formats: {', '.join(f.value for f in OutputFormat)})"
            ) from None
        spec = OutputSpec(effect, fmt)
        if spec in specs:
            raise ValueError(f"outputs: {item.strip()!r} is asked for twice")
        specs.append(spec)
    return specs


class RemoveParams(BaseModel):
    """Query parameters of ``POST /v1/remove``."""

    # nan is no number: without this, blur_sigma=nan was refused as "less than or equal to 100"
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tier: Tier | None = Field(None, description="fast, balanced or quality; default: the service's default_tier.")
    effect: Effect = Field(
        Effect.RGBA,
        description="What to return: rgba cut-out, mask, color, blur, green, white, overlay, or background (the "
        "subject on a second image sent as multipart field 'background'; where that image is transparent, so is "
        "the answer).",
    )
    blur_sigma: float = Field(15.0, gt=0.0, le=100.0, description="effect=blur: the Gaussian's sigma in pixels.")
    color: str = Field(
        "#ffffff",
        description="Background for effect=color: #rrggbb (send # as %23), rrggbb, #rgb, a CSS colour name "
        "(white, orange, ...) or r,g,b; with an alpha (#rrggbbaa, r,g,b,a) under 255 the answer keeps an alpha "
        "channel (the subject over a translucent colour).",
    )
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Hard mask: alpha = 1 where above, else 0.")
    reverse: bool = Field(False, description="Swap subject and background (keep the background, remove the subject).")
    format: OutputFormat = Field(OutputFormat.PNG, description="png, webp or jpeg (rgba as jpeg is put on white).")
    quality: int | None = Field(
        None, ge=1, le=100, description="jpeg and lossy webp: the encoder's quality, 1-100 (default 95 and 90)."
    )
    lossless: bool = Field(False, description="webp: lossless (exact pixels, alpha included), larger and slower.")
    crop: bool = Field(
        False, description="Crop the result to the subject's box (X-Foreground-* headers) plus crop_margin."
    )
    crop_margin: str = Field(
        "0",
        pattern=r"^\d{1,5}%?$",
        description="Margin kept around the subject when cropping: pixels (12) or a percentage of the subject's longer "
        "side (10%, send % as %25).",
    )
    refine: Refine = Field(
        Refine.FAST,
        description="rgba's edge colours where the alpha is soft: fast (default), full (Remover's own, slower) or "
        "none (true and false mean fast and none). A threshold makes the alpha hard, so nothing is refined.",
    )

    @field_validator("refine", mode="before")
    @classmethod
    def _refine_aliases(cls, value: object) -> object:
        return REFINE_ALIASES.get(value.lower(), value) if isinstance(value, str) else value

    outputs: str | None = Field(
        None,
        max_length=400,
        description="Several outputs from one model call, answered as one ZIP (entries <effect>.<ext>): a "
        "comma-separated list of effect or effect:format, e.g. rgba,white:jpeg,mask (format: the `format` "
        "parameter). `effect` is then ignored; every other parameter applies to each output.",
    )

    @field_validator("color")
    @classmethod
    def _color_parses(cls, value: str) -> str:
        parse_color(value)
        return value

    @model_validator(mode="after")
    def _outputs_parse(self) -> RemoveParams:
        if self.outputs is not None:
            parse_outputs(self.outputs, self.format)
        return self

    @property
    def rgba(self) -> RGBA:
        return parse_color(self.color)

    @property
    def requested(self) -> list[OutputSpec]:
        """What to send back: the ``outputs`` list, or the one ``effect`` in ``format``."""
        if self.outputs is None:
            return [OutputSpec(self.effect, self.format)]
        return parse_outputs(self.outputs, self.format)

    @property
    def needs_background(self) -> bool:
        return any(spec.effect == Effect.BACKGROUND for spec in self.requested)


class BatchingConfig(BaseModel):
    """A tier deployment's ``user_config``. Set under the config file's ``deployments: [{name: <tier>,
    user_config: {...}}]``, a change is applied to the running replicas by ``serve deploy`` without reloading the
    model (a change under ``args`` changes the app's code version, and Serve restarts every replica)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1, le=256, description="Most requests that share one model call.")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, le=10.0, description="How long the first request of a batch waits for others to join."
    )


# Serve's deployment options that the builder sets unless a `deployment:` mapping says otherwise.
# Admission is sized from the tiers outwards (docs/operations.md, "Admission and backpressure"): a tier holds
# max_ongoing_requests per replica plus max_queued_requests waiting at each caller, and answers 503 beyond; each
# ingress replica admits that much for every tier plus UPLOAD_HEADROOM image requests, and keeps CONTROL_HEADROOM
# more slots that only /healthz, /readyz, /v1/tiers and the docs can use.
TIER_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "num_replicas": 1,
    "max_ongoing_requests": 32,  # per replica; at least max_batch_size, or batches are never full
    "max_queued_requests": 64,  # waiting for a replica beyond this: 503 with Retry-After
    "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0.0},  # torch still uses every core (cpu_threads)
}
INGRESS_DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "num_replicas": 1,
    # max_ongoing_requests: computed from the tiers (AppConfig.ingress_deployment_options) unless set.
    "max_queued_requests": 128,  # requests the proxy holds for a busy ingress; beyond, the proxy answers 503
    "backpressure_config": {"retry_after_s": 2},  # ... with Retry-After (Serve sends none unless told)
    "ray_actor_options": {"num_cpus": 1.0},  # also sizes the ingress's pool for decode, effects and encode
}
# A stopping replica finishes what it holds up to its deadline plus this margin (its effect and encode once the
# model answers), and at most MAX_DEFAULT_SHUTDOWN_S: on a small box the new replica of an update cannot be placed
# until the old one has stopped, so a longer drain is that long an outage.
SHUTDOWN_MARGIN_S = 10.0
MAX_DEFAULT_SHUTDOWN_S = 120.0


def default_shutdown_s(deadline_s: float) -> float:
    return min(deadline_s + SHUTDOWN_MARGIN_S, MAX_DEFAULT_SHUTDOWN_S)


UPLOAD_HEADROOM = 32  # image requests an ingress replica admits beyond what its tiers hold: uploads being read
CONTROL_HEADROOM = 32  # ingress slots that image requests never take: health checks and listings always get in
# Set by the builder from other settings: a tier's deployment is named after the tier, its user_config is
# `batching`.
_BUILDER_OWNED = ("name", "user_config")
# Serve options that used to be fields of their own, with where they live now.
_MOVED_TO_DEPLOYMENT = {
    "num_replicas": "deployment: {num_replicas: ...}",
    "max_ongoing_requests": "deployment: {max_ongoing_requests: ...}",
    "max_queued_requests": "deployment: {max_queued_requests: ...}",
    "num_cpus": "deployment: {ray_actor_options: {num_cpus: ...}}",
    "num_gpus": "deployment: {ray_actor_options: {num_gpus: ...}}",
}

DEPLOYMENT_DESCRIPTION = (
    "Serve deployment options, as Serve documents them (num_replicas, autoscaling_config, max_ongoing_requests, "
    "max_queued_requests, health_check_period_s, health_check_timeout_s, graceful_shutdown_timeout_s, "
    "ray_actor_options, ...), merged over the defaults; ray_actor_options is merged key by key."
)


def merge_options(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` over ``defaults``, nested mappings merged key by key. With an ``autoscaling_config`` and no
    ``num_replicas`` of its own, the default replica count is left out (Serve refuses both)."""
    merged = copy.deepcopy(defaults)
    if "autoscaling_config" in overrides and "num_replicas" not in overrides:
        merged.pop("num_replicas", None)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _DeploymentOptions(BaseModel):
    """A config section with a ``deployment:`` mapping of Serve options over ``DEFAULTS``."""

    model_config = ConfigDict(extra="forbid")
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    deployment: dict[str, Any] = Field(default_factory=dict, description=DEPLOYMENT_DESCRIPTION)

    @model_validator(mode="before")
    @classmethod
    def _serve_options_moved(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = [f"{key} (now {_MOVED_TO_DEPLOYMENT[key]})" for key in _MOVED_TO_DEPLOYMENT if key in data]
            if moved:
                raise ValueError(f"Serve's options go under `deployment:`: {'; '.join(moved)}")
        return data

    @field_validator("deployment")
    @classmethod
    def _builder_owned_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = [key for key in _BUILDER_OWNED if key in value]
        if owned:
            raise ValueError(
                f"{', '.join(owned)}: set by the builder (deployments are named ingress and after their tiers; a "
                f"tier's user_config is its `batching`, changed live under the config file's `deployments:`)"
            )
        return value

    def deployment_options(self) -> dict[str, Any]:
        """The Serve options this deployment is built with: ``deployment`` merged over the defaults."""
        return merge_options(self.DEFAULTS, self.deployment)

    @property
    def num_cpus(self) -> float:
        return float(self._actor_options().get("num_cpus", 1.0))  # Ray's default for an actor

    @property
    def num_gpus(self) -> float:
        return float(self._actor_options().get("num_gpus", 0.0))

    def _actor_options(self) -> dict[str, Any]:
        return self.deployment_options().get("ray_actor_options") or {}

    @property
    def max_ongoing_requests(self) -> int:
        return int(self.deployment_options().get("max_ongoing_requests", 5))  # Serve's own default

    @property
    def most_replicas(self) -> int:
        options = self.deployment_options()
        autoscaling = options.get("autoscaling_config") or {}
        if "max_replicas" in autoscaling:
            return int(autoscaling["max_replicas"])
        replicas = options.get("num_replicas", 1)
        return replicas if isinstance(replicas, int) else 1

    @property
    def capacity(self) -> int | None:
        """Requests one caller can have at this deployment before Serve answers 503: max_ongoing_requests on each
        replica (at most) plus the caller's own queue. None when the queue is unbounded (max_queued_requests -1)."""
        queued = int(self.deployment_options().get("max_queued_requests", -1))
        return None if queued < 0 else self.most_replicas * self.max_ongoing_requests + queued


class TierConfig(_DeploymentOptions):
    """One tier's settings in the builder's ``args.tiers``."""

    DEFAULTS: ClassVar[dict[str, Any]] = TIER_DEPLOYMENT_DEFAULTS

    weights: str = Field(
        "auto",
        description="auto (cache dir, then download), untrained (seeded random: smoke runs and benchmarks only), "
        "or a checkpoint path (absolute or relative to weights_dir) loaded without the published checksum.",
    )
    allow_download: bool = Field(True, description="Download a missing checkpoint; off: fail with what to do.")
    runtime: RuntimeChoice = Field("eager", description="How the model runs; see the README's Runtimes.")
    cudnn_benchmark: bool = Field(True, description="CUDA: cuDNN autotuning per input shape.")
    allow_tf32: bool = Field(False, description="CUDA: TF32 matmuls (faster on Ampere+, not bit-comparable to fp32).")
    onnx_providers: list[str] | None = Field(
        None, description="onnx runtime: execution providers in order; default TensorRT, CUDA, CPU as present."
    )
    device: Device = Field(Device.AUTO, description="auto: cuda when the tier asks for a GPU share, else cpu.")
    base_size: int | None = Field(
        None, ge=32, multiple_of=32, description="Override the catalogue's model size (small sizes are for tests)."
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Batching at start; a `user_config` for the tier under `deployments:` overrides it, live.",
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU; default all cores (Ray would set 1 for a fractional CPU)."
    )
    warmup: bool = Field(True, description="Run one batch at start so the first request pays no warm-up.")
    deadline_s: float = Field(
        60.0,
        gt=0,
        description="Most time a request may spend waiting for and in this tier's model; past it: 504 "
        "deadline_exceeded, and the model skips it if it has not started it. No client header lifts it.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TierConfig:
        # Batch size against max_ongoing_requests is checked by deployments/preflight.py, on the values in force: a
        # config file's `deployments:` list may override either one, and the builder never sees that list.
        if self.device == Device.CUDA and self.num_gpus == 0:
            raise ValueError(
                "device: cuda needs a GPU share (deployment: {ray_actor_options: {num_gpus: ...}}): Ray hides GPUs "
                "from replicas that reserve none"
            )
        return self

    def deployment_options(self) -> dict[str, Any]:
        """As the base's, and a stopping replica finishes the images it holds, up to their deadline (capped)."""
        options = super().deployment_options()
        options.setdefault("graceful_shutdown_timeout_s", default_shutdown_s(self.deadline_s))
        return options

    @property
    def resolved_device(self) -> str:
        """``cuda`` when the tier runs on a GPU (asked for explicitly, or by a GPU share), else ``cpu``."""
        gpu = self.device == Device.CUDA or (self.device == Device.AUTO and self.num_gpus > 0)
        return "cuda" if gpu else "cpu"


def _all_tiers() -> dict[Tier, TierConfig]:
    return {tier: TierConfig() for tier in Tier}


class IngressConfig(_DeploymentOptions):
    """The HTTP ingress deployment: decode, resize, effects and encode run here, on CPU."""

    DEFAULTS: ClassVar[dict[str, Any]] = INGRESS_DEPLOYMENT_DEFAULTS

    max_image_requests: int | None = Field(
        None,
        ge=1,
        description="Image requests (POST /v1/remove) in flight per ingress replica, uploads included; beyond it: "
        "503 overloaded at once. Default: what the tiers hold (replicas x max_ongoing_requests + "
        f"max_queued_requests, summed) plus {UPLOAD_HEADROOM}.",
    )

    max_decoded_megapixels: float = Field(
        400.0,
        gt=0,
        description="Decoded images (uploads and backgrounds, 3 bytes a pixel; 4 for one with transparency) an "
        "ingress replica holds at once, "
        "from decode to answer; the request that would go over gets 503 overloaded (one image always fits).",
    )

    mask_cache_mb: float = Field(
        256.0,
        ge=0,
        description="Memory for the model's masks of recent uploads, per ingress replica: a repeat of an image "
        "(another effect, colour, background or crop) does no inference. 0 turns the cache off.",
    )

    @property
    def cpu_workers(self) -> int:
        """Threads for the ingress's CPU work (decode, resize, upsample, effects, encode): its CPU share, at
        least one. More would only contend for the cores Ray gave it, and hold more full-size images at once."""
        return max(1, math.ceil(self.num_cpus))


class AccessConfig(BaseModel):
    """Who may call the service: API keys (off unless a source is set) and browser origins (CORS)."""

    model_config = ConfigDict(extra="forbid")

    api_keys_env: str | None = Field(
        None, description="Environment variable of the ingress holding API keys, comma-separated (runtime_env)."
    )
    api_keys_file: Path | None = Field(
        None, description="File with one API key a line; read again when it changes (rotate keys without a restart)."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins a browser page may call the API from (CORS); none by default."
    )


class AppConfig(BaseModel):
    """The application builder's ``args`` in ``serve_config.yaml``."""

    model_config = ConfigDict(extra="forbid")

    weights_dir: Path | None = Field(
        None, description="Checkpoint cache; default $BGSERVE_WEIGHTS_DIR, else ~/.cache/bgserve/weights."
    )
    tiers: dict[Tier, TierConfig] = Field(
        default_factory=_all_tiers, description="The tiers to serve; a tier left out is not deployed."
    )
    default_tier: Tier = Field(Tier.BALANCED, description="The tier of a request that names none.")
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)
    max_upload_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="A request body over this gets 413: the whole body, as a proxy's body limit counts it (the "
        "image, a background image with it, and the form's fields together).",
    )
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        le=Image.MAX_IMAGE_PIXELS,  # Pillow refuses to decode more (its decompression-bomb guard): 89,478,485
        description="Larger images (width x height) get 413.",
    )
    upload_stall_s: float = Field(
        10.0, gt=0, description="An upload that pauses longer than this between two parts gets 408."
    )
    upload_min_bytes_per_s: int = Field(
        16 * 1024,
        ge=0,
        description="After upload_stall_s, an upload arriving slower than this on average gets 408 (0: no minimum).",
    )

    @model_validator(mode="after")
    def _health_checks_keep_a_slot(self) -> AppConfig:
        ongoing = self.ingress.deployment.get("max_ongoing_requests")
        if ongoing is not None and int(ongoing) <= self.image_request_limit():
            raise ValueError(
                f"ingress max_ongoing_requests ({ongoing}) must exceed the image requests it admits "
                f"({self.image_request_limit()}, ingress.max_image_requests), or uploads can starve /healthz; "
                f"leave it out to get {self.image_request_limit() + CONTROL_HEADROOM}"
            )
        return self

    def image_request_limit(self) -> int:
        """Image requests one ingress replica admits: ``ingress.max_image_requests``, else every tier's capacity
        plus UPLOAD_HEADROOM, so that a full tier answers its own 503 before the ingress refuses anything."""
        if self.ingress.max_image_requests is not None:
            return self.ingress.max_image_requests
        held = 0
        for tier in self.tiers.values():  # an unbounded tier queue counts its replicas' slots only
            held += tier.capacity if tier.capacity is not None else tier.most_replicas * tier.max_ongoing_requests
        return held + UPLOAD_HEADROOM

    def ingress_deployment_options(self) -> dict[str, Any]:
        """The ingress's Serve options; ``max_ongoing_requests``, unless set, keeps CONTROL_HEADROOM slots above the
        image requests it admits."""
        options = self.ingress.deployment_options()
        options.setdefault("max_ongoing_requests", self.image_request_limit() + CONTROL_HEADROOM)
        # An update or scale-down stops a replica gracefully: it finishes the requests it holds, each up to its
        # tier's deadline (Serve's default, 20 s, cut off a 60 s request it had accepted with a 503).
        longest = max(tier.deadline_s for tier in self.tiers.values())
        options.setdefault("graceful_shutdown_timeout_s", default_shutdown_s(longest))
        return options

    def served_tiers(self, weights_dir: Path) -> dict[Tier, ServedTier]:
        """The served tiers in catalogue order (fast, balanced, quality), whatever order the config lists them."""
        return {
            tier: ServedTier(tier=tier, config=self.tiers[tier], weights_dir=weights_dir)
            for tier in Tier
            if tier in self.tiers
        }

    @model_validator(mode="after")
    def _default_tier_served(self) -> AppConfig:
        if not self.tiers:
            raise ValueError("tiers: serve at least one tier")
        if self.default_tier not in self.tiers:
            raise ValueError(
                f"default_tier {self.default_tier.value!r} is not among the served tiers: set default_tier to one"
            )
        return self


class ServedTier(BaseModel):
    """One tier as this application serves it: its catalogue entry, its settings, where its weights live.
    The model deployment is built with it; the ingress reads its resize policy, size and weights label."""

    tier: Tier
    config: TierConfig
    weights_dir: Path

    @property
    def spec(self) -> ModelSpec:
        return CATALOGUE[self.tier]

    @property
    def base_size(self) -> int:
        return self.config.base_size or self.spec.base_size

    @property
    def resize(self) -> ResizePolicy:
        return self.spec.resize

    @property
    def weights_label(self) -> str:
        """What X-Weights and /v1/tiers report: the one source of it."""
        return weights_label(self.spec.checkpoint, self.config.weights)

    def weights_identity(self) -> str:
        """What cached masks and ETags are keyed by (``serve_app/weights.py``)."""
        return weights_identity(self.spec.checkpoint, self.config.weights, self.weights_dir)

    @property
    def input_size(self) -> str:
        resize = self.resize
        if isinstance(resize, DynamicResize):
            return (
                f"dynamic (shorter side <= {resize.max_short_side}, longer side <= {resize.max_long_side}, "
                f"multiples of {resize.multiple})"
            )
        return f"{self.base_size}x{self.base_size}"

    def runtime_settings(self, weights: ResolvedWeights) -> RuntimeSettings:
        """What this tier's runtime is built with (the service and the benchmarks alike)."""
        config = self.config
        return RuntimeSettings(
            weights=weights,
            base_size=self.base_size,
            device=config.resolved_device,
            cpu_threads=config.cpu_threads,
            static_size=isinstance(self.resize, StaticResize),
            export_dir=self.weights_dir / EXPORT_DIR,
            converted_dir=self.weights_dir / CONVERTED_DIR,
            export_command=export_command(self.tier, config.weights, self.weights_dir, self.base_size),
            onnx_providers=tuple(config.onnx_providers) if config.onnx_providers else None,
            cudnn_benchmark=config.cudnn_benchmark,
            allow_tf32=config.allow_tf32,
        )


def gpu_missing_message(gpu_shares: dict[str, float]) -> str:
    """Why GPU tiers never start on a cluster without GPUs, and what to do (Ray itself stays silent)."""
    tiers = ", ".join(f"{name} (num_gpus={share})" for name, share in gpu_shares.items())
    return (
        f"tiers {tiers} ask for a GPU share but the Ray cluster has no GPU, so their replicas cannot be scheduled "
        f"and would wait forever. Serve a CPU config (configs/cpu.yaml) or add a GPU node."
    )


class StartupProgress(BaseModel):
    """Where a tier replica is in its start-up (``serve_app/startup.py`` names the phases)."""

    phase: str = Field(description="resolving weights, downloading, verifying, loading, warming up, ready, or failed")
    detail: str = Field("", description="e.g. '42% of 367 MB at 12.3 MB/s', the runtime and device, or why it failed")
    fraction: float | None = Field(None, description="Share of the phase done, where known (downloads).")
    seconds: float = Field(
        description="Seconds since the replica began starting, counting on while it starts; once ready or failed, "
        "how long its start-up took."
    )
    seconds_ago: float | None = Field(None, description="Seconds since the replica sent this report.")


class TierInfo(BaseModel):
    """One entry of ``GET /v1/tiers``."""

    tier: Tier
    checkpoint: str
    weights: str | None = Field(description="Checkpoint the replicas loaded (untrained when so configured).")
    input_size: str = Field(description="Model input: NxN for static tiers, 'dynamic (...)' for quality.")
    runtime: str
    device: Device
    ready: bool
    status: str
    message: str = ""
    startup: StartupProgress | None = Field(
        None, description="The latest start-up report of a replica of this tier (absent until one reports)."
    )
    default: bool = Field(False, description="Whether a request that names no tier gets this one.")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class MaskResult:
    """One image's result, from the runtime's batch to the HTTP response: the mask at the model's resolution
    and the model call it came from. Which weights made it is the ingress's to know (``ServedTier``)."""

    mask: Annotated[np.ndarray, "float32 HxW in [0, 1] at the model's input size"]
    batch_size: int  # images in the model call it ran in
    model_seconds: float  # that call's duration
    runtime: str = ""  # the runtime that ran it (what `auto` chose, too)
