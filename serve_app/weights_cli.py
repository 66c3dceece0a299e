"""``bgserve-weights``: pre-fetch, place and verify the tier checkpoints (for images and offline machines).

bgserve-weights fetch                       # all three, into $BGSERVE_WEIGHTS_DIR or ~/.cache/bgserve/weights
bgserve-weights fetch --tier fast --dir /models
bgserve-weights place ~/Downloads/ckpt_base.pth --tier balanced
bgserve-weights verify
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from serve_app.errors import ConfigurationError
from serve_app.tiers import CATALOGUE, Tier
from serve_app.weights import AUTO, default_weights_dir, place, resolve, verify


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgserve-weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tiers = [t.value for t in Tier]
    for name, text in (("fetch", "download missing checkpoints and verify all"), ("verify", "check cached files")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--tier", action="append", choices=tiers, help="tier(s) to act on; default: all")
        sub.add_argument("--dir", type=Path, default=None, help="weights directory (default: %(default)s)")
    sub = commands.add_parser("place", help="copy a checkpoint you already have into the weights directory")
    sub.add_argument("file", type=Path)
    sub.add_argument("--tier", required=True, choices=tiers)
    sub.add_argument("--dir", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    weights_dir = (args.dir or default_weights_dir()).expanduser()
    try:
        if args.command == "place":
            spec = CATALOGUE[Tier(args.tier)]
            print(f"placed {place(spec.checkpoint, args.file, weights_dir)}")
            return 0
        for tier in [Tier(t) for t in (args.tier or [t.value for t in Tier])]:
            checkpoint = CATALOGUE[tier].checkpoint
            path = weights_dir / checkpoint.filename
            if args.command == "verify":
                if not path.is_file():
                    print(f"{tier.value}: MISSING {path}")
                    continue
                verify(checkpoint, path)
            else:
                resolve(checkpoint, AUTO, weights_dir, allow_download=True)
            print(f"{tier.value}: OK {path}")
    except ConfigurationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
