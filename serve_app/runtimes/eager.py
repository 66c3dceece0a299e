"""Eager PyTorch in fp32: the reference every other runtime is held to, and the base of the PyTorch variants
(``precision.py``, ``compiled.py``), which change only how the loaded network runs.

Each keeps ImageNet normalisation in and the sigmoid + per-sample min-max out in fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from serve_app.runtimes.base import Runtime
from serve_app.runtimes.inspyrenet import (
    LogitsModel,
    PinnedStaging,
    load_model,
    normalise_per_sample,
    to_model_tensor,
)

Forward = Callable[[torch.Tensor], torch.Tensor]


class EagerRuntime(Runtime):
    name = "eager"
    exact = True
    summary = "PyTorch fp32, the reference"
    devices = "CPU, CUDA"

    def load(self) -> None:
        inspyrenet = load_model(self.settings.weights, self.settings.base_size).to(self.device)
        model = LogitsModel(inspyrenet).eval()
        self.model = model
        self.staging = PinnedStaging()
        self.forward: Forward = self.build_forward(model)

    def build_forward(self, model: LogitsModel) -> Forward:
        """The callable this runtime runs, made from the loaded fp32 model (the model itself for eager)."""
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
