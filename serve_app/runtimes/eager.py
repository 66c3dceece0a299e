"""Eager PyTorch in fp32: the reference every other runtime is held to."""

from __future__ import annotations

import numpy as np
import torch

from serve_app.runtimes.base import Runtime
from serve_app.runtimes.model import load_model, normalise_per_sample, saliency_logits, to_model_tensor


class EagerRuntime(Runtime):
    name = "eager"

    def load(self) -> None:
        self.model = load_model(self.settings.weights, self.settings.base_size).to(self.device)

    def _predict(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            masks = normalise_per_sample(saliency_logits(self.model, to_model_tensor(images, self.device)))
            return masks[:, 0].cpu().numpy()
