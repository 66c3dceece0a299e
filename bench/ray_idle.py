"""What an idle Serve app costs the model on this machine: the bare runtime's images/s (batch 1, 1920x1080 photos
resized as the ingress does) alone, then beside the running but idle service, alternated ``--cycles`` times so
drift of a shared machine hits both alike.

    python -m bench.ray_idle --runtime onnx --weights-dir /tmp/bw      # needs the fast tier's ONNX export there
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bench.serve import bare_runtime, start_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="fast")
    parser.add_argument("--runtime", default="eager")
    parser.add_argument("--weights", default=None, help="default: the segmenting test weights")
    parser.add_argument("--weights-dir", type=Path, default=Path("/tmp"), help="where ONNX exports live (onnx)")
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=3)
    args = parser.parse_args()
    if args.weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        args.weights = str(segmenting_checkpoint()[0])
    import ray
    from ray import serve

    alone: list[float] = []
    beside: list[float] = []
    for cycle in range(args.cycles):
        alone.append(bare_runtime(args.tier, args.runtime, args.weights, args.weights_dir, args.photos))
        start_service(args.weights, {args.tier: args.runtime}, [args.tier], args.weights_dir)
        time.sleep(5)  # past start-up: the service is idle
        beside.append(bare_runtime(args.tier, args.runtime, args.weights, args.weights_dir, args.photos))
        serve.shutdown()
        ray.shutdown()
        print(json.dumps({"cycle": cycle, "alone_images_per_s": alone[-1], "beside_images_per_s": beside[-1]}))
    costs = [1 - b / a for a, b in zip(alone, beside, strict=True)]
    print(
        f"images/s alone {statistics.median(alone):.3f}, beside the idle service {statistics.median(beside):.3f}; "
        f"cost per cycle {', '.join(f'{c:.0%}' for c in costs)} (median {statistics.median(costs):.0%})"
    )


if __name__ == "__main__":
    main()
