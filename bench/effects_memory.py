"""Peak memory of the ingress's work after the model, per output, in bytes per pixel of the photo: what one CPU
thread of the ingress holds while it upsamples, applies the effect and encodes (``serve_app.pipeline.postprocess``).
The input is bench.effects's: tests/support/scenes.py's composite with a soft edge, its mask at the fast tier's
384x384. One fresh process per case, its RSS before and its peak during (numpy, numba and the encoders' own buffers all
count; the peak is reset first, Linux's /proc/self/clear_refs):

    python -m bench.effects_memory [--megapixels 12]

docs/operations.md sizes an ingress with these figures (the pixel budget counts held images at 3 bytes a pixel)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CASES: dict[str, dict[str, str]] = {
    "mask png": {"effect": "mask"},
    "rgba png (refine=fast)": {"effect": "rgba"},
    "rgba png (refine=fast), soft mask": {"effect": "rgba"},  # the edge step works on the soft band: here most
    "rgba png, refine=full": {"effect": "rgba", "refine": "full"},
    "rgba webp": {"effect": "rgba", "format": "webp"},
    "blur png": {"effect": "blur"},
    "color jpeg": {"effect": "color", "format": "jpeg"},
    "background png": {"effect": "background"},  # a backdrop at half the photo's size, scaled to cover it
    "background png, transparent backdrop": {"effect": "background"},  # the same with an alpha channel
}


def status_kb(field: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def reset_peak_rss() -> int:
    """The RSS now, made the process's peak (Linux's clear_refs 5): what making the input took is not counted."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def one_case(name: str, megapixels: float) -> dict[str, float]:
    import cv2
    import numpy as np

    from serve_app.effects import warm_up_matting
    from serve_app.pipeline import postprocess
    from serve_app.schemas import RemoveParams
    from tests.support.scenes import soft_composite

    warm_up_matting()  # its kernels' memory is the process's, not a request's
    height = int((megapixels * 1e6 * 3 / 4) ** 0.5)
    width = int(height * 4 / 3)
    composite = soft_composite(seed=0, height=height, width=width)
    mask = cv2.resize(composite.alpha, (384, 384), interpolation=cv2.INTER_AREA)
    if name.endswith("soft mask"):  # the worst case for the edge step's memory: alpha strictly between 0 and 1 almost
        mask = cv2.GaussianBlur(mask, (0, 0), 60)  # everywhere (a subject fading into its background)
    params = RemoveParams.model_validate(CASES[name])
    backdrop = None
    if params.needs_background:  # made before the peak is reset: the decoded upload, held as the image is
        channels = 4 if name.endswith("transparent backdrop") else 3
        backdrop = np.full((height // 2, width // 2, channels), 200, np.uint8)
        if channels == 4:
            backdrop[..., 3] = np.linspace(0, 255, width // 2).astype(np.uint8)
    before = reset_peak_rss()
    postprocess(composite.image, mask, params, backdrop)
    return {"bytes_per_pixel": (status_kb("VmHWM") - before) / (height * width), "width": width, "height": height}


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
        print(f"{name:36s} {result['bytes_per_pixel']:5.1f} bytes a pixel ({result['width']}x{result['height']})")


if __name__ == "__main__":
    main()
