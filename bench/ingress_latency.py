"""What the service adds to a small request beyond the model, with Serve's controller answering and frozen.

Starts ``serve run configs/test.yaml`` from a checkout (this one, or ``--root`` another, to compare two trees in
one sitting), sends ``--requests`` sequential 160x128 PNGs to one tier (mask, PNG), and prints medians of:

- ``wall``: the client's round trip;
- ``ingress steps``: the Server-Timing steps outside ``model`` and ``queue`` (decode, resize, upsample, effect,
  encode), i.e. the ingress's own CPU work;
- ``outside model+queue``: wall minus model minus queue: everything the service adds (HTTP proxy, reading the
  upload, readiness checks, the ingress's steps, the handle call's hand-offs);

first with the controller answering, then with this service's Serve controller process stopped (SIGSTOP), the way
a slow or overloaded controller looks to a request. The controller is resumed before the script exits.

    python -m bench.ingress_latency                        # this tree
    python -m bench.ingress_latency --root /tmp/old-tree   # another checkout, same measurement
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

from bench.common import ROOT
from serve_app.mask_cache import RUN_THE_MODEL
from tests.support import scenes
from tests.support.segmenting_weights import segmenting_checkpoint
from tests.support.serve_run import descendant_pids, serve_run

STEPS_OUTSIDE_MODEL = ("decode", "resize", "upsample", "effect", "encode")


def small_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scenes.make_scenes(seed=1, count=1, height=128, width=160)[0].image).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(client: httpx.Client, data: bytes, tier: str, count: int) -> dict[str, float]:
    walls, inside, outside = [], [], []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(
            "/v1/remove", params={"tier": tier, "effect": "mask"}, content=data, headers=RUN_THE_MODEL
        )
        wall = time.perf_counter() - started
        response.raise_for_status()
        steps = {
            name: float(ms) / 1000
            for name, ms in (p.split(";dur=") for p in response.headers["server-timing"].split(", "))
        }
        walls.append(wall)
        inside.append(sum(steps[s] for s in STEPS_OUTSIDE_MODEL))
        outside.append(wall - steps["model"] - steps["queue"])
    return {
        "wall_ms": 1000 * statistics.median(walls),
        "ingress_steps_ms": 1000 * statistics.median(inside),
        "outside_model_and_queue_ms": 1000 * statistics.median(outside),
        "max_wall_ms": 1000 * max(walls),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to serve (default: this one)")
    parser.add_argument("--tier", default="balanced")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--frozen-requests", type=int, default=5)
    args = parser.parse_args()
    root = args.root.resolve()
    weights_dir = Path(tempfile.mkdtemp())
    (weights_dir / "test-segmenting.pth").symlink_to(segmenting_checkpoint()[0])
    frozen: list[int] = []
    with serve_run(root / "configs" / "test.yaml", weights_dir, weights_dir / "serve.log", root) as served:
        try:
            with httpx.Client(base_url=served.url, timeout=120) as client:
                data = small_png()
                measure(client, data, args.tier, 3)  # warm-up
                answering = measure(client, data, args.tier, args.requests)
                frozen = descendant_pids(served.pid, "ray::ServeController")  # this service's controller only
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(2)  # past the ingress's status cache
                stopped = measure(client, data, args.tier, args.frozen_requests)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
    report = {"root": str(root), "tier": args.tier, "controller_answering": answering, "controller_frozen": stopped}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
