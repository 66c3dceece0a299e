"""The ONNX export's files, in one place: where an export lives, its manifest, and whether it fits the weights a
tier loads. ``serve_app.export`` writes them; the ``onnx`` runtimes read them. Neither imports the other.

``<export_dir>/<checkpoint>-<base_size>.onnx`` (+ ``.onnx.data``, the weights) and a manifest ``.json`` beside it:
the source checkpoint's sha256, the input size, the opset, torch's version and the parity with eager fp32
measured at export.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.errors import ConfigurationError
from serve_app.weights import AUTO, ResolvedWeights, file_digests

OPSET = 18
EXPORT_DIR = "onnx"  # beside the checkpoints, under the weights directory


@dataclass(frozen=True)
class Manifest:
    tier: str
    source: str  # the weights label: checkpoint file name, or "untrained"
    source_sha256: str  # of the checkpoint file; "untrained" for the seeded model
    base_size: int
    opset: int
    torch: str
    parity_max_abs: float  # largest difference of the normalised mask vs eager fp32, measured at export
    export_seconds: float

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


def source_fingerprint(weights: ResolvedWeights) -> str:
    return "untrained" if weights.path is None else file_digests(weights.path)[1]


def export_paths(export_dir: Path, weights: ResolvedWeights, base_size: int) -> tuple[Path, Path]:
    """(model, manifest) paths of the export of these weights at this size."""
    stem = f"{Path(weights.label).stem}-{base_size}"
    return export_dir / f"{stem}.onnx", export_dir / f"{stem}.json"


def export_command(tier: Tier, weights_choice: str, weights_dir: Path, base_size: int) -> str:
    """The command that makes the export a tier needs, for error messages."""
    parts = ["python -m serve_app.export", f"--tier {tier.value}", f"--weights-dir {weights_dir}"]
    if weights_choice != AUTO:
        parts.append(f"--weights {weights_choice}")
    if base_size != CATALOGUE[tier].base_size:
        parts.append(f"--base-size {base_size}")
    return " ".join(parts)


def find_export(
    export_dir: Path | None, weights: ResolvedWeights, base_size: int, command: str | None
) -> tuple[Path, dict[str, Any]]:
    """The export of these weights at this size and its manifest; refuses a missing or stale one, naming the
    command that makes it."""
    if export_dir is None:
        raise ConfigurationError("the onnx runtimes need an export directory")
    onnx_path, manifest_path = export_paths(export_dir, weights, base_size)
    command = command or "python -m serve_app.export --help"
    if not (onnx_path.is_file() and manifest_path.is_file()):
        raise ConfigurationError(f"no ONNX export at {onnx_path}: run `{command}` once (about a minute and a half)")
    manifest = json.loads(manifest_path.read_text())
    expected = source_fingerprint(weights)
    if manifest.get("source_sha256") != expected:
        raise ConfigurationError(
            f"{onnx_path} was exported from other weights (sha256 {manifest.get('source_sha256')}, these are "
            f"{expected}): run `{command}` again"
        )
    return onnx_path, manifest
