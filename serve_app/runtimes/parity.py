"""What "holds parity with eager fp32" means, in one place: the tests, the benchmark and ``auto`` use it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXACT_RUNTIMES = frozenset({"eager", "torchscript", "onnx", "compile"})  # fp32 throughout
EXACT_MAX_ABS = 1e-4
REDUCED_MEAN_ABS = 1.0 / 255.0  # bf16, fp16, int8: at most one grey level on average ...
REDUCED_MIN_IOU = 0.99  # ... and the same thresholded mask


@dataclass(frozen=True)
class ParityReport:
    runtime: str
    max_abs: float
    mean_abs: float
    iou: float  # of the masks thresholded at 0.5
    holds: bool


def compare(runtime: str, reference: np.ndarray, candidate: np.ndarray) -> ParityReport:
    """Masks of the same images (any shape, values in [0, 1]) from eager fp32 and from ``runtime``."""
    difference = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    ref, got = reference > 0.5, candidate > 0.5
    union = np.logical_or(ref, got).sum()
    iou = float(np.logical_and(ref, got).sum() / union) if union else 1.0
    max_abs, mean_abs = float(difference.max()), float(difference.mean())
    if runtime in EXACT_RUNTIMES:
        holds = max_abs <= EXACT_MAX_ABS
    else:
        holds = mean_abs <= REDUCED_MEAN_ABS and iou >= REDUCED_MIN_IOU
    return ParityReport(runtime=runtime, max_abs=max_abs, mean_abs=mean_abs, iou=iou, holds=holds)
