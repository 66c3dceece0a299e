"""Building InSPyReNet_SwinB exactly as transparent-background's Remover does, and the steps around it that
every runtime shares: ImageNet normalisation in, per-sample sigmoid + min-max out."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from serve_app.errors import WeightsUnavailableError
from serve_app.weights import ResolvedWeights

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNTRAINED_SEED = 0


def _inspyrenet_class():
    with warnings.catch_warnings():
        # transparent_background/__init__ imports its GUI module, which warns when the optional `flet` is absent.
        warnings.filterwarnings("ignore", message="Failed to import flet", category=UserWarning)
        from transparent_background.backbones import SwinTransformer
        from transparent_background.InSPyReNet import InSPyReNet_SwinB
    SwinTransformer.window_reverse = _window_reverse  # looked up as a module global at every call
    SWIN_ORIGINALS.setdefault("BasicLayer.forward", SwinTransformer.BasicLayer.forward)
    SwinTransformer.BasicLayer.forward = _basic_layer_forward
    return InSPyReNet_SwinB


# What the patches below replace, kept for the tests that hold the two equal.
SWIN_ORIGINALS: dict[str, Callable[..., object]] = {}


def _window_reverse(windows: torch.Tensor, window_size: int, height: int, width: int) -> torch.Tensor:
    """SwinTransformer.window_reverse in integer arithmetic. The original computes the batch size as
    ``int(n / (H * W / ws / ws))``: a float round trip that tracing and ONNX export freeze into a constant, so a
    model traced or exported at batch 2 silently gives wrong masks at batch 4. Same values in eager."""
    batch = windows.shape[0] // ((height // window_size) * (width // window_size))
    x = windows.view(batch, height // window_size, width // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, height, width, -1)


def _shifted_window_mask(x: torch.Tensor, height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """The attention mask of Swin's shifted windows, as ``BasicLayer.forward`` builds it, with the padded size in
    integer arithmetic (``(n + w - 1) // w * w``) where the original has ``int(np.ceil(n / w)) * w``. Same values;
    but a trace follows integer arithmetic on sizes and not numpy's, so OpenVINO's conversion keeps the mask a
    function of the input size instead of freezing the example's, and one converted model takes any size."""
    padded_height = (height + window - 1) // window * window
    padded_width = (width + window - 1) // window * window
    regions = torch.zeros((1, padded_height, padded_width, 1), device=x.device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for number, (rows, columns) in enumerate((r, c) for r in bands for c in bands):
        regions[:, rows, columns, :] = number
    from transparent_background.backbones.SwinTransformer import window_partition

    windows = window_partition(regions, window).view(-1, window * window)
    mask = windows.unsqueeze(1) - windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def _basic_layer_forward(self: Any, x: torch.Tensor, height: int, width: int) -> tuple[Any, ...]:
    """SwinTransformer.BasicLayer.forward with its mask from ``_shifted_window_mask`` (gradient checkpointing, a
    training option, left out: these models only infer)."""
    mask = _shifted_window_mask(x, height, width, self.window_size, self.shift_size)
    for block in self.blocks:
        block.H, block.W = height, width
        x = block(x, mask)
    if self.downsample is None:
        return x, height, width, x, height, width
    return x, height, width, self.downsample(x, height, width), (height + 1) // 2, (width + 1) // 2


def build_model(base_size: int) -> torch.nn.Module:
    """A fresh ``InSPyReNet_SwinB`` as Remover builds it (``threshold=None``: one pyramid pass), in eval mode."""
    factory = _inspyrenet_class()
    with warnings.catch_warnings():
        # SwinTransformer.WindowAttention.__init__ calls torch.meshgrid without `indexing`; the default it warns
        # about ("ij") is what the code relies on, so this one warning, at construction only, is noise.
        warnings.filterwarnings("ignore", message=r"torch\.meshgrid: in an upcoming release", category=UserWarning)
        model = factory(depth=64, pretrained=False, base_size=[base_size, base_size], threshold=None)
    return model.eval()


CAUSE_CHARS = 200


def load_model(weights: ResolvedWeights, base_size: int) -> torch.nn.Module:
    """The model with its checkpoint loaded strictly, or seeded random weights (loudly) for ``untrained``."""
    if weights.path is None:
        logger.warning(
            "UNTRAINED WEIGHTS: this model is seeded random noise (seed %d); its masks mean nothing. "
            "Use it for smoke runs and benchmarks only; every response says X-Weights: untrained.",
            UNTRAINED_SEED,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            return build_model(base_size)
    model = build_model(base_size)
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # torch's unpickler raises anything from IndexError to UnpicklingError on other files
        # The cause last and cut short: load_state_dict lists every missing key (60 KB for another model's file).
        cause = f"{type(exc).__name__}: {next(iter(str(exc).strip().splitlines()), '')}"
        raise WeightsUnavailableError(
            f"{weights.path} is not an InSPyReNet_SwinB checkpoint this service can load: point `weights:` at "
            "transparent-background's .pth file, or remove it to use the published one (`bgserve-weights fetch "
            f"--config ...`). {cause[:CAUSE_CHARS]}"
        ) from exc
    return model


class PinnedStaging:
    """One page-locked host buffer, reused across batches: the uint8 batch is copied into its start and sent to the
    GPU asynchronously, instead of allocating and pinning memory for every batch. It grows to the largest batch
    seen and no further: one buffer per shape grew without bound on the quality tier, whose sizes vary with each
    photo (400 sizes held 2.4 GB). Safe to reuse because a runtime reads its results back (synchronising) before
    it takes the next batch."""

    def __init__(self, pin: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.pin_memory) -> None:
        self._pin = pin
        self._flat = torch.empty(0, dtype=torch.uint8)

    @property
    def held_bytes(self) -> int:
        return self._flat.numel()

    def to_device(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        if images.nbytes > self._flat.numel():
            self._flat = torch.empty(0, dtype=torch.uint8)  # the old one freed before the larger one is pinned
            self._flat = self._pin(torch.empty(images.nbytes, dtype=torch.uint8))
        buffer = self._flat[: images.nbytes].view(images.shape)
        buffer.numpy()[...] = images
        return buffer.to(device, non_blocking=True)


def to_model_tensor(images: np.ndarray, device: torch.device, staging: PinnedStaging | None = None) -> torch.Tensor:
    """NxHxWx3 uint8 → Nx3xHxW float32, scaled to [0, 1] and ImageNet-normalised, on ``device``."""
    if staging is not None and device.type == "cuda":
        x = staging.to_device(images, device)
    else:
        x = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(device)
    x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class LogitsModel(torch.nn.Module):
    """InSPyReNet up to its finest saliency logits d0 (Nx1xHxW): ``forward_inference`` without its last two
    lines (sigmoid, batch-wide min-max), which ``normalise_per_sample`` replaces. A plain tensor-in, tensor-out
    module, so it traces, compiles and exports.

    Move the wrapped model to its device *before* wrapping: InSPyReNet.to() also moves the Gaussian kernels of
    its image pyramid, which are plain tensors that ``nn.Module.to`` does not see."""

    def __init__(self, inspyrenet: torch.nn.Module) -> None:
        super().__init__()
        self.inspyrenet = inspyrenet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        forward_inspyre = cast(Callable[[torch.Tensor], dict[str, list[torch.Tensor]]], self.inspyrenet.forward_inspyre)
        return forward_inspyre(x)["saliency"][3]


def normalise_per_sample(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid, then min-max over each image alone.

    InSPyReNet's own ``forward_inference`` takes min and max over the whole tensor, batch included, so an image's
    mask would depend on what it was batched with. Per sample, a batch gives each image its single-image result.
    """
    pred = torch.sigmoid(logits.float())
    flat = pred.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    high = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return (pred - low) / (high - low + 1e-8)
