"""Reduced-precision runtimes: bf16 and fp16 autocast, INT8 dynamic quantisation. Held to eager fp32 by the
reduced bound (``parity.py``): one grey level on average and the same thresholded mask."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import ClassVar

import torch

from serve_app.errors import ConfigurationError
from serve_app.runtimes.eager import EagerRuntime, Forward
from serve_app.runtimes.inspyrenet import LogitsModel


def native_bf16(device: torch.device) -> bool:
    """bf16 arithmetic in hardware: AVX-512 BF16 or AMX on CPU, Ampere or later on CUDA. Without it PyTorch
    emulates bf16, about 80x slower than fp32 (measured on an AVX2-only EPYC)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def require_native_bf16(device: torch.device, runtime: str, instead: str) -> None:
    """Refuse a bf16 runtime where the hardware would emulate it: a config error at load, not a service 80x slower."""
    if not native_bf16(device):
        raise ConfigurationError(
            f"{runtime}: {device} has no bf16 arithmetic (AVX-512 BF16 or AMX on CPU): bf16 would be emulated, "
            f"about 80x slower than fp32. Use {instead} here."
        )


class AutocastRuntime(EagerRuntime):
    """The eager network under ``torch.autocast`` at ``dtype``; normalisation in and out stays fp32."""

    dtype: ClassVar[torch.dtype]

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield


class BF16Runtime(AutocastRuntime):
    name = "bf16"
    dtype = torch.bfloat16
    exact = False
    summary = "bfloat16 autocast; refused where the hardware would emulate it (~80x slower)"
    devices = "CPU with AVX-512 BF16/AMX, CUDA Ampere+"

    def load(self) -> None:
        require_native_bf16(self.device, self.name, "eager, openvino, onnx or int8 (or auto)")
        super().load()


class FP16Runtime(AutocastRuntime):
    """CPU float16 kernels are slow or missing: bf16 is the CPU's reduced precision."""

    name = "fp16"
    dtype = torch.float16
    exact = False
    summary = "float16 autocast"
    devices = "CUDA"

    def load(self) -> None:
        if self.device.type != "cuda":
            raise ConfigurationError("fp16 runs on CUDA only; on CPU use bf16 or int8")
        super().load()


class Int8Runtime(EagerRuntime):
    name = "int8"
    exact = False
    summary = "dynamic INT8 quantisation of the Swin backbone's Linear layers"
    devices = "CPU"

    def build_forward(self, model: LogitsModel) -> Forward:
        if self.device.type != "cpu":
            raise ConfigurationError("int8 (dynamic quantisation) runs on CPU only")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization points to torchao
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
