"""One tier's model work, free of Ray: resolve the weights, load them into a runtime, then turn batches of
model-sized images into masks. The model deployment (``deployments/model.py``) is a thin shim around this class.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import cast

import numpy as np
import torch

from serve_app.errors import (
    ConfigurationError,
    DeadlineExceededError,
    InferenceError,
    InvalidImageError,
    ServiceError,
)
from serve_app.resize import StaticResize
from serve_app.runtimes import Runtime, RuntimeSettings, create_runtime
from serve_app.runtimes.auto import AUTO, MEASUREMENTS_FILE, device_signature, load_measurements, ranked_runtimes
from serve_app.runtimes.eager import EagerRuntime
from serve_app.schemas import MaskResult, ServedTier
from serve_app.startup import LOADING, READY, RESOLVING, WARMING_UP, Progress, no_progress
from serve_app.weights import resolve

logger = logging.getLogger(__name__)


def check_model_input(image: object) -> np.ndarray:
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        described = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidImageError(f"model input must be an HxWx3 uint8 array, got {described}")
    if min(image.shape[:2]) < 1:
        raise InvalidImageError(f"model input has no pixels: {image.shape}")
    return image


ModelCallObserver = Callable[[float, int], None]  # (seconds, batch size) of each model call


def run_before_deadlines(
    images: Sequence[object],
    deadlines: Sequence[float] | None,
    predict: Callable[[np.ndarray], np.ndarray],
    now: Callable[[], float] = time.time,
    on_model_call: ModelCallObserver | None = None,
) -> list[MaskResult | ServiceError]:
    """``predict_grouped`` over the images whose deadline is still ahead; the others get ``DeadlineExceededError``
    without running."""
    if deadlines is None:
        return predict_grouped(images, predict, on_model_call)
    moment = now()
    live = [i for i, deadline in enumerate(deadlines) if deadline > moment]
    results: list[MaskResult | ServiceError] = [
        DeadlineExceededError(f"its deadline passed {moment - deadline:.1f} s before the model could take it; not run")
        for deadline in deadlines
    ]  # the live ones are replaced by their results below
    if len(live) < len(images):
        logger.warning("skipped %d of %d requests whose deadline had passed", len(images) - len(live), len(images))
    for index, result in zip(live, predict_grouped([images[i] for i in live], predict, on_model_call), strict=True):
        results[index] = result
    return results


def predict_grouped(
    images: Sequence[object],
    predict: Callable[[np.ndarray], np.ndarray],
    on_model_call: ModelCallObserver | None = None,
) -> list[MaskResult | ServiceError]:
    """Masks for a list of images, one ``predict`` call per group of same-shaped images.

    Each result is a ``MaskResult`` or the error for that image alone: an invalid image fails only itself, and
    a group whose call fails is retried one image at a time, so one bad item never fails the other requests it
    was batched with.
    """
    results: list[MaskResult | ServiceError] = [InferenceError("not run")] * len(images)
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
            if on_model_call is not None:
                on_model_call(seconds, len(batch))
            for i, mask in zip(indices, masks, strict=True):
                results[i] = MaskResult(mask=mask, batch_size=len(indices), model_seconds=seconds)
        except Exception:
            logger.exception("a batch of %d failed; retrying its images one at a time", len(indices))
            if len(indices) == 1:
                results[indices[0]] = InferenceError("the model failed on this image; see the tier's replica log")
                continue
            for i in indices:
                results[i] = predict_grouped([images[i]], predict, on_model_call)[0]
    return results


CPU_WARMUP_SIDE = 128


def warmup_side(tier: ServedTier, runtime: Runtime) -> int:
    """The side of the warm-up batch. On a GPU, the tier's real input (cuDNN tunes per shape). On a CPU, a small
    one: there warm-up only pays one-off costs (weights paged in, thread pools, kernels) that a 128 px image pays as
    well as a 1024 px one, at a hundredth of the time (balanced: ~28 s of start-up on 2 cores); runtimes that
    specialise on shapes still warm up at the real one."""
    side = tier.base_size if isinstance(tier.resize, StaticResize) else min(tier.base_size, 512)
    if runtime.device.type == "cpu" and not runtime.shape_specialised:
        return min(side, CPU_WARMUP_SIDE)
    return side


class Predictor:
    """A tier's loaded runtime: ``predict_many`` in, one ``MaskResult`` (or error) per image out."""

    def __init__(
        self, tier: ServedTier, on_model_call: ModelCallObserver | None = None, report: Progress = no_progress
    ) -> None:
        self.tier = tier
        self.on_model_call = on_model_call
        self.load_phases: dict[str, float] = {}  # seconds of each start-up phase: weights, load, warmup
        config = tier.config
        started = phase_started = time.monotonic()

        def phase_done(name: str) -> None:
            nonlocal phase_started
            self.load_phases[name] = time.monotonic() - phase_started
            phase_started = time.monotonic()

        report(RESOLVING, tier.spec.checkpoint.filename, None)
        weights = resolve(tier.spec.checkpoint, config.weights, tier.weights_dir, config.allow_download, report)
        phase_done("weights")
        settings = tier.runtime_settings(weights)
        report(LOADING, f"{weights.label}: {config.runtime} runtime on {settings.device}", None)
        if config.runtime == AUTO:
            self.runtime = self._load_auto(settings)
        else:
            self.runtime = create_runtime(config.runtime, settings)
            self.runtime.load()
        phase_done("load")
        if config.warmup:
            side = warmup_side(tier, self.runtime)
            report(WARMING_UP, f"one {side}x{side} batch on {self.runtime.name}", None)
            self.runtime.warmup(1, side, side)
            phase_done("warmup")
        report(READY, f"{self.runtime.name} on {self.runtime.device}", 1.0)
        logger.info(
            "tier %s ready in %.1f s: weights=%s runtime=%s device=%s base_size=%d",
            tier.tier.value,
            time.monotonic() - started,
            weights.label,
            self.runtime.name,
            self.runtime.device,
            tier.base_size,
        )

    def _load_auto(self, settings: RuntimeSettings) -> Runtime:
        """The fastest runtime measured here that held parity and loads; eager when none was measured."""
        signature = device_signature(torch.device(settings.device))
        path = self.tier.weights_dir / MEASUREMENTS_FILE
        ranked = ranked_runtimes(load_measurements(path), signature, self.tier.tier.value)
        if not ranked:
            logger.warning(
                "runtime auto: no measurements for %r in %s; running eager (see `python -m bench.runtimes --record`)",
                signature,
                path,
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
        runtime = EagerRuntime(settings)
        runtime.load()  # errors here (bad weights) are the tier's to report
        return runtime

    def predict_many(
        self, images: Sequence[object], deadlines: Sequence[float] | None = None
    ) -> list[MaskResult | ServiceError]:
        """Masks for a batch. With ``deadlines`` (epoch seconds, one per image), an image whose deadline has passed
        is not run: its caller has already answered 504, and its share of the batch is free for live requests."""
        results = run_before_deadlines(images, deadlines, self.runtime.predict, on_model_call=self.on_model_call)
        name = self.runtime.name
        return [replace(r, runtime=name) if isinstance(r, MaskResult) else r for r in results]

    def check_health(self) -> None:
        self.runtime.check_health()
