"""Export a tier's model to ONNX (``python -m serve_app.export``), for the ``onnx`` runtimes.

    python -m serve_app.export --tier fast                      # the cached ckpt_fast.pth, at 384
    python -m serve_app.export --tier balanced --weights-dir /models
    python -m serve_app.export --tier fast --weights ./mine.pth --base-size 128

Writes the export and its manifest where ``serve_app.runtimes.onnx_artifacts`` says (``<weights_dir>/onnx/``),
with the parity with eager fp32 measured at export. Only the batch axis is dynamic: the quality tier's varying
size does not export. TorchScript's legacy exporter fails on this model; the dynamo exporter (``dynamo=True``)
works.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx_ir
import onnxscript.optimizer
import onnxscript.rewriter.onnx_fusions
import torch

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.errors import ConfigurationError
from serve_app.resize import DynamicResize
from serve_app.runtimes.inspyrenet import LogitsModel, load_model, normalise_per_sample, to_model_tensor
from serve_app.runtimes.onnx import OnnxSession
from serve_app.runtimes.onnx_artifacts import EXPORT_DIR, OPSET, Manifest, export_paths, source_fingerprint
from serve_app.weights import AUTO, ResolvedWeights, default_weights_dir, resolve

logger = logging.getLogger(__name__)


def optimise(model: onnx_ir.Model) -> None:
    """What ``torch.onnx.export(optimize=True)`` does, less onnxscript's general rewrite rules: on this model they
    changed no output (max abs 0.0) and no speed under ONNX Runtime, and took 60 of the export's 110 s at 384
    (docs/benchmarks.md)."""
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    onnxscript.optimizer.remove_unused_functions(model)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def export(tier: Tier, weights: ResolvedWeights, base_size: int, export_dir: Path) -> Manifest:
    if isinstance(CATALOGUE[tier].resize, DynamicResize):
        raise ConfigurationError(
            f"the {tier.value} tier's input size varies, and this model does not export with a dynamic height and "
            f"width (SwinTransformer computes its padding with numpy, which fixes the size): run it with eager or "
            f"int8 (bf16 on hardware that has it)"
        )
    model = LogitsModel(load_model(weights, base_size)).eval()
    example = torch.zeros(2, 3, base_size, base_size)
    axes: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=64)}  # the only dynamic axis
    onnx_path, manifest_path = export_paths(export_dir, weights, base_size)
    export_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            dynamic_shapes={"x": axes},
            opset_version=OPSET,
            external_data=True,
            optimize=False,
        )
    if program is None:
        raise ConfigurationError("torch.onnx.export returned no program")
    optimise(program.model)
    program.save(str(onnx_path), external_data=True)
    seconds = time.monotonic() - started
    # Parity at export on a structured image batch (a constant input would hide most errors).
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:base_size, 0:base_size]
    images = np.stack(
        [
            np.dstack([(x * 2 + i * 40) % 256, (y * 3) % 256, rng.integers(0, 256, (base_size, base_size))])
            for i in (0, 1)
        ]
    ).astype(np.uint8)
    with torch.inference_mode():
        expected = normalise_per_sample(model(to_model_tensor(images, torch.device("cpu"))))[:, 0].numpy()
    got = OnnxSession(onnx_path, ["CPUExecutionProvider"], None, torch.device("cpu")).masks(images)
    manifest = Manifest(
        tier=tier.value,
        source=weights.label,
        source_sha256=source_fingerprint(weights),
        base_size=base_size,
        opset=OPSET,
        torch=torch.__version__,
        parity_max_abs=float(np.abs(got - expected).max()),
        export_seconds=round(seconds, 1),
    )
    manifest.write(manifest_path)
    logger.info("exported %s in %.0f s: %s", onnx_path, seconds, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tier", required=True, choices=[t.value for t in Tier])
    parser.add_argument("--weights", default=AUTO, help="auto (the cached checkpoint), untrained, or a path")
    parser.add_argument("--weights-dir", type=Path, default=None, help="checkpoint cache; exports go to its onnx/")
    parser.add_argument("--base-size", type=int, default=None, help="model size (default: the tier's)")
    args = parser.parse_args(argv)
    tier = Tier(args.tier)
    weights_dir = (args.weights_dir or default_weights_dir()).expanduser()
    base_size = args.base_size or CATALOGUE[tier].base_size
    try:
        weights = resolve(CATALOGUE[tier].checkpoint, args.weights, weights_dir)
        manifest = export(tier, weights, base_size, weights_dir / EXPORT_DIR)
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(manifest), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
