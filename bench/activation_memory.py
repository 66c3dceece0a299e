"""Estimate each tier's memory need from peak RSS on the CPU (no GPU here): weights + activations of one batch.

Each (size, batch) runs in a fresh process so ru_maxrss is that run's peak. The tensors an inference keeps alive
are the same on CUDA; add the CUDA context (~0.5 GB) and allocator slack to size a GPU share.

    python -m bench.activation_memory            # prints a Markdown table
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

CASES = [  # (label, height, width, batch)
    ("fast 384", 384, 384, 1),
    ("fast 384", 384, 384, 8),
    ("balanced 1024", 1024, 1024, 1),
    ("balanced 1024", 1024, 1024, 2),
    ("quality 1088x1920 (a 1080p photo)", 1088, 1920, 1),
    ("quality 1280x2272 (a 4K photo)", 1280, 2272, 1),
]


def measure(height: int, width: int, batch: int) -> dict[str, float]:
    import numpy as np

    from serve_app.runtimes import RuntimeSettings, create_runtime
    from serve_app.weights import ResolvedWeights

    runtime = create_runtime("eager", RuntimeSettings(ResolvedWeights(None, "untrained"), 1024, "cpu"))
    runtime.load()
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    images = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    started = time.perf_counter()
    runtime.predict(images)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"loaded_gb": loaded, "peak_gb": peak, "activations_gb": peak - loaded, "seconds": seconds}


def main() -> None:
    if len(sys.argv) == 4:
        print(json.dumps(measure(*(int(a) for a in sys.argv[1:]))))
        return
    print("| case | batch | RSS after load (GB) | peak RSS (GB) | activations (GB) | seconds |")
    print("|---|---|---|---|---|---|")
    for label, height, width, batch in CASES:
        out = subprocess.run(
            [sys.executable, "-m", "bench.activation_memory", str(height), str(width), str(batch)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {label} | {batch} | {r['loaded_gb']:.2f} | {r['peak_gb']:.2f} | {r['activations_gb']:.2f} | "
            f"{r['seconds']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
