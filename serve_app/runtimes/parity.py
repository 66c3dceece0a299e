"""What "holds parity with eager fp32" means, in one place: the tests, the benchmarks and ``auto`` use it.
Which bound a runtime is held to is its own ``exact`` flag in the registry."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.runtimes.base import Runtime

EXACT_MAX_ABS = 1e-4  # fp32 runtimes: the same numbers up to float reordering
REDUCED_MEAN_ABS = 1.0 / 255.0  # bf16, fp16, int8: at most one grey level on average ...
REDUCED_MIN_IOU = 0.99  # ... and the same thresholded mask


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    max_abs: float
    mean_abs: float
    iou: float  # of the masks thresholded at 0.5
    holds: bool


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def parity_rule(exact: bool) -> str:
    return f"max abs ≤ {EXACT_MAX_ABS:g}" if exact else "mean abs ≤ 1/255, IoU ≥ 0.99"


def compare(runtime: type[Runtime], reference: np.ndarray, candidate: np.ndarray) -> ParityReport:
    """Masks of the same images (any shape, values in [0, 1]) from eager fp32 and from ``runtime``, held to the
    bound its ``exact`` flag names."""
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    overlap = iou(reference > 0.5, candidate > 0.5)
    max_abs, mean_abs = float(difference.max()), float(difference.mean())
    exact_holds = max_abs <= EXACT_MAX_ABS
    reduced_holds = mean_abs <= REDUCED_MEAN_ABS and overlap >= REDUCED_MIN_IOU
    holds = exact_holds if runtime.exact else reduced_holds
    return ParityReport(runtime=runtime.name, max_abs=max_abs, mean_abs=mean_abs, iou=overlap, holds=holds)
