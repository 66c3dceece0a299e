"""Model runtimes behind one small registry: a tier names its runtime, ``create_runtime`` builds it."""

from __future__ import annotations

from serve_app.errors import UnknownRuntimeError
from serve_app.runtimes.base import Runtime, RuntimeSettings
from serve_app.runtimes.eager import (
    BF16Runtime,
    CompileRuntime,
    EagerRuntime,
    FP16Runtime,
    Int8Runtime,
    TorchScriptRuntime,
)
from serve_app.runtimes.onnx import OnnxInt8Runtime, OnnxRuntime

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (
        EagerRuntime,
        TorchScriptRuntime,
        OnnxRuntime,
        OnnxInt8Runtime,
        BF16Runtime,
        FP16Runtime,
        Int8Runtime,
        CompileRuntime,
    )
}


def create_runtime(name: str, settings: RuntimeSettings) -> Runtime:
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise UnknownRuntimeError(f"unknown runtime {name!r}; valid runtimes: {', '.join(sorted(RUNTIMES))}") from None
    return cls(settings)


__all__ = ["RUNTIMES", "Runtime", "RuntimeSettings", "create_runtime"]
