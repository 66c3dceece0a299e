"""What decoding a JPEG at reduced size (Pillow's ``draft``, the JPEG decoder's DCT scaling) would buy the ingress,
and what it would cost the mask, measured in one run. Not used by the service: its masks would no longer be
``Remover``'s.

    python -m bench.jpeg_draft

Speed: decode and resize of 1920x1080 JPEGs (quality 92) to the fast tier's 384x384, as the ingress does it
(``decode_image`` then ``to_model_input``), against ``draft`` then the same resize; medians of ``--repeats``.

Parity: the segmenting test weights segment small inputs only, so the mask is compared at the same decode scale on
a smaller scene: 640x360 composites (tests/support/scenes.py) to 128x128, where ``draft`` decodes at 1/2, as it does
1920x1080 for 384x384. Eager fp32 on both inputs; the exact bound is max abs <= 1e-4 (serve_app/runtimes/parity.py).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import PHOTOS, jpeg, load_runtime, photo_1080p, served_tier
from serve_app.codec import decode_image
from serve_app.resize import StaticResize, to_model_input
from serve_app.runtimes.parity import EXACT_MAX_ABS, iou

FAST_SIZE = 384
PARITY_SIZE, PARITY_HEIGHT, PARITY_WIDTH = 128, 360, 640  # the same 1/2 decode scale as 1920x1080 -> 384


def full_decode(data: bytes, size: int) -> np.ndarray:
    """The ingress's path: the whole photo decoded, then resized to the model's square."""
    return to_model_input(decode_image(data, max_pixels=10**9), StaticResize(), size)


def draft_decode(data: bytes, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The JPEG decoded at the smallest DCT scale still at least ``size`` on each side, then resized the same way."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))
    image.load()
    return to_model_input(np.asarray(image.convert("RGB")), StaticResize(), size), image.size


def median_ms(step: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scenes", type=int, default=6)
    args = parser.parse_args()

    print(f"decode + resize of a 1920x1080 JPEG to {FAST_SIZE}x{FAST_SIZE}, median of {args.repeats}:")
    print("| photo | full decode ms | draft ms | decoded at | input max abs (grey levels) |")
    print("|---|---|---|---|---|")
    for name in PHOTOS[:4]:
        data = jpeg(photo_1080p(name))
        full, (drafted, decoded_at) = full_decode(data, FAST_SIZE), draft_decode(data, FAST_SIZE)
        difference = int(np.abs(full.astype(np.int16) - drafted.astype(np.int16)).max())
        full_ms = median_ms(partial(full_decode, data, FAST_SIZE), args.repeats)
        draft_ms = median_ms(partial(draft_decode, data, FAST_SIZE), args.repeats)
        print(f"| {name} | {full_ms:.1f} | {draft_ms:.1f} | {decoded_at[0]}x{decoded_at[1]} | {difference} |")

    from tests.support import scenes
    from tests.support.segmenting_weights import segmenting_checkpoint

    tier = served_tier("fast", str(segmenting_checkpoint()[0]), "eager", Path("/tmp"), base_size=PARITY_SIZE)
    runtime = load_runtime(tier)
    print(
        f"\nmask, eager fp32 at {PARITY_SIZE}, {PARITY_WIDTH}x{PARITY_HEIGHT} scenes as JPEG "
        f"(exact bound {EXACT_MAX_ABS:g}):"
    )
    print("| scene | decoded at | mask max abs | mean abs | IoU at 0.5 |")
    print("|---|---|---|---|---|")
    for index, scene in enumerate(
        scenes.make_scenes(seed=5, count=args.scenes, height=PARITY_HEIGHT, width=PARITY_WIDTH)
    ):
        data = jpeg(scene.image)
        drafted, decoded_at = draft_decode(data, PARITY_SIZE)
        full_mask = runtime.predict(full_decode(data, PARITY_SIZE)[None])[0]
        draft_mask = runtime.predict(drafted[None])[0]
        difference = np.abs(full_mask - draft_mask)
        overlap = iou(full_mask > 0.5, draft_mask > 0.5)
        print(
            f"| {index} | {decoded_at[0]}x{decoded_at[1]} | {difference.max():.4f} | {difference.mean():.5f} "
            f"| {overlap:.4f} |"
        )


if __name__ == "__main__":
    main()
