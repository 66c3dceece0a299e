"""Typed request, response and configuration models, with every default in one place.

``AppConfig`` is what ``serve_config.yaml`` passes as ``args`` to the application builder; ``TierConfig`` is one
tier's part of it; ``BatchingConfig`` is the tier deployment's ``user_config`` (changed live, no redeploy);
``RemoveParams`` are the query parameters of ``POST /v1/remove``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
from PIL import ImageColor
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.tiers import CATALOGUE, DynamicResize, Tier, TierSpec
from serve_app.weights import weights_label


class Effect(str, Enum):
    RGBA = "rgba"  # the cut-out with a transparent background
    MASK = "mask"  # the alpha matte as a grey image
    COLOR = "color"  # the cut-out on a solid colour
    BLUR = "blur"  # the cut-out on its own background, blurred


class OutputFormat(str, Enum):
    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"


class RuntimeName(str, Enum):
    EAGER = "eager"  # PyTorch fp32: the reference
    TORCHSCRIPT = "torchscript"  # traced at the tier's size (the quality tier runs eager)
    ONNX = "onnx"  # ONNX Runtime on an export from `python -m serve_app.export`
    ONNX_INT8 = "onnx_int8"  # CPU only: the same export with INT8 MatMul weights, quantised at first load
    FP16 = "fp16"  # CUDA only
    BF16 = "bf16"
    INT8 = "int8"  # CPU only: dynamic quantisation of the Linear layers
    COMPILE = "compile"  # torch.compile; minutes of compiling at start on CPU
    AUTO = "auto"  # the fastest one that held parity here, from bench/runtimes.py's recorded measurements


class Device(str, Enum):
    AUTO = "auto"  # cuda when the tier asks for a GPU share, else cpu
    CPU = "cpu"
    CUDA = "cuda"


RGB = tuple[int, int, int]


def parse_color(value: str) -> RGB:
    """``#00ff00``, ``00ff00``, ``#0f0``, a CSS name like ``white``, or ``r,g,b`` with each 0..255."""
    text = value.strip()
    if "," in text:
        parts = text.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(f"color {value!r}: expected r,g,b with each 0..255")
        r, g, b = (int(p) for p in parts)
        return r, g, b
    if len(text) in (3, 6) and all(c in "0123456789abcdefABCDEF" for c in text):
        text = "#" + text  # '#' must be sent as %23 in a URL, so accept hex without it
    try:
        r, g, b, *_ = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(f"color {value!r}: expected #rrggbb, #rgb, a colour name or r,g,b") from None
    return r, g, b


class RemoveParams(BaseModel):
    """Query parameters of ``POST /v1/remove``."""

    model_config = ConfigDict(extra="forbid")

    tier: Tier | None = Field(None, description="fast, balanced or quality; default: the service's default_tier.")
    effect: Effect = Field(Effect.RGBA, description="What to return: rgba cut-out, mask, color or blur background.")
    color: str = Field("#ffffff", description="Background for effect=color: #rrggbb (send # as %23), rrggbb, r,g,b.")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Hard mask: alpha = 1 where above, else 0.")
    reverse: bool = Field(False, description="Swap subject and background (keep the background, remove the subject).")
    format: OutputFormat = Field(OutputFormat.PNG, description="png, webp or jpeg (rgba as jpeg is put on white).")

    @field_validator("color")
    @classmethod
    def _color_parses(cls, value: str) -> str:
        parse_color(value)
        return value

    @property
    def rgb(self) -> RGB:
        return parse_color(self.color)


class BatchingConfig(BaseModel):
    """A tier deployment's ``user_config``. Set under the config file's ``deployments: [{name: <tier>,
    user_config: {...}}]``, a change is applied to the running replicas by ``serve deploy`` without reloading the
    model (a change under ``args`` changes the app's code version, and Serve restarts every replica)."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(4, ge=1, le=256, description="Most requests that share one model call.")
    batch_wait_timeout_s: float = Field(
        0.02, ge=0.0, le=10.0, description="How long the first request of a batch waits for others to join."
    )


class TierConfig(BaseModel):
    """One tier's settings in the builder's ``args.tiers``."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(
        "auto",
        description="auto (cache dir, then download), untrained (seeded random: smoke runs and benchmarks only), "
        "or a checkpoint path (absolute or relative to weights_dir) loaded without the published checksum.",
    )
    allow_download: bool = Field(True, description="Download a missing checkpoint; off: fail with what to do.")
    runtime: RuntimeName = Field(RuntimeName.EAGER, description="How the model runs; see docs/benchmarks.md.")
    cudnn_benchmark: bool = Field(True, description="CUDA: cuDNN autotuning per input shape.")
    allow_tf32: bool = Field(False, description="CUDA: TF32 matmuls (faster on Ampere+, not bit-comparable to fp32).")
    onnx_providers: list[str] | None = Field(
        None, description="onnx runtime: execution providers in order; default TensorRT, CUDA, CPU as present."
    )
    device: Device = Device.AUTO
    base_size: int | None = Field(
        None, ge=32, multiple_of=32, description="Override the catalogue's model size (small sizes are for tests)."
    )
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        description="Batching at start; a `user_config` for the tier under `deployments:` overrides it, live.",
    )
    max_ongoing_requests: int = Field(32, ge=1, description="Per replica; at least max_batch_size for full batches.")
    max_queued_requests: int = Field(
        256, ge=-1, description="Requests waiting for a replica beyond which the tier answers 503 (-1: no limit)."
    )
    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.25, ge=0.0, description="Ray CPU share per replica (scheduling only).")
    num_gpus: float = Field(0.0, ge=0.0, le=1.0, description="GPU share per replica; > 0 runs the model on CUDA.")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on CPU; default all cores (Ray would set 1 for a fractional CPU)."
    )
    warmup: bool = Field(True, description="Run one batch at start so the first request pays no warm-up.")

    @model_validator(mode="after")
    def _consistent(self) -> TierConfig:
        if self.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) < batching.max_batch_size "
                f"({self.batching.max_batch_size}): Serve would never send a full batch"
            )
        if self.device == Device.CUDA and self.num_gpus == 0:
            raise ValueError("device: cuda needs num_gpus > 0 (Ray hides GPUs from replicas that reserve none)")
        return self

    @property
    def resolved_device(self) -> str:
        """``cuda`` when the tier runs on a GPU (asked for explicitly, or by a GPU share), else ``cpu``."""
        gpu = self.device == Device.CUDA or (self.device == Device.AUTO and self.num_gpus > 0)
        return "cuda" if gpu else "cpu"


def _all_tiers() -> dict[Tier, TierConfig]:
    return {tier: TierConfig() for tier in Tier}


class IngressConfig(BaseModel):
    """The HTTP ingress deployment: decode, resize, effects and encode run here, on CPU."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0.0)
    max_ongoing_requests: int = Field(64, ge=1, description="Requests in flight per replica (they wait for tiers).")


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
    max_upload_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Larger uploads get 413.")
    max_image_pixels: int = Field(50_000_000, ge=1, description="Larger images (width x height) get 413.")

    def tier_args(self, weights_dir: Path) -> dict[Tier, TierModelArgs]:
        """The served tiers in catalogue order (fast, balanced, quality), whatever order the config lists them."""
        return {
            tier: TierModelArgs(tier=tier, config=self.tiers[tier], weights_dir=weights_dir)
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


class TierModelArgs(BaseModel):
    """What one tier deployment is built with: its catalogue entry, its settings, where weights live."""

    tier: Tier
    config: TierConfig
    weights_dir: Path

    @property
    def spec(self) -> TierSpec:
        return CATALOGUE[self.tier]

    @property
    def base_size(self) -> int:
        return self.config.base_size or self.spec.base_size

    @property
    def weights_label(self) -> str:
        return weights_label(self.spec.checkpoint, self.config.weights)

    @property
    def input_size(self) -> str:
        resize = self.spec.resize
        if isinstance(resize, DynamicResize):
            return (
                f"dynamic (shorter side <= {resize.max_short_side}, longer side <= {resize.max_long_side}, "
                f"multiples of {resize.multiple})"
            )
        return f"{self.base_size}x{self.base_size}"


def gpu_missing_message(gpu_shares: dict[str, float]) -> str:
    """Why GPU tiers never start on a cluster without GPUs, and what to do (Ray itself stays silent)."""
    tiers = ", ".join(f"{name} (num_gpus={share})" for name, share in gpu_shares.items())
    return (
        f"tiers {tiers} ask for a GPU share but the Ray cluster has no GPU, so their replicas cannot be scheduled "
        f"and would wait forever. Serve a CPU config (configs/cpu.yaml) or add a GPU node."
    )


class TierInfo(BaseModel):
    """One entry of ``GET /v1/tiers``."""

    tier: Tier
    checkpoint: str
    weights: str | None = Field(description="Checkpoint the replicas loaded (untrained when so configured).")
    input_size: str = Field(description="Model input: NxN for static tiers, 'dynamic (...)' for quality.")
    runtime: RuntimeName
    device: Device
    ready: bool
    status: str
    message: str = ""


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class MaskResult:
    """What a tier deployment sends back per request: the model-resolution mask and how it was made."""

    mask: Annotated[np.ndarray, "float32 HxW in [0, 1] at the model's input size"]
    batch_size: int
    weights: str
    model_seconds: float = 0.0  # the model call this mask came from
