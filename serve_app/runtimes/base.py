"""The runtime protocol every model deployment drives: ``load``, ``warmup``, ``predict``, ``check_health``."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from serve_app.errors import DeviceUnavailableError
from serve_app.weights import ResolvedWeights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSettings:
    """Everything a runtime is built with. Made in one place, ``ServedTier.runtime_settings`` (the service and
    the benchmarks alike); tests build it directly."""

    weights: ResolvedWeights
    base_size: int
    device: str  # "cpu" or "cuda[:N]"
    cpu_threads: int | None = None
    static_size: bool = True  # every input is base_size x base_size (false for the quality tier)
    export_dir: Path | None = None  # where ONNX exports live (the onnx runtimes)
    export_command: str | None = None  # what to run when the export is missing or stale
    converted_dir: Path | None = None  # where the openvino runtime keeps the model it converts at first start
    onnx_providers: tuple[str, ...] | None = None  # None: the best present for the device
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest kernels per shape (static tiers benefit)
    allow_tf32: bool = False  # TF32 matmuls on Ampere+: faster, but fp32 runtimes then drift from eager fp32


class Runtime(ABC):
    """One way of running InSPyReNet on a batch. A batch in (NxHxWx3 uint8, all the same size), a batch of
    masks out (NxHxW float32 in [0, 1]), each exactly what that image gives alone.

    A subclass names itself and says what it is; the registry (``serve_app.runtimes``), the config's choices,
    the parity rule and the README's runtime table all read these attributes."""

    name: ClassVar[str]
    exact: ClassVar[bool]  # fp32 throughout: held to eager within EXACT_MAX_ABS, else to the reduced bound
    summary: ClassVar[str]  # one line for the docs' table
    devices: ClassVar[str]  # where it runs, for the docs' table
    # Specialises on the input shape it first sees (a trace, a compiled graph, a model converted for one size): the
    # replica warms it up at the tier's real size, never at a smaller one.
    shape_specialised: ClassVar[bool] = False

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.cpu_threads = settings.cpu_threads or os.cpu_count() or 1
        if self.device.type == "cuda":  # process-wide switches; one tier per replica process, so per tier
            torch.backends.cudnn.benchmark = settings.cudnn_benchmark
            torch.backends.cuda.matmul.allow_tf32 = settings.allow_tf32
            torch.backends.cudnn.allow_tf32 = settings.allow_tf32

    @abstractmethod
    def load(self) -> None:
        """Build the model and load its weights onto the device."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 → NxHxW float32 masks at the same size. Callable from any thread."""
        if self.device.type == "cpu":
            # Per call, in the calling thread: under Ray (OMP_NUM_THREADS=1 for fractional CPUs) a worker thread
            # otherwise runs torch's CPU kernels on one core, ~1.9x slower on 2 cores, whatever the main thread set.
            torch.set_num_threads(self.cpu_threads)
        return self._predict(images)

    @abstractmethod
    def _predict(self, images: np.ndarray) -> np.ndarray:
        """The runtime's own inference on a same-sized batch."""

    def warmup(self, batch_size: int, height: int, width: int) -> None:
        """Run one real batch so allocator, kernels and caches are ready before the first request."""
        rng = np.random.default_rng(0)
        self.predict(rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8))

    def check_health(self) -> None:
        """Touch the device; raises if it is gone (a lost or wedged GPU). Serve replaces a replica that fails."""
        probe = torch.ones(1, device=self.device) + 1  # a kernel launch, and a copy back below
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if float(probe.item()) != 2.0:
            raise RuntimeError(f"device {self.device} computed 1 + 1 = {float(probe.item())}")


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"this tier is set to run on {name}, but torch sees no CUDA device here "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Use a CPU config "
            f"(configs/cpu.yaml), or set the tier's device: cpu and leave num_gpus out of its deployment options."
        )
    return device
