"""How close each runtime comes to what this CPU can compute: the model's arithmetic per image against the
machine's own fp32 matrix-product rate, measured in one run.

A runtime that already runs the model near the rate of a large fp32 matrix product cannot get much faster in fp32
on this machine; what is left is less arithmetic (reduced precision, fewer operations) or more cores.

    python -m bench.roofline                                     # fast tier: eager, openvino
    python -m bench.roofline --tier balanced --runtimes openvino --weights-dir /tmp/bw-ov

The model's arithmetic is counted by PyTorch's ``FlopCounterMode`` (two per multiply-add) at the tier's input
size for a 1920x1080 photo; the matrix product is ``torch.mm`` of two square fp32 matrices on the same number of
threads, best of five, measured before and after the runtimes.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.common import load_runtime, model_inputs, served_tier, timed
from serve_app.runtimes.base import Runtime


def model_gflop(base_size: int, height: int, width: int) -> float:
    """Floating-point operations of one image through the model, in GFLOP (multiply and add counted apart)."""
    from torch.utils.flop_counter import FlopCounterMode

    from serve_app.runtimes.inspyrenet import LogitsModel, build_model

    model = LogitsModel(build_model(base_size)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, height, width))
    return counter.get_total_flops() / 1e9


def matmul_gflops(size: int, threads: int) -> float:
    """fp32 GFLOP/s of ``torch.mm`` on two ``size``-square matrices, best of five: the rate this machine's
    optimised kernels reach on the easiest dense work there is."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * size**3 / best / 1e9


def seconds_per_image(runtime: Runtime, image: np.ndarray, repeats: int) -> float:
    runtime.predict(image)  # warm-up
    return statistics.median(timed(lambda: runtime.predict(image)) for _ in range(repeats))


def efficiency_rows(gflop: float, seconds: dict[str, float], peak: float) -> list[dict[str, float | str]]:
    """Per runtime: seconds per image, the GFLOP/s that makes, and that as a share of the matrix-product rate."""
    return [
        {"runtime": name, "seconds": s, "gflops": gflop / s, "of_peak": gflop / s / peak} for name, s in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="fast")
    parser.add_argument("--runtimes", default="eager,openvino")
    parser.add_argument("--weights", help="checkpoint (default: the segmenting test weights, same arithmetic)")
    parser.add_argument("--weights-dir", default="/tmp/bench-roofline", help="where converted models are kept")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matrix", type=int, default=4096, help="side of the square matrices")
    args = parser.parse_args()
    if args.weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        args.weights = str(segmenting_checkpoint()[0])

    image = model_inputs(args.tier, 1)
    height, width = image.shape[1:3]
    threads = os.cpu_count() or 1
    before = matmul_gflops(args.matrix, threads)
    seconds: dict[str, float] = {}
    base_size = 0
    for name in args.runtimes.split(","):
        runtime = load_runtime(served_tier(args.tier, args.weights, name, Path(args.weights_dir)))
        base_size = runtime.settings.base_size
        seconds[name] = seconds_per_image(runtime, image, args.repeats)
        del runtime
    after = matmul_gflops(args.matrix, threads)
    gflop = model_gflop(base_size, height, width)
    peak = max(before, after)

    print(f"{args.tier} tier, {height}x{width} input: {gflop:.1f} GFLOP per image")
    print(
        f"torch.mm fp32 {args.matrix}x{args.matrix}, {threads} threads: {before:.0f} GFLOP/s before, {after:.0f} after"
    )
    print("| runtime | s/image | GFLOP/s | of the matrix-product rate |")
    print("|---|---|---|---|")
    for row in efficiency_rows(gflop, seconds, peak):
        print(f"| {row['runtime']} | {row['seconds']:.3f} | {row['gflops']:.0f} | {row['of_peak']:.0%} |")


if __name__ == "__main__":
    main()
