"""What the benchmarks share: the photos they run on, as the ingress would send them, and a tier's runtime
built the way the service builds it (``ServedTier.runtime_settings``).

Run the benchmarks as modules from the repository root (``python -m bench.runtimes``), so ``serve_app``,
``bench`` and ``tests.support`` import as packages."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.resize import DynamicResize, StaticResize, to_model_input
from serve_app.runtimes import Runtime, create_runtime
from serve_app.schemas import ServedTier, TierConfig
from serve_app.weights import UNTRAINED, resolve

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# Photos every scikit-image since 0.16 ships (batches larger than this repeat them)
PHOTOS = ("rocket", "astronaut", "coffee", "chelsea", "hubble_deep_field", "immunohistochemistry")


def photo_1080p(name: str = "rocket") -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
    return np.asarray(Image.fromarray(image).resize((1920, 1080), Image.Resampling.BICUBIC))


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def model_inputs(tier: str, count: int, base_size: int | None = None) -> np.ndarray:
    """``count`` different photos at the tier's model input size, as the ingress would send them (at
    ``base_size`` square when given, for every tier)."""
    spec = CATALOGUE[Tier(tier)]
    size = base_size or spec.base_size
    policy = StaticResize() if base_size and isinstance(spec.resize, DynamicResize) else spec.resize
    return np.stack([to_model_input(photo_1080p(PHOTOS[i % len(PHOTOS)]), policy, size) for i in range(count)])


def served_tier(
    tier: str, weights: str, runtime: str, weights_dir: Path, device: str = "cpu", base_size: int | None = None
) -> ServedTier:
    """The tier as a config would serve it: ``weights`` is a checkpoint path or ``untrained``; ONNX exports live
    under ``weights_dir``."""
    share = {"ray_actor_options": {"num_gpus": 1.0}} if device == "cuda" else {}
    if weights != UNTRAINED:
        weights = str(Path(weights).resolve())  # a path from the command line, not one inside weights_dir
    config = TierConfig(weights=weights, runtime=runtime, device=device, base_size=base_size, deployment=share)
    return ServedTier(tier=Tier(tier), config=config, weights_dir=weights_dir)


def load_runtime(tier: ServedTier) -> Runtime:
    """The tier's runtime, loaded (no warm-up: benchmarks time their own)."""
    weights = resolve(tier.spec.checkpoint, tier.config.weights, tier.weights_dir)
    runtime = create_runtime(tier.config.runtime, tier.runtime_settings(weights))
    runtime.load()
    return runtime


def timed(call: Callable[[], object]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def run_worker(module: str, *argv: str) -> dict[str, Any]:
    """``python -m module *argv`` in a fresh process (its memory and CUDA state its own): the JSON object on its last
    line of output, or ``{"error": ...}`` with the end of what it printed when it failed."""
    done = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
