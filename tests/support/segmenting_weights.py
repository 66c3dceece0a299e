"""Weights that really segment, for every test that looks at a mask.

Untrained InSPyReNet weights give an almost constant mask, so a test on them cannot tell a right mask from a
transposed, shifted or batch-corrupted one. Here the seeded SwinB backbone is frozen and only the decoder
(3.8 M of 90.7 M parameters) is trained on synthetic scenes (``tests/support/scenes.py``). The result is saved
as a plain state dict, the official checkpoint format, and cached by a key over this recipe, so it is trained
once per machine (a few minutes on 2 cores).

Run directly (``python -m tests.support.segmenting_weights``) to train and print the held-out IoU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from serve_app.runtimes.inspyrenet import build_model, to_model_tensor
from serve_app.runtimes.parity import iou
from tests.support import scenes

logger = logging.getLogger(__name__)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Recipe:
    version: int = 3
    size: int = 128
    steps: int = 40
    batch: int = 8
    lr: float = 2e-3  # cosine-decayed to zero over the steps
    seed: int = 0
    train_sizes: tuple[int, ...] = (128,)
    eval_sizes: tuple[int, ...] = (128, 160, 192)
    eval_scenes: int = 16
    eval_seed: int = 10_000


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "bgserve" / "test-weights"
    return Path(os.environ.get("BGSERVE_TEST_CACHE", default))


def recipe_key(recipe: Recipe) -> str:
    """Names the cached file. Bump ``Recipe.version`` whenever the training here or the scenes change."""
    blob = json.dumps({**asdict(recipe), "torch": torch.__version__.split("+")[0]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_input(images: np.ndarray) -> torch.Tensor:
    return to_model_tensor(images, CPU)


def held_out_iou(model: torch.nn.Module, recipe: Recipe, size: int) -> float:
    """Mean IoU of the 0.5-thresholded, per-sample-normalised prediction on scenes never trained on."""
    held_out = scenes.make_scenes(recipe.eval_seed + size, recipe.eval_scenes, size, size)
    ious = []
    with torch.inference_mode():
        for scene in held_out:
            pred = model(to_input(scene.image[None]))[0, 0].numpy()
            ious.append(iou(pred > 0.5, scene.mask))
    return float(np.mean(ious))


Progress = Callable[[str], None]


def train(recipe: Recipe, progress: Progress = logger.info) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.size)
    model.eval()
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith("backbone."))
    _set_decoder_training(model, True)  # BatchNorm on batch statistics: the untrained decoder's raw scale explodes
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=recipe.steps)
    rng = np.random.default_rng(recipe.seed)
    started = time.monotonic()
    for step in range(recipe.steps):
        size = recipe.train_sizes[step % len(recipe.train_sizes)]
        batch = [scenes.make_scene(rng, size, size) for _ in range(recipe.batch)]
        x = to_input(np.stack([s.image for s in batch]))
        target = torch.from_numpy(np.stack([s.mask for s in batch])).float()[:, None]
        with torch.no_grad():
            features = model.backbone(x)
        saliency = _decode(model, features, x.shape[-2:])
        loss = sum(
            F.binary_cross_entropy_with_logits(d, F.interpolate(target, size=d.shape[-2:], mode="bilinear"))
            for d in saliency
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        elapsed = time.monotonic() - started
        progress(
            f"training the segmenting test weights: step {step + 1}/{recipe.steps}, loss {loss.item():.3f}, "
            f"{elapsed:.0f} s, ~{elapsed / (step + 1) * (recipe.steps - step - 1):.0f} s to go"
        )
    _settle_batch_norm(model, recipe, rng)
    report = {f"iou_{s}": held_out_iou(model, recipe, s) for s in recipe.eval_sizes}
    report["train_seconds"] = time.monotonic() - started
    return model.state_dict(), report


def _set_decoder_training(model: torch.nn.Module, training: bool) -> None:
    for name, module in model.named_children():
        if name != "backbone":
            module.train(training)


def _settle_batch_norm(model: torch.nn.Module, recipe: Recipe, rng: np.random.Generator) -> None:
    """Replace the running BatchNorm statistics by exact averages over fresh scenes, then freeze them."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    with torch.no_grad():
        for step in range(2 * len(recipe.train_sizes)):
            size = recipe.train_sizes[step % len(recipe.train_sizes)]
            x = to_input(np.stack([scenes.make_scene(rng, size, size).image for _ in range(recipe.batch)]))
            _decode(model, model.backbone(x), x.shape[-2:])
    model.eval()


def _decode(model: torch.nn.Module, features: tuple[torch.Tensor, ...], size: torch.Size) -> list[torch.Tensor]:
    """InSPyReNet.forward_inspyre after the backbone, so the frozen backbone runs without autograd."""
    height, width = size
    x1, x2, x3, x4, x5 = features
    x1, x2 = model.context1(x1), model.context2(x2)
    x3, x4, x5 = model.context3(x3), model.context4(x4), model.context5(x5)
    f3, d3 = model.decoder([x3, x4, x5])
    f3 = model.res(f3, (height // 4, width // 4))
    f2, p2 = model.attention2(torch.cat([x2, f3], dim=1), d3.detach())
    d2 = model.image_pyramid.reconstruct(d3.detach(), p2)
    x1 = model.res(x1, (height // 2, width // 2))
    f2 = model.res(f2, (height // 2, width // 2))
    f1, p1 = model.attention1(torch.cat([x1, f2], dim=1), d2.detach(), p2.detach())
    d1 = model.image_pyramid.reconstruct(d2.detach(), p1)
    f1 = model.res(f1, (height, width))
    _, p0 = model.attention0(f1, d1.detach(), p1.detach())
    d0 = model.image_pyramid.reconstruct(d1.detach(), p0)
    return [d3, d2, d1, d0]


def segmenting_checkpoint(recipe: Recipe = Recipe(), progress: Progress = logger.info) -> tuple[Path, dict[str, float]]:
    """Path of the cached checkpoint (trained now if missing: ~4-5 min on 2 cores, once per machine) and its
    held-out IoU report."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    key = recipe_key(recipe)
    path = directory / f"segmenting-{key}.pth"
    report_path = path.with_suffix(".json")
    if not (path.exists() and report_path.exists()):
        state, report = train(recipe, progress)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        report_path.write_text(json.dumps(report, indent=2))
    return path, json.loads(report_path.read_text())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(segmenting_checkpoint())
