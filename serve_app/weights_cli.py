"""``bgserve-weights``: pre-fetch, place and verify the tier checkpoints (for images and offline machines).

bgserve-weights fetch                       # all three, into $BGSERVE_WEIGHTS_DIR or ~/.cache/bgserve/weights
bgserve-weights fetch --tier fast --dir /models
bgserve-weights fetch --config configs/cpu.yaml          # what that config needs (its tiers with `weights: auto`)
bgserve-weights place ~/Downloads/ckpt_base.pth          # the tier is known from the file name
bgserve-weights place ./renamed.pth --tier balanced
bgserve-weights verify
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serve_app.catalogue import CATALOGUE, Tier
from serve_app.errors import ConfigurationError
from serve_app.schemas import AppConfig
from serve_app.weights import AUTO, default_weights_dir, place, resolve, verify

TIER_NAMES = [t.value for t in Tier]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bgserve-weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("fetch", "download missing checkpoints, verify all"), ("verify", "check cached files")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--tier", action="append", choices=TIER_NAMES, help="tier(s) to act on; default: all")
        sub.add_argument("--dir", type=Path, default=None, help="weights directory")
        sub.add_argument(
            "--config", type=Path, default=None, help="a Serve config: its tiers with `weights: auto`, its weights_dir"
        )
    sub = commands.add_parser("place", help="copy a checkpoint you already have into the weights directory")
    sub.add_argument("file", type=Path)
    sub.add_argument("--tier", choices=TIER_NAMES, help="default: the tier whose checkpoint has the file's name")
    sub.add_argument("--dir", type=Path, default=None, help="weights directory")
    return parser


def tier_of_file(path: Path) -> Tier:
    for tier, spec in CATALOGUE.items():
        if spec.checkpoint.filename == path.name:
            return tier
    names = ", ".join(f"{s.checkpoint.filename} ({t.value})" for t, s in CATALOGUE.items())
    raise ConfigurationError(f"cannot tell the tier of {path.name}: name it with --tier (checkpoints: {names})")


def read_serve_config(path: Path) -> dict[str, Any]:
    """A Serve config file's mapping; one that cannot be read, or is no mapping with a list of applications, is a
    ``ConfigurationError`` that says so (``deployments/preflight.py`` reads configs with it too)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("applications", []), list):
        raise ConfigurationError(f"{path} is not a Serve config (a mapping with a list of applications)")
    return config


def app_config(path: Path) -> AppConfig:
    """The bgserve application's args in a Serve config file, validated."""
    for application in read_serve_config(path).get("applications", []):
        if not isinstance(application, dict):
            continue
        if application.get("import_path") == "deployments.app:build_app":
            try:
                return AppConfig.model_validate(application.get("args") or {})
            except ValidationError as exc:
                raise ConfigurationError(f"{path}: {exc}") from None
    raise ConfigurationError(f"{path} has no application with import_path deployments.app:build_app")


def _act(command: str, tier: Tier, weights_dir: Path) -> str:
    checkpoint = CATALOGUE[tier].checkpoint
    path = weights_dir / checkpoint.filename
    if command == "verify" and not path.is_file():  # a failure: a deploy step gating on verify needs the file
        raise ConfigurationError(f"MISSING {path}: `bgserve-weights fetch` downloads it")
    if command == "verify":
        verify(checkpoint, path)
    else:
        resolve(checkpoint, AUTO, weights_dir, allow_download=True)
    return f"{tier.value}: OK {path}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    weights_dir = (args.dir or default_weights_dir()).expanduser()
    if args.command == "place":
        try:
            tier = Tier(args.tier) if args.tier else tier_of_file(args.file)
            print(f"{tier.value}: placed {place(CATALOGUE[tier].checkpoint, args.file, weights_dir)}")
            return 0
        except ConfigurationError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
    tiers = [Tier(t) for t in (args.tier or TIER_NAMES)]
    if args.config is not None:  # only what the config downloads itself: untrained and own paths need nothing
        try:
            config = app_config(args.config)
        except ConfigurationError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 1
        weights_dir = (args.dir or config.weights_dir or default_weights_dir()).expanduser()
        for tier, tier_config in config.tiers.items():
            if tier_config.weights != AUTO:
                print(f"{tier.value}: weights {tier_config.weights!r} (nothing to fetch)", flush=True)
        tiers = [t for t in tiers if t in config.tiers and config.tiers[t].weights == AUTO]
    failed = False
    for tier in tiers:
        try:
            print(_act(args.command, tier, weights_dir), flush=True)
        except ConfigurationError as exc:
            print(f"{tier.value}: error: {exc.message}", file=sys.stderr, flush=True)
            failed = True
        except OSError as exc:  # the next tier is still checked
            print(f"{tier.value}: error: {exc}", file=sys.stderr, flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
