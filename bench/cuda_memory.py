"""GPU memory of each tier at the batch size `serve_config.yaml` gives it, with cuDNN autotuning on and off.

For each (tier, runtime, cudnn_benchmark), in a fresh process (cuDNN's choices and the allocator are per process):
the peak allocated during the first call of that shape (where autotuning tries kernels with large workspaces),
what the allocator still holds afterwards (what the other tiers on the card cannot use), the steady peak of later
calls, and seconds per image. Timings and memory only, so untrained weights do (the cost is the same).

    python -m bench.cuda_memory                       # fast 8, balanced 2, quality 1 images a batch; eager
    python -m bench.cuda_memory --runtimes eager,bf16 --out bench/results/cuda-memory.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, load_runtime, model_inputs, run_worker, served_tier

SERVICE_BATCH = {"fast": 8, "balanced": 2, "quality": 1}  # serve_config.yaml's max_batch_size per tier


def measure(tier: str, runtime_name: str, cudnn_benchmark: bool, repeats: int) -> dict[str, Any]:
    import torch

    served = served_tier(tier, "untrained", runtime_name, Path("/tmp/bgserve-cuda-memory"), "cuda")
    served.config = served.config.model_copy(update={"cudnn_benchmark": cudnn_benchmark})
    runtime = load_runtime(served)
    images = model_inputs(tier, SERVICE_BATCH[tier])
    gib = 2**30
    torch.cuda.synchronize()
    after_load = torch.cuda.memory_allocated() / gib
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    runtime.predict(images)
    first_call = time.perf_counter() - started
    first_peak = torch.cuda.max_memory_allocated() / gib
    held = torch.cuda.memory_reserved() / gib
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runtime.predict(images)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {
        "tier": tier,
        "runtime": runtime_name,
        "batch": len(images),
        "cudnn_benchmark": cudnn_benchmark,
        "weights_gib": after_load,
        "first_call_peak_gib": first_peak,
        "held_after_first_call_gib": held,
        "steady_peak_gib": torch.cuda.max_memory_allocated() / gib,
        "first_call_s": first_call,
        "seconds_per_image": statistics.median(times) / len(images),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiers", default="fast,balanced,quality")
    parser.add_argument("--runtimes", default="eager")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/cuda-memory.json")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        tier, runtime, benchmark = args.worker
        print(json.dumps(measure(tier, runtime, benchmark == "on", args.repeats)))
        return
    rows = []
    for tier in args.tiers.split(","):
        for runtime in args.runtimes.split(","):
            for benchmark in ("on", "off"):
                argv = ["--worker", tier, runtime, benchmark, "--repeats", str(args.repeats)]
                row = run_worker("bench.cuda_memory", *argv)
                if "error" in row:
                    row.update(tier=tier, runtime=runtime, cudnn=benchmark)
                rows.append(row)
                print(json.dumps(row), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
