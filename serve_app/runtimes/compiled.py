"""Compiled fp32 runtimes: TorchScript traces and torch.compile. Same numbers as eager (the exact bound)."""

from __future__ import annotations

import logging
import threading
import warnings

import torch

from serve_app.runtimes.eager import EagerRuntime, Forward
from serve_app.runtimes.inspyrenet import LogitsModel

logger = logging.getLogger(__name__)


class TorchScriptRuntime(EagerRuntime):
    """``torch.jit.trace``. A trace bakes in the sizes it saw, so there is one trace per input shape, made on
    first use (seconds) and kept: no size is ever run through a trace made for another. A tier whose input size
    varies (quality), or a trace that fails, runs eager instead and the log says why."""

    name = "torchscript"
    shape_specialised = True
    exact = True
    summary = "`torch.jit.trace`, one trace per input shape (the quality tier runs eager)"
    devices = "CPU, CUDA"

    def build_forward(self, model: LogitsModel) -> Forward:
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
    """The first call of each input shape compiles, minutes on a few CPU cores: warm-up pays it at start for the
    tier's size."""

    name = "compile"
    shape_specialised = True
    exact = True
    summary = "`torch.compile` (inductor); minutes of compiling at start on CPU"
    devices = "CPU, CUDA"

    def build_forward(self, model: LogitsModel) -> Forward:
        return torch.compile(model, dynamic=not self.settings.static_size)
