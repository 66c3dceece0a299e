"""One tier's model work, free of Ray: load the weights into a runtime, then turn batches of model-sized
images into masks. The Serve tier deployment is a thin shell around this class."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from serve_app.errors import ConfigurationError, InferenceError, InvalidImageError, ServiceError
from serve_app.export import EXPORT_DIR, export_command
from serve_app.runtimes import Runtime, RuntimeSettings, create_runtime
from serve_app.runtimes.auto import MEASUREMENTS_FILE, device_signature, load_measurements, ranked_runtimes
from serve_app.schemas import MaskResult, RuntimeName, TierModelArgs
from serve_app.tiers import StaticResize
from serve_app.weights import resolve

logger = logging.getLogger(__name__)


def check_model_input(image: object) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidImageError(f"model input must be an HxWx3 uint8 array, got {described}")
    if min(image.shape[:2]) < 1:
        raise InvalidImageError(f"model input has no pixels: {image.shape}")
    return image


@dataclass(frozen=True)
class GroupResult:
    mask: np.ndarray
    batch_size: int  # images in the model call it ran in
    seconds: float  # that call's duration


def predict_grouped(
    images: Sequence[object], predict: Callable[[np.ndarray], np.ndarray]
) -> list[GroupResult | ServiceError]:
    """Masks for a list of images, one ``predict`` call per group of same-shaped images.

    Each result is a ``GroupResult`` or the error for that image alone: an invalid image fails only itself, and
    a group whose call fails is retried one image at a time, so one bad item never fails the other requests it
    was batched with.
    """
    results: list[GroupResult | ServiceError] = [InferenceError("not run")] * len(images)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        try:
            groups[check_model_input(image).shape].append(index)
        except ServiceError as exc:
            results[index] = exc
    for indices in groups.values():
        try:
            batch = np.stack([cast(np.ndarray, images[i]) for i in indices])
            started = time.perf_counter()
            masks = predict(batch)
            seconds = time.perf_counter() - started
            logger.info(
                "model call: batch of %d at %dx%d in %.3f s", len(batch), batch.shape[2], batch.shape[1], seconds
            )
            for i, mask in zip(indices, masks, strict=True):
                results[i] = GroupResult(mask, len(indices), seconds)
        except Exception:
            logger.exception("a batch of %d failed; retrying its images one at a time", len(indices))
            if len(indices) == 1:
                results[indices[0]] = InferenceError("the model failed on this image; see the tier's replica log")
                continue
            for i in indices:
                results[i] = predict_grouped([images[i]], predict)[0]
    return results


class TierModel:
    def __init__(self, args: TierModelArgs) -> None:
        self.args = args
        config = args.config
        started = time.monotonic()
        weights = resolve(args.spec.checkpoint, config.weights, args.weights_dir, config.allow_download)
        settings = RuntimeSettings(
            weights=weights,
            base_size=args.base_size,
            device=config.resolved_device,
            cpu_threads=config.cpu_threads,
            static_size=isinstance(args.spec.resize, StaticResize),
            export_dir=args.weights_dir / EXPORT_DIR,
            export_command=export_command(args.tier, config.weights, args.weights_dir, args.base_size),
            onnx_providers=tuple(config.onnx_providers) if config.onnx_providers else None,
            cudnn_benchmark=config.cudnn_benchmark,
            allow_tf32=config.allow_tf32,
        )
        if config.runtime == RuntimeName.AUTO:
            self.runtime = self._load_auto(settings)
        else:
            self.runtime = create_runtime(config.runtime.value, settings)
            self.runtime.load()
        if config.warmup:
            side = args.base_size if isinstance(args.spec.resize, StaticResize) else min(args.base_size, 512)
            self.runtime.warmup(1, side, side)
        logger.info(
            "tier %s ready in %.1f s: weights=%s runtime=%s device=%s base_size=%d",
            args.tier.value,
            time.monotonic() - started,
            weights.label,
            self.runtime.name,
            self.runtime.device,
            args.base_size,
        )

    def _load_auto(self, settings: RuntimeSettings) -> Runtime:
        """The fastest runtime measured here that held parity and loads; eager when none was measured."""
        signature = device_signature(torch.device(settings.device))
        path = self.args.weights_dir / MEASUREMENTS_FILE
        ranked = ranked_runtimes(load_measurements(path), signature, self.args.tier.value)
        if not ranked:
            logger.warning(
                "runtime auto: no measurements for %r in %s; running eager (see bench/runtimes.py)", signature, path
            )
        for name in ranked:
            runtime = create_runtime(name, settings)
            try:
                runtime.load()
            except (ConfigurationError, RuntimeError) as exc:  # e.g. an ONNX export not made yet
                logger.warning("runtime auto: %s ranked here but does not load: %s", name, exc)
                continue
            logger.info("runtime auto: %s (ranked here: %s)", name, ranked)
            return runtime
        runtime = create_runtime(RuntimeName.EAGER.value, settings)
        runtime.load()  # errors here (bad weights) are the tier's to report
        return runtime

    @property
    def weights_label(self) -> str:
        return self.runtime.weights_label

    def predict_many(self, images: Sequence[object]) -> list[MaskResult | ServiceError]:
        label = self.weights_label
        return [
            r
            if isinstance(r, ServiceError)
            else MaskResult(mask=r.mask, batch_size=r.batch_size, weights=label, model_seconds=r.seconds)
            for r in predict_grouped(images, self.runtime.predict)
        ]

    def check_health(self) -> None:
        self.runtime.check_health()
