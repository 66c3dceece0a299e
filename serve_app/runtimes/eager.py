"""PyTorch runtimes: eager fp32 (the reference every other runtime is held to) and the variants that change how
the same model is prepared or run: bf16 / fp16 autocast, INT8 dynamic quantisation, TorchScript, torch.compile.

Each keeps ImageNet normalisation in and the sigmoid + per-sample min-max out in fp32; only the network itself
runs differently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch

from serve_app.errors import ConfigurationError
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.model import LogitsModel, PinnedStaging, load_model, normalise_per_sample, to_model_tensor

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], torch.Tensor]


class EagerRuntime(Runtime):
    """Eager PyTorch in fp32."""

    name = "eager"

    def load(self) -> None:
        inspyrenet = load_model(self.settings.weights, self.settings.base_size).to(self.device)
        model = LogitsModel(inspyrenet).eval()
        self.model = model
        self.staging = PinnedStaging()
        self.forward: Forward = self.prepare(model)

    def prepare(self, model: LogitsModel) -> Forward:
        """Turn the loaded fp32 model into the callable this runtime runs (identity for eager)."""
        return model

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """The numeric context the network runs in (none for eager)."""
        yield

    def _predict(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = to_model_tensor(images, self.device, self.staging)
            with self.precision():
                logits = self.forward(x)
            return normalise_per_sample(logits)[:, 0].cpu().numpy()


def native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: AVX-512 BF16 or AMX on CPU, Ampere or later on CUDA. Without it PyTorch
    emulates bf16, about 80x slower than fp32 (measured on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


class BF16Runtime(EagerRuntime):
    """bfloat16 autocast on CPU (AVX-512 BF16 / AMX) or CUDA (Ampere and later)."""

    name = "bf16"

    def load(self) -> None:
        if not native_bf16(self.device):
            raise ConfigurationError(
                f"{self.device} has no bf16 arithmetic (AVX-512 BF16 or AMX on CPU): bf16 would be emulated, about "
                f"80x slower than fp32. Use eager, int8 or onnx here (or auto)."
            )
        super().load()

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            yield


class FP16Runtime(EagerRuntime):
    """float16 autocast, CUDA only (CPU float16 kernels are slow or missing: use bf16 there)."""

    name = "fp16"

    def load(self) -> None:
        if self.device.type != "cuda":
            raise ConfigurationError("fp16 runs on CUDA only; on CPU use bf16 or int8")
        super().load()

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        with torch.autocast("cuda", dtype=torch.float16):
            yield


class Int8Runtime(EagerRuntime):
    """INT8 dynamic quantisation of every ``nn.Linear`` (most of the Swin backbone), CPU only."""

    name = "int8"

    def prepare(self, model: LogitsModel) -> Forward:
        if self.device.type != "cpu":
            raise ConfigurationError("int8 (dynamic quantisation) runs on CPU only")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization points to torchao
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class TorchScriptRuntime(EagerRuntime):
    """``torch.jit.trace``. A trace bakes in the sizes it saw (Swin's window_reverse would bake in the batch size
    without the integer patch in model.py), so there is one trace per input shape, made on first use (seconds) and
    kept: no size is ever run through a trace made for another. A tier
    whose input size varies (quality), or a trace that fails, runs eager instead and the log says why."""

    name = "torchscript"

    def prepare(self, model: LogitsModel) -> Forward:
        if not self.settings.static_size:
            logger.warning("torchscript: the input size of this tier varies, and a trace fixes it; running eager")
            return model
        traces: dict[tuple[int, ...], Forward] = {}
        lock = threading.Lock()

        def forward(x: torch.Tensor) -> torch.Tensor:
            shape = tuple(x.shape)
            with lock:
                if shape not in traces:
                    traces[shape] = self._trace(model, x)
            return traces[shape](x)

        return forward

    @staticmethod
    def _trace(model: LogitsModel, example: torch.Tensor) -> Forward:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about Python values becoming constants: intended
                return torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:  # a failed trace must not take the tier down: eager is always right
            logger.warning(
                "torchscript: tracing %s failed (%s: %s); eager for it", tuple(example.shape), type(exc).__name__, exc
            )
            return model


class CompileRuntime(EagerRuntime):
    """``torch.compile`` (inductor). The first call of each input shape compiles, minutes on a few CPU cores:
    warm-up pays it at start for the tier's size."""

    name = "compile"

    def prepare(self, model: LogitsModel) -> Forward:
        return torch.compile(model, dynamic=not self.settings.static_size)
