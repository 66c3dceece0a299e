"""One tier's model work, free of Ray: load the weights into a runtime, then turn batches of model-sized
images into masks. The Serve tier deployment is a thin shell around this class."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from serve_app.errors import InferenceError, InvalidImageError, ServiceError
from serve_app.runtimes import Runtime, RuntimeSettings, create_runtime
from serve_app.schemas import MaskResult, TierModelArgs
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


def predict_grouped(
    images: Sequence[object], predict: Callable[[np.ndarray], np.ndarray]
) -> list[tuple[np.ndarray, int] | ServiceError]:
    """Masks for a list of images, one ``predict`` call per group of same-shaped images.

    Each result is ``(mask, size of the group it ran in)`` or the error for that image alone: an invalid image
    fails only itself, and a group whose call fails is retried one image at a time, so one bad item never fails
    the other requests it was batched with.
    """
    results: list[tuple[np.ndarray, int] | ServiceError] = [InferenceError("not run")] * len(images)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        try:
            groups[check_model_input(image).shape].append(index)
        except ServiceError as exc:
            results[index] = exc
    for indices in groups.values():
        try:
            masks = predict(np.stack([images[i] for i in indices]))  # type: ignore[misc]
            for i, mask in zip(indices, masks, strict=True):
                results[i] = (mask, len(indices))
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
            weights=weights, base_size=args.base_size, device=config.resolved_device, cpu_threads=config.cpu_threads
        )
        self.runtime: Runtime = create_runtime(config.runtime.value, settings)
        self.runtime.load()
        if config.warmup:
            side = args.base_size if isinstance(args.spec.resize, StaticResize) else min(args.base_size, 512)
            self.runtime.warmup(1, side, side)
        logger.info(
            "tier %s ready in %.1f s: weights=%s runtime=%s device=%s base_size=%d",
            args.tier.value,
            time.monotonic() - started,
            weights.label,
            config.runtime.value,
            self.runtime.device,
            args.base_size,
        )

    @property
    def weights_label(self) -> str:
        return self.runtime.weights_label

    def predict_many(self, images: Sequence[object]) -> list[MaskResult | ServiceError]:
        label = self.weights_label
        return [
            r if isinstance(r, ServiceError) else MaskResult(mask=r[0], batch_size=r[1], weights=label)
            for r in predict_grouped(images, self._timed_predict)
        ]

    def _timed_predict(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        masks = self.runtime.predict(batch)
        logger.info(
            "tier %s: batch of %d at %dx%d in %.3f s",
            self.args.tier.value,
            len(batch),
            batch.shape[2],
            batch.shape[1],
            time.perf_counter() - started,
        )
        return masks

    def check_health(self) -> None:
        self.runtime.check_health()
