"""Overload and faults against a running service, measured: a burst of 4x what a tier holds, then kill -9 of the
tier replica and of the ingress replica while a burst is in flight.

Serves ``--config`` (default: the shipped CPU config, configs/cpu.yaml) with ``serve run`` on a Ray of its own,
one tier only (``--tier``, on untrained weights: masks do not matter for load, the model's cost does), with the
proxy guard as scripts/serve.sh starts it. For each scenario it prints the answers by status and error code with
p50/p95 seconds, how long the service took to be ready again, and the peak resident memory (VmHWM) of the proxy,
the ingress and the tier replica processes.

    python -m bench.overload                          # configs/cpu.yaml, fast tier, a 512x512 photo
    python -m bench.overload --config configs/test.yaml --tier fast
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.common import ROOT, jpeg
from serve_app.schemas import AppConfig
from tests.support.load import burst, memory_mb, replica_pids, summary, wait_until_healthy
from tests.support.serve_run import descendant_pids, serve_run

APP = "bgserve"


def one_tier_untrained(config_path: Path, tier: str, out: Path) -> tuple[Path, int]:
    """A copy of the config serving ``tier`` alone on untrained weights, and how many requests that tier holds."""
    config = yaml.safe_load(config_path.read_text())
    app = config["applications"][0]
    args = app["args"]
    args["tiers"] = {tier: {**args["tiers"][tier], "weights": "untrained"}}
    args["default_tier"] = tier
    app["deployments"] = [d for d in app.get("deployments", []) if d["name"] in (tier, "ingress")]
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    capacity = next(iter(AppConfig.model_validate(args).tiers.values())).capacity
    assert capacity is not None, "the tier's queue is unbounded: nothing to overload"
    return out, capacity


def peak_memory(root_pid: int, tier: str) -> str:
    parts = []
    for name, pids in (
        ("proxy", descendant_pids(root_pid, "ProxyActor")),
        ("ingress", replica_pids(root_pid, APP, "ingress")),
        (tier, replica_pids(root_pid, APP, tier)),
    ):
        peaks = [memory_mb(pid)[1] for pid in pids]
        parts.append(f"{name} {max(peaks):.0f} MB" if peaks else f"{name} -")
    return "peak RSS: " + ", ".join(parts)


def kill_during(root_pid: int, deployment: str, after_s: float, recovered: list[float], url: str) -> None:
    """Kill the deployment's replica ``after_s`` into the burst; note how long until Serve has started its
    replacement and /readyz says 200 again."""
    time.sleep(after_s)
    (pid,) = replica_pids(root_pid, APP, deployment)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    while not [p for p in replica_pids(root_pid, APP, deployment) if p != pid]:
        time.sleep(0.2)
    wait_until_healthy(url, timeout_s=300)
    recovered.append(time.monotonic() - killed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "cpu.yaml")
    parser.add_argument("--tier", default="fast")
    parser.add_argument("--overload", type=int, default=4, help="burst size as a multiple of what the tier holds")
    args = parser.parse_args()
    from skimage import data as skimage_data

    image = jpeg(skimage_data.astronaut())
    params = {"tier": args.tier, "effect": "mask"}
    scratch = Path(tempfile.mkdtemp())
    config, capacity = one_tier_untrained(args.config, args.tier, scratch / "overload.yaml")
    with serve_run(config, scratch, scratch / "serve.log") as served:
        url, root = served.url, served.pid
        burst(url, image, params, count=2)  # warm
        print(f"{args.config.name}, tier {args.tier}: holds {capacity} requests; 512x512 JPEG, effect=mask\n")

        count = args.overload * capacity
        started = time.monotonic()
        outcomes = burst(url, image, params, count=count)
        print(f"== {args.overload}x overload: {count} requests at once ({time.monotonic() - started:.1f} s)")
        print(summary(outcomes))
        print(f"ready after: {wait_until_healthy(url):.1f} s; {peak_memory(root, args.tier)}\n")

        for deployment in (args.tier, "ingress"):
            recovered: list[float] = []
            killer = threading.Thread(target=kill_during, args=(root, deployment, 1.0, recovered, url))
            killer.start()
            outcomes = burst(url, image, params, count=capacity)
            killer.join()
            print(f"== kill -9 of the {deployment} replica 1 s into a burst of {capacity}")
            print(summary(outcomes))
            print(f"replaced and ready {recovered[0]:.1f} s after the kill; {peak_memory(root, args.tier)}\n")


if __name__ == "__main__":
    main()
