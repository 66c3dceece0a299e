"""Two shortcuts for the ingress's way to the model's input, what each would save and what it would change, in
one run: decoding a JPEG at reduced size (Pillow's ``draft``, the JPEG decoder's DCT scaling), and a faster resize
filter than the PIL bilinear that ``Remover`` uses. Neither is used by the service: its masks would no longer be
``Remover``'s.

    python -m bench.input_shortcuts

Resize: the resize step alone, 1920x1080 to 384x384, PIL bilinear against faster filters (medians of
``--repeats``), with how far each moves the model's input.

Draft speed: decode and resize of 1920x1080 JPEGs (quality 92) to the fast tier's 384x384, as the ingress does it
(``decode_image`` then ``to_model_input``), against ``draft`` then the same resize; medians of ``--repeats``.

Parity: the segmenting test weights segment small inputs only, so the mask is compared at the same decode scale on
a smaller scene: 640x360 composites (tests/support/scenes.py) to 128x128, where ``draft`` decodes at 1/2, as it does
1920x1080 for 384x384. Eager fp32 on both inputs; the exact bound is max abs <= 1e-4 (serve_app/runtimes/parity.py).
"""

from __future__ import annotations

import argparse
import io
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import PHOTOS, jpeg, load_runtime, photo_1080p, served_tier, timed
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


def faster_filters() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Resizes to the fast tier's square that are not the one ``Remover`` uses."""
    import cv2

    size = (FAST_SIZE, FAST_SIZE)
    return {
        "PIL bilinear, reducing_gap=2": lambda image: np.asarray(
            Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        ),
        "OpenCV INTER_AREA": lambda image: cv2.resize(image, size, interpolation=cv2.INTER_AREA),
        "OpenCV INTER_LINEAR": lambda image: cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
        "PIL nearest": lambda image: np.asarray(Image.fromarray(image).resize(size, Image.Resampling.NEAREST)),
    }


def median_ms(step: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(step) for _ in range(repeats)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scenes", type=int, default=6)
    args = parser.parse_args()

    photo = photo_1080p("rocket")
    exact_ms = median_ms(partial(to_model_input, photo, StaticResize(), FAST_SIZE), args.repeats)
    exact = to_model_input(photo, StaticResize(), FAST_SIZE)
    print(f"resize of a 1920x1080 photo to {FAST_SIZE}x{FAST_SIZE}, median of {args.repeats}:")
    print("| filter | ms | model input max abs / mean abs (grey levels) |")
    print("|---|---|---|")
    print(f"| PIL bilinear (the ingress's, Remover's) | {exact_ms:.2f} | 0 |")
    for name, resize in faster_filters().items():
        difference = np.abs(resize(photo).astype(np.int16) - exact.astype(np.int16))
        ms = median_ms(partial(resize, photo), args.repeats)
        print(f"| {name} | {ms:.2f} | {difference.max()} / {difference.mean():.2f} |")

    print(f"\ndecode + resize of a 1920x1080 JPEG to {FAST_SIZE}x{FAST_SIZE}, median of {args.repeats}:")
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
