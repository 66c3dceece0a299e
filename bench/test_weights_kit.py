"""Carry the segmenting test weights to a machine that cannot train or download them, in 15 MB instead of 367 MB.

The test weights are a seeded, untouched SwinB backbone plus a trained decoder (``tests/support/segmenting_weights``).
``pack`` keeps the decoder and a digest of the backbone; ``unpack`` rebuilds the backbone from the seed, checks it
against the digest (another torch version could initialise differently: then it stops rather than measure on other
weights) and writes the whole checkpoint where ``segmenting_checkpoint()`` looks for it under this machine's torch.

    python -m bench.test_weights_kit pack .gpucarry/test-weights        # here, after the tests made the weights
    python -m bench.test_weights_kit unpack .gpucarry/test-weights      # on the GPU machine; prints the path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from serve_app.runtimes.inspyrenet import build_model
from tests.support.segmenting_weights import Recipe, cache_dir, recipe_key, segmenting_checkpoint

BACKBONE = "backbone."


def digest(state: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(state):
        sha.update(name.encode())
        sha.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def seeded_backbone(recipe: Recipe) -> dict[str, torch.Tensor]:
    torch.manual_seed(recipe.seed)  # as segmenting_weights.train builds its model
    model = build_model(recipe.size)
    return {k: v for k, v in model.state_dict().items() if k.startswith(BACKBONE)}


def pack(folder: Path) -> None:
    path, report = segmenting_checkpoint()
    state = torch.load(path, map_location="cpu", weights_only=True)
    backbone = {k: v for k, v in state.items() if k.startswith(BACKBONE)}
    if digest(backbone) != digest(seeded_backbone(Recipe())):
        sys.exit("the cached test weights' backbone is not the seeded one: cannot pack them this way")
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in state.items() if not k.startswith(BACKBONE)}, folder / "decoder.pth")
    (folder / "manifest.json").write_text(json.dumps({"backbone_sha256": digest(backbone), "report": report}))
    print(f"packed {path.name} into {folder}")


def unpack(folder: Path) -> Path:
    manifest = json.loads((folder / "manifest.json").read_text())
    backbone = seeded_backbone(Recipe())
    if digest(backbone) != manifest["backbone_sha256"]:
        sys.exit(f"torch {torch.__version__} initialises the seeded backbone differently: train the weights here")
    decoder = torch.load(folder / "decoder.pth", map_location="cpu", weights_only=True)
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"segmenting-{recipe_key(Recipe())}.pth"
    torch.save({**backbone, **decoder}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    path.with_suffix(".json").write_text(json.dumps(manifest["report"], indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.action == "pack":
        pack(args.folder)
    else:
        print(unpack(args.folder))


if __name__ == "__main__":
    main()
