"""Peak memory of the ingress's work after the model, per output, in bytes per pixel of the photo: what one CPU
thread of the ingress holds while it upsamples, applies the effect and encodes (``serve_app.pipeline.postprocess``).
One fresh process per case, its peak RSS before and after (numpy, numba and the encoders' own buffers all count):

    python -m bench.effects_memory [--megapixels 12]

docs/operations.md sizes an ingress with these figures (the pixel budget counts held images at 3 bytes a pixel)."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np

CASES: dict[str, dict[str, str]] = {
    "mask png": {"effect": "mask"},
    "rgba png (refine=fast)": {"effect": "rgba"},
    "rgba png, refine=full": {"effect": "rgba", "refine": "full"},
    "rgba webp": {"effect": "rgba", "format": "webp"},
    "blur png": {"effect": "blur"},
    "color jpeg": {"effect": "color", "format": "jpeg"},
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kB


def one_case(name: str, megapixels: float) -> dict[str, float]:
    from serve_app.effects import warm_up_matting
    from serve_app.pipeline import postprocess
    from serve_app.schemas import RemoveParams

    warm_up_matting()  # its kernels' memory is the process's, not a request's
    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(height * 4 / 3)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:384, 0:384]  # a soft disc, as a model's mask at the fast tier's size
    mask = (1 / (1 + np.exp(-((150 - np.hypot(yy - 192, xx - 192)) / 6)))).astype(np.float32)
    before = peak_rss()
    postprocess(image, mask, RemoveParams.model_validate(CASES[name]))
    return {"bytes_per_pixel": (peak_rss() - before) / (height * width), "width": width, "height": height}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", type=float, default=12.0)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case, args.megapixels)))
        return
    for name in CASES:
        command = [sys.executable, "-m", "bench.effects_memory", "--case", name, "--megapixels", str(args.megapixels)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:28s} {result['bytes_per_pixel']:5.1f} bytes a pixel ({result['width']}x{result['height']})")


if __name__ == "__main__":
    main()
