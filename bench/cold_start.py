"""Cold start, phase by phase: ``serve run`` of a config from nothing (a new local Ray) until ``/readyz`` says 200.

Polls ``/v1/tiers`` every 0.25 s while the service starts and prints, per tier, when each start-up phase was
first seen (seconds since the command; to about a second, as the ingress refreshes its view every second): the
ingress answering (Ray, Serve, the proxy and the ingress are up), the tier's replica reporting (scheduled, imports
done), resolving weights, loading (model build, weights, device, runtime conversion), warming up, ready; then the
whole command until /readyz; then one request per tier, in turn (its first request). Weights: untrained by default
(no checkpoint needed; the model is built and initialised, nothing read), or ``--weights-file``, a checkpoint
every tier loads (e.g. the segmenting test weights, to include reading one).

    python -m bench.cold_start                                  # configs/cpu.yaml, every tier
    python -m bench.cold_start --tiers fast                     # the fast tier alone
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from bench.common import ROOT, jpeg
from tests.support.serve_run import serve_run


def config_for(path: Path, tiers: list[str] | None, weights: str, out: Path) -> Path:
    config = yaml.safe_load(path.read_text())
    app = config["applications"][0]
    args = app["args"]
    chosen = tiers or list(args["tiers"])
    args["tiers"] = {name: {**args["tiers"][name], "weights": weights} for name in chosen}
    if args.get("default_tier") not in chosen:
        args["default_tier"] = chosen[0]
    app["deployments"] = [d for d in app.get("deployments", []) if d["name"] in chosen]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu.yaml")
    parser.add_argument("--tiers", nargs="*", help="serve only these tiers (default: the config's)")
    parser.add_argument("--weights-file", type=Path, help="a checkpoint every tier loads (default: untrained)")
    args = parser.parse_args()
    from skimage import data as skimage_data

    scratch = Path(tempfile.mkdtemp())
    weights = "untrained"
    if args.weights_file:
        (scratch / "checkpoint.pth").symlink_to(args.weights_file.resolve())
        weights = "checkpoint.pth"
    config = config_for(args.config, args.tiers, weights, scratch / "cold.yaml")
    seen: dict[str, dict[str, float]] = {}
    started = time.monotonic()

    def watch(client: httpx.Client) -> None:
        now = time.monotonic() - started
        try:
            tiers = client.get("/v1/tiers").json()
        except ValueError:  # the proxy's plain text before the app has routes
            return
        if not isinstance(tiers, list):
            return
        seen.setdefault("(ingress)", {}).setdefault("answering", now)
        for tier in tiers:
            phase = (tier.get("startup") or {}).get("phase")
            if phase:
                seen.setdefault(tier["tier"], {}).setdefault(phase, now)

    first_request: dict[str, float] = {}
    with serve_run(config, scratch, scratch / "serve.log", watch=watch) as served:
        ready = time.monotonic() - started
        photo = jpeg(skimage_data.astronaut())  # 512x512
        for tier in seen:
            if tier.startswith("("):
                continue
            sent = time.monotonic()
            response = httpx.post(f"{served.url}/v1/remove", params={"tier": tier}, content=photo, timeout=600)
            response.raise_for_status()
            first_request[tier] = time.monotonic() - sent
    print(f"{args.config.name}, tiers {args.tiers or 'all'}, weights {weights}; seconds since `serve run`:")
    phases = ["answering", "resolving weights", "verifying", "loading", "warming up", "ready"]
    print("| tier | " + " | ".join(phases) + " | first request (512x512 rgba), s |")
    print("|---|" + "---|" * (len(phases) + 1))
    for tier, times in seen.items():
        cells = [f"{times[p]:.1f}" if p in times else "" for p in phases]
        first = f"{first_request[tier]:.1f}" if tier in first_request else ""
        print(f"| {tier} | " + " | ".join(cells) + f" | {first} |")
    print(f"/readyz 200 after {ready:.1f} s")


if __name__ == "__main__":
    main()
