"""What each output costs the ingress after the model: upsample the mask, apply the effect, encode, as
``serve_app.pipeline.postprocess`` does for a request, on a 1920x1080 image with a soft edge (the synthetic
composite of tests/support/scenes.py, whose mask comes at a 384x384 model size). Side by side in one run,
median of --repeats:

    python -m bench.effects [--repeats 7]

It prints each case's milliseconds and, for rgba, what it adds over mask."""

from __future__ import annotations

import argparse
import statistics
import time

import cv2

from serve_app.effects import warm_up_matting
from serve_app.pipeline import postprocess
from serve_app.schemas import RemoveParams
from tests.support.scenes import soft_composite

CASES: list[tuple[str, dict[str, str]]] = [
    ("mask png", {"effect": "mask"}),
    ("rgba png, refine=none", {"effect": "rgba", "refine": "none"}),
    ("rgba png, refine=fast (default)", {"effect": "rgba"}),
    ("rgba png, refine=full (Remover's)", {"effect": "rgba", "refine": "full"}),
    ("rgba webp", {"effect": "rgba", "format": "webp"}),
    ("rgba webp lossless", {"effect": "rgba", "format": "webp", "lossless": "true"}),
    ("color png", {"effect": "color", "color": "white"}),
    ("color jpeg", {"effect": "color", "color": "white", "format": "jpeg"}),
    ("color png, translucent", {"effect": "color", "color": "0,0,255,128"}),
    ("green png", {"effect": "green"}),
    ("white jpeg", {"effect": "white", "format": "jpeg"}),
    ("blur png", {"effect": "blur"}),
    ("overlay png", {"effect": "overlay"}),
    ("background png", {"effect": "background"}),
    ("rgba png, crop=true", {"effect": "rgba", "crop": "true"}),
    ("outputs=rgba,white:jpeg,mask (zip)", {"outputs": "rgba,white:jpeg,mask"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    composite = soft_composite(seed=0)
    model_mask = cv2.resize(composite.alpha, (384, 384), interpolation=cv2.INTER_AREA)
    background = composite.image[::-1, ::-1].copy()  # a second photo-sized image, for effect=background
    warm_up_matting()
    medians: dict[str, float] = {}
    for name, query in CASES:
        params = RemoveParams(**query)
        postprocess(composite.image, model_mask, params, background)  # first call: lazy imports, numba's kernels
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            postprocess(composite.image, model_mask, params, background)
            seconds.append(time.perf_counter() - started)
        medians[name] = statistics.median(seconds)
    mask = medians["mask png"]
    print(f"1920x1080, postprocess (upsample + effect + encode), median of {args.repeats}")
    for name, seconds in medians.items():
        over = f"  (+{(seconds - mask) * 1000:.0f} ms over mask)" if name.startswith("rgba") else ""
        print(f"{name:36s} {seconds * 1000:7.1f} ms{over}")
    print(f"rgba refine=full / refine=fast: {medians[CASES[3][0]] / medians[CASES[2][0]]:.2f}x")


if __name__ == "__main__":
    main()
