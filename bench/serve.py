"""End-to-end benchmark over HTTP against the running service (the CPU config), in one run:

- per tier: latency p50/p95 at concurrency 1, and images/s at concurrency 1, 4 and 16, on 1920x1080 photos;
- the bare runtime's images/s on the same photos (model only, in this process, batch 1), twice: beside the
  service while it idles, then alone once Ray is stopped;
- ``transparent_background.Remover(mode).process`` per image on the same photos and weights;
- the serving overhead, 1 - HTTP images/s / bare runtime images/s (alone), split into what Ray's idle processes
  cost the model on a small box (1 - beside / alone) and what the request path costs (1 - HTTP / beside), and
  where the time goes (decode, resize, queue, model, upsample, effect, encode: means of the service's
  Server-Timing headers).

    python -m bench.serve                                     # fast tier, its runtime in configs/cpu.yaml, mask + rgba
    python -m bench.serve --tiers fast,balanced --runtime fast=onnx --effects mask
    python -m bench.serve --concurrency 1,4 --rounds 3   # the whole run three times: medians of each ratio

Writes ``<out>/serve.json``, ``serve.md`` and ``serve.png``. Without --weights it uses the segmenting test
weights (the real checkpoints' architecture and cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

from bench.common import PHOTOS, RESULTS, ROOT, jpeg, load_runtime, photo_1080p, served_tier
from serve_app.catalogue import Tier
from serve_app.mask_cache import RUN_THE_MODEL
from serve_app.resize import to_model_input
from tests.support.reference import reference_remover
from tests.support.serve_run import wait_until_ready

PORT = 8797


def cpu_config_args() -> dict[str, Any]:
    """The CPU config's builder args, with each tier's batching from its `deployments:` user_config (which
    `serve run configs/cpu.yaml` applies and serve.run here would not)."""
    application = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())["applications"][0]
    args: dict[str, Any] = application["args"]
    for deployment in application.get("deployments", []):
        if deployment["name"] in args["tiers"] and "user_config" in deployment:
            args["tiers"][deployment["name"]]["batching"] = deployment["user_config"]
    return args


def start_service(weights: str, runtimes: dict[str, str], tiers: list[str], weights_dir: Path) -> None:
    import ray
    from ray import serve

    from deployments.app import build_app
    from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
    from serve_app.schemas import AppConfig

    args = cpu_config_args()
    args["tiers"] = {t: {**args["tiers"][t], "weights": weights, "runtime": runtimes[t]} for t in tiers}
    args["default_tier"] = tiers[0]
    args["weights_dir"] = str(weights_dir)  # where the onnx runtime finds its export
    # As scripts/serve.sh starts the CPU config: the proxy guard, configs/cpu.env's settings, the dashboard on.
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_CALLBACK)
    for line in (ROOT / "configs/cpu.env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, value = line.split("=", 1)
            os.environ.setdefault(name, value)
    ray.init(address="local", include_dashboard=True, log_to_driver=False)  # its own Ray, never one running here
    serve.start(http_options={"host": "127.0.0.1", "port": PORT, "request_timeout_s": 900})
    serve.run(build_app(AppConfig.model_validate(args)), name="bench", route_prefix="/")


def request(client: httpx.Client, data: bytes, tier: str, effect: str) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    response = client.post("/v1/remove", params={"tier": tier, "effect": effect}, content=data, headers=RUN_THE_MODEL)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    steps = {k: float(v) / 1000 for k, v in (p.split(";dur=") for p in response.headers["server-timing"].split(", "))}
    return seconds, steps


def load(client: httpx.Client, uploads: list[bytes], tier: str, effect: str, concurrency: int, count: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: request(client, uploads[i % len(uploads)], tier, effect), range(count)))
    wall = time.perf_counter() - started
    latencies = sorted(r[0] for r in results)
    steps = {k: statistics.mean(r[1][k] for r in results) for k in results[0][1]}
    return {
        "concurrency": concurrency,
        "requests": count,
        "images_per_s": count / wall,
        "p50_s": latencies[len(latencies) // 2],
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "steps_s": steps,
    }


def bare_runtime(tier: str, runtime_name: str, weights: str, weights_dir: Path, count: int) -> float:
    """Images/s of the runtime alone, batch 1, on the photos resized as the ingress sends them."""
    served = served_tier(tier, weights, runtime_name, weights_dir)
    runtime = load_runtime(served)
    inputs = [to_model_input(photo_1080p(p), served.resize, served.base_size)[None] for p in PHOTOS[:count]]
    runtime.predict(inputs[0])
    started = time.perf_counter()
    for x in inputs * 2:  # two passes: a steadier number on a noisy box
        runtime.predict(x)
    return 2 * len(inputs) / (time.perf_counter() - started)


def remover_seconds(tier: str, weights: str, photos: list[np.ndarray], effect: str) -> float:
    from PIL import Image

    kind = "map" if effect == "mask" else effect
    with reference_remover(Tier(tier), Path(weights)) as remover:
        remover.process(Image.fromarray(photos[0]), type=kind)
        started = time.perf_counter()
        for photo in photos:
            remover.process(Image.fromarray(photo), type=kind)
        return (time.perf_counter() - started) / len(photos)


def measure_round(
    args: argparse.Namespace,
    runtimes: dict[str, str],
    weights_dir: Path,
    photos: list[np.ndarray],
    uploads: list[bytes],
) -> list[dict[str, Any]]:
    """One round: the service up, every tier/effect/concurrency over HTTP; the bare runtime beside the idle service;
    Ray stopped; the bare runtime alone and Remover, each row with its ratios to them."""
    tiers = args.tiers.split(",")
    start_service(args.weights, runtimes, tiers, weights_dir)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=900) as client:
        wait_until_ready(client)  # the ingress's view of its tiers follows serve.run by up to a second
        for tier in tiers:
            for effect in args.effects.split(","):
                request(client, uploads[0], tier, effect)  # warm-up
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    count = max(args.photos, 2 * concurrency)
                    row = {
                        "tier": tier,
                        "effect": effect,
                        "runtime": runtimes[tier],
                        **load(client, uploads, tier, effect, concurrency, count),
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    import ray
    from ray import serve

    # The service idles (its replicas keep their models) while the same runtime runs here: what Ray's own
    # processes take from the model on this box, before any request goes through it.
    beside = {t: bare_runtime(t, runtimes[t], args.weights, weights_dir, args.photos) for t in tiers}
    serve.shutdown()
    ray.shutdown()
    for tier in tiers:
        bare = bare_runtime(tier, runtimes[tier], args.weights, weights_dir, args.photos)
        for effect in args.effects.split(","):
            remover = remover_seconds(tier, args.weights, photos, effect)
            for row in (r for r in rows if r["tier"] == tier and r["effect"] == effect):
                row["bare_runtime_images_per_s"] = bare
                row["bare_beside_service_images_per_s"] = beside[tier]
                row["overhead"] = 1 - row["images_per_s"] / bare
                row["ray_presence_cost"] = 1 - beside[tier] / bare
                row["request_path_overhead"] = 1 - row["images_per_s"] / beside[tier]
                row["remover_seconds_per_image"] = remover
                row["speedup_vs_remover"] = remover * row["images_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", default="fast")
    parser.add_argument("--effects", default="mask,rgba")
    parser.add_argument(
        "--runtime", action="append", default=[], help="TIER=RUNTIME (default: the tier's in configs/cpu.yaml)"
    )
    parser.add_argument(
        "--weights-dir", type=Path, default=None, help="where ONNX exports and OpenVINO's converted models live"
    )
    parser.add_argument("--weights", default=None)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the whole measurement; the ratios' medians are reported"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        args.weights = str(segmenting_checkpoint()[0])
    configured = {tier: settings.get("runtime", "eager") for tier, settings in cpu_config_args()["tiers"].items()}
    runtimes: dict[str, str] = {**configured, **dict(r.split("=") for r in args.runtime)}
    weights_dir = args.weights_dir or Path(tempfile.mkdtemp())
    photos = [photo_1080p(p) for p in PHOTOS[: args.photos]]
    uploads = [jpeg(p) for p in photos]  # made once: every round sends the same bytes
    rows = []
    for number in range(1, args.rounds + 1):
        rows += [{"round": number, **row} for row in measure_round(args, runtimes, weights_dir, photos, uploads)]
    report = {"rows": rows, "weights": args.weights, "cpus": os.cpu_count(), "when": time.strftime("%F %T")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2))
    table = rows_table(rows) + "\n\nSteps in ms (means of Server-Timing). 1920x1080 JPEGs, configs/cpu.yaml.\n"
    if args.rounds > 1:
        table += "\n" + medians_table(rows) + "\n"
    (args.out / "serve.md").write_text(table)
    print(table)
    chart(rows, args.out / "serve.png")


def rows_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | tier | effect | runtime | concurrency | p50 s | p95 s | images/s | bare runtime images/s (alone /"
        " beside the idle service) | overhead | of which Ray idling / request path | Remover s/image | vs Remover |"
        " decode | resize | queue | model | upsample | effect | encode |",
        "|" + "---|" * 20,
    ]
    for r in rows:
        s = r["steps_s"]
        lines.append(
            f"| {r['round']} | {r['tier']} | {r['effect']} | {r['runtime']} | {r['concurrency']} | {r['p50_s']:.2f}"
            f" | {r['p95_s']:.2f} | {r['images_per_s']:.2f} | {r['bare_runtime_images_per_s']:.2f}"
            f" / {r['bare_beside_service_images_per_s']:.2f}"
            f" | {r['overhead']:.0%} | {r['ray_presence_cost']:.0%} / {r['request_path_overhead']:.0%} |"
            f" {r['remover_seconds_per_image']:.2f} | {r['speedup_vs_remover']:.2f}x | "
            + " | ".join(
                f"{s[k] * 1000:.0f}" for k in ("decode", "resize", "queue", "model", "upsample", "effect", "encode")
            )
            + " |"
        )
    return "\n".join(lines)


def medians_table(rows: list[dict[str, Any]]) -> str:
    """Per tier, effect and concurrency: each ratio's median over the rounds, with its range (the machine's speed
    drifts between rounds; every ratio is taken within one round)."""

    def spread(values: list[float], form: str, unit: str = "") -> str:
        low, middle, high = (format(v, form) for v in (min(values), statistics.median(values), max(values)))
        return f"{middle}{unit} ({low}-{high})"

    lines = [
        f"Medians over {len({r['round'] for r in rows})} rounds (range in brackets):",
        "",
        "| tier | effect | runtime | concurrency | vs Remover | overhead | Ray idling | request path |",
        "|" + "---|" * 8,
    ]
    for key in dict.fromkeys((r["tier"], r["effect"], r["runtime"], r["concurrency"]) for r in rows):
        mine = [r for r in rows if (r["tier"], r["effect"], r["runtime"], r["concurrency"]) == key]
        cells = [spread([r["speedup_vs_remover"] for r in mine], ".2f", "x")]
        cells += [
            spread([r[k] for r in mine], ".0%") for k in ("overhead", "ray_presence_cost", "request_path_overhead")
        ]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in sorted({(r["tier"], r["effect"]) for r in rows}):
        mine = [r for r in rows if (r["tier"], r["effect"]) == key]
        levels = sorted({r["concurrency"] for r in mine})  # medians over the rounds
        rates = [statistics.median(r["images_per_s"] for r in mine if r["concurrency"] == c) for c in levels]
        ax.plot(levels, rates, "o-", label=f"{key[0]} {key[1]}")
        remover = statistics.median(r["remover_seconds_per_image"] for r in mine)
        ax.axhline(1 / remover, linestyle=":", color=ax.lines[-1].get_color())
    ax.set(xscale="log", xlabel="concurrent requests", ylabel="images/s", title="HTTP images/s (dotted: Remover)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
