"""Runtime benchmark: every runtime of every tier, held to eager fp32, in one run.

For each tier and runtime and batch size: seconds per image, images/s, peak memory (RSS; GPU memory on CUDA),
parity with eager fp32 (max/mean abs, IoU), and the ratio to eager measured in the same run. Next to them, the
seed's baseline: ``transparent_background.Remover(mode=...).process()`` on the same 1920x1080 photo and weights.
Each (tier, runtime) runs in a fresh process, so peak memory is its own.

    python -m bench.runtimes                                   # CPU defaults (see --help), ~30 min on 2 cores
    python -m bench.runtimes --device cuda --runtimes eager,fp16,bf16,torchscript --repeats 5   # batches 1..32
    python -m bench.runtimes --record ~/.cache/bgserve/weights/runtime-measurements.json   # feeds runtime: auto

Writes ``<out>/runtimes.json``, ``runtimes.md`` and ``runtimes.png``. Without --weights it uses the segmenting test
weights (same architecture and cost as the real checkpoints; parity on them is meaningful, unlike untrained).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, load_runtime, model_inputs, photo_1080p, run_worker, served_tier

PARITY_FALLBACK_SIZE = 128


def saturated(masks: np.ndarray) -> bool:
    return bool(np.mean((masks > 0.001) & (masks < 0.999)) < 0.002)


def parity_inputs(images: np.ndarray) -> np.ndarray:
    """Synthetic scenes the test weights segment with soft edges, beside two photos. On photos alone these weights
    saturate (masks of exactly 0 and 1), which would hide any difference between runtimes."""
    from tests.support.scenes import make_scenes

    height, width = images.shape[1:3]
    scenes = [s.image for s in make_scenes(seed=7, count=2, height=height, width=width)]
    return np.stack([*scenes, *images[:2]])


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One (tier, runtime) in this process: load, time each batch size, compare with eager's masks."""
    import torch

    from serve_app.export import export
    from serve_app.runtimes.onnx_artifacts import EXPORT_DIR, export_paths
    from serve_app.runtimes.parity import compare
    from serve_app.weights import resolve

    def make(base_size: int | None) -> tuple[Any, float | None, float]:
        """The runtime as the service builds it (exports under the scratch directory, made here if missing)."""
        tier = served_tier(args.tier, args.weights, args.runtime, Path(args.scratch), args.device, base_size)
        export_seconds = None
        if args.runtime in ("onnx", "onnx_int8"):
            weights = resolve(tier.spec.checkpoint, args.weights, tier.weights_dir)
            export_dir = tier.weights_dir / EXPORT_DIR
            if not export_paths(export_dir, weights, tier.base_size)[0].exists():
                started = time.perf_counter()
                export(tier.tier, weights, tier.base_size, export_dir)
                export_seconds = time.perf_counter() - started
        started = time.perf_counter()
        runtime = load_runtime(tier)
        return runtime, export_seconds, time.perf_counter() - started

    runtime, export_seconds, load_seconds = make(args.base_size)
    batches = [int(b) for b in args.batches.split(",")]
    images = model_inputs(args.tier, max(batches), args.base_size)
    rows = []
    reference_file = Path(args.scratch) / f"eager-{args.tier}.npy"
    cuda = args.device == "cuda"
    for batch in batches:
        if cuda:  # this batch size's own peak: what a replica serving it needs
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        runtime.predict(images[:batch])  # warm-up: kernels, allocator, cuDNN autotune, trace or compile
        first_call = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            masks = runtime.predict(images[:batch])
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        per_image = statistics.median(times) / batch
        row = {"batch": batch, "seconds_per_image": per_image, "images_per_s": 1 / per_image}
        row["first_call_seconds"] = first_call
        if cuda:
            row["gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            row["gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        rows.append(row)
    # Parity at the tier's size, unless eager's masks saturate there (almost all exactly 0 or 1: any runtime would
    # "match"), as the test weights do away from the 128 px they were trained at; then at 128 px, where they are
    # soft. Eager decides and leaves its reference at the size it chose; the others follow it.
    fallback_file = reference_file.with_name(f"eager-{args.tier}-{PARITY_FALLBACK_SIZE}.npy")
    parity_size = runtime.settings.base_size
    masks = None
    if not fallback_file.exists():
        masks = runtime.predict(parity_inputs(images))
        if args.runtime == "eager" and saturated(masks):
            masks = None
    if masks is None:
        parity_size = PARITY_FALLBACK_SIZE
        runtime = make(parity_size)[0]
        masks = runtime.predict(parity_inputs(model_inputs(args.tier, 2, parity_size)))
        reference_file = fallback_file
    if args.runtime == "eager":
        np.save(reference_file, masks)
    parity = compare(type(runtime), np.load(reference_file), masks)
    used_mb = None
    if args.device == "cuda":  # in use on the whole card at the end: this process's footprint where it is alone there
        free, total = torch.cuda.mem_get_info()
        used_mb = (total - free) / 2**20
    return {
        "tier": args.tier,
        "runtime": args.runtime,
        "device": args.device,
        "device_used_mb": used_mb,
        "rows": rows,
        "peak_memory_mb": peak_memory_mb(args.device),
        "load_seconds": load_seconds,
        "export_seconds": export_seconds,
        "parity": {**parity.__dict__, "size": parity_size},
    }


def remover_worker(args: argparse.Namespace) -> dict[str, Any]:
    from PIL import Image

    from serve_app.catalogue import Tier
    from tests.support.reference import reference_remover

    with reference_remover(Tier(args.tier), Path(args.weights), args.base_size, args.device) as remover:
        image = Image.fromarray(photo_1080p())
        remover.process(image, type="map")
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            remover.process(image, type="map")
            times.append(time.perf_counter() - started)
    return {
        "tier": args.tier,
        "seconds_per_image": statistics.median(times),
        "peak_memory_mb": peak_memory_mb(args.device),
    }


def markdown(results: list[dict[str, Any]], baselines: dict[str, dict[str, Any]], device_name: str) -> str:
    lines = [
        f"Device: {device_name}. Seconds per image (median), images/s, ratio to eager fp32 at the same batch "
        "size in this run; parity on scenes and photos vs eager, at the tier's size unless the masks saturate there "
        "(the test weights do away from 128 px), then at 128 px.",
        "",
        "On CUDA, peak MB is that batch size's own peak (allocated / reserved by PyTorch's allocator, without the "
        "CUDA context); first call is the untimed warm-up of that batch size (cuDNN autotune, trace or compile).",
        "",
        "| tier | runtime | batch | s/image | images/s | vs eager | peak MB | first call s | max abs | mean abs | IoU "
        "| holds | at px |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    eager = {
        (r["tier"], row["batch"]): row["seconds_per_image"]
        for r in results
        if r.get("runtime") == "eager" and "rows" in r
        for row in r["rows"]
    }
    for r in results:
        if "rows" not in r:
            lines.append(f"| {r['tier']} | {r['runtime']} | – | failed: {r['error'].splitlines()[-1][:80]} |")
            continue
        p = r["parity"]
        for row in r["rows"]:
            ratio = eager.get((r["tier"], row["batch"]), float("nan")) / row["seconds_per_image"]
            peak = (
                f"{row['gpu_allocated_mb']:.0f} / {row['gpu_reserved_mb']:.0f}"
                if "gpu_allocated_mb" in row
                else f"{r['peak_memory_mb']:.0f}"
            )
            lines.append(
                f"| {r['tier']} | {r['runtime']} | {row['batch']} | {row['seconds_per_image']:.4f} | "
                f"{row['images_per_s']:.2f} | {ratio:.2f}x | {peak} | {row.get('first_call_seconds', float('nan')):.2f}"
                f" | {p['max_abs']:.2e} | {p['mean_abs']:.2e} | {p['iou']:.4f} | {'yes' if p['holds'] else 'NO'} |"
                f" {p['size']} |"
            )
    lines += [
        "",
        "Baseline, `transparent_background.Remover(mode).process(photo, type='map')` on the same 1920x1080 "
        "photo and weights (resize, model and upsample included):",
        "",
        "| tier | s/image | peak MB |",
        "|---|---|---|",
    ]
    for tier, b in baselines.items():
        lines.append(
            f"| {tier} | {b['seconds_per_image']:.3f} | {b['peak_memory_mb']:.0f} |"
            if "seconds_per_image" in b
            else f"| {tier} | failed | |"
        )
    return "\n".join(lines) + "\n"


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = sorted({r["tier"] for r in results if "rows" in r}, key=["fast", "balanced", "quality"].index)
    if not tiers:  # everything failed: the Markdown says why
        return
    fig, axes = plt.subplots(1, len(tiers), figsize=(5 * len(tiers), 4), squeeze=False)
    for ax, tier in zip(axes[0], tiers, strict=True):
        for r in results:
            if r.get("tier") == tier and "rows" in r:
                ax.plot(
                    [row["batch"] for row in r["rows"]],
                    [row["images_per_s"] for row in r["rows"]],
                    "o-",
                    label=r["runtime"],
                )
        ax.set(title=tier, xlabel="batch size", ylabel="images/s")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def device_name(device: str) -> str:
    import torch

    from serve_app.runtimes.auto import device_signature

    return device_signature(torch.device(device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", default="fast,balanced,quality")
    parser.add_argument("--runtimes", default="eager,openvino,onnx,torchscript,bf16,int8")
    parser.add_argument("--batches", default=None, help="default: 1,2,4,8,16,32 on CUDA; on CPU 1,2,4 for fast, else 1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="a checkpoint path, or untrained; default: test weights")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--record", type=Path, default=None, help="append measurements for runtime: auto")
    parser.add_argument("--no-remover", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("TIER", "RUNTIME"), help=argparse.SUPPRESS)
    parser.add_argument("--remover-worker", metavar="TIER", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument(
        "--base-size", type=int, help="one model input side for every tier (rehearsals); default: each tier's"
    )
    args = parser.parse_args()
    if args.worker:
        args.tier, args.runtime = args.worker
        print(json.dumps(worker(args)))
        return
    if args.remover_worker:
        args.tier = args.remover_worker
        print(json.dumps(remover_worker(args)))
        return
    if args.weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        args.weights = str(segmenting_checkpoint()[0])
    runtimes = args.runtimes.split(",")
    runtimes = ["eager", *[r for r in runtimes if r != "eager"]]  # eager first: the others compare with it
    name = device_name(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    baselines: dict[str, dict[str, Any]] = {}
    report = {
        "device": name,
        "weights": args.weights,
        "repeats": args.repeats,
        "results": results,
        "remover": baselines,
    }

    def save() -> None:  # after every child: a run cut short (a device lease) keeps what it measured
        report["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        (args.out / "runtimes.json").write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory() as scratch:
        for tier in args.tiers.split(","):
            batches = args.batches or ("1,2,4,8,16,32" if args.device == "cuda" else "1,2,4" if tier == "fast" else "1")
            common = [
                "--scratch",
                scratch,
                "--weights",
                args.weights,
                "--device",
                args.device,
                "--repeats",
                str(args.repeats),
                "--batches",
                batches,
                *(["--base-size", str(args.base_size)] if args.base_size else []),
            ]
            for runtime in runtimes:
                result = run_worker("bench.runtimes", "--worker", tier, runtime, *common)
                result.setdefault("tier", tier)
                result.setdefault("runtime", runtime)
                results.append(result)
                save()
                print(json.dumps(result)[:400], flush=True)
            if not args.no_remover and args.weights != "untrained":
                baselines[tier] = run_worker("bench.runtimes", "--remover-worker", tier, *common)
                save()
                print(tier, "Remover", baselines[tier], flush=True)
    save()
    (args.out / "runtimes.md").write_text(markdown(results, baselines, name))
    chart(results, args.out / "runtimes.png")
    print(markdown(results, baselines, name))
    if args.record:
        from serve_app.runtimes.auto import load_measurements

        measurements = load_measurements(args.record)
        measurements += [
            {
                "device": name,
                "tier": r["tier"],
                "runtime": r["runtime"],
                "batch": row["batch"],
                "seconds_per_image": row["seconds_per_image"],
                "holds_parity": r["parity"]["holds"],
                "measured_at": report["when"],
            }
            for r in results
            if "rows" in r
            for row in r["rows"]
        ]
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps({"measurements": measurements}, indent=2))
        print(f"recorded {len(measurements)} measurements in {args.record}")


if __name__ == "__main__":
    main()
