"""The README's gallery of effects: one small image per effect, made by the service's own code
(``serve_app.pipeline.postprocess`` with ``outputs=`` every effect, as one request would ask for them) from a real
photo, scikit-image's ``coffee`` (the ``background`` effect puts the cup on its ``rocket``).

Where the mask comes from: with ``--url``, a running service's (``effect=mask`` on that photo: the model's, with
the weights it serves); without, OpenCV's GrabCut from a box round the cup, feathered. Machines without internet
cannot download the real checkpoints, and the test weights segment only their synthetic scenes, so the committed
images were made the second way (the README says so).

    python -m bench.effects_gallery [--url http://localhost:8000 --tier quality]
"""

from __future__ import annotations

import argparse
import io
import zipfile

import cv2
import httpx
import numpy as np
from PIL import Image

from bench.common import ROOT
from serve_app.pipeline import postprocess
from serve_app.schemas import Effect, RemoveParams

OUT = ROOT / "docs" / "effects"
WIDTH = 240  # pixels, in the README's table
CUP_BOX = (40, 40, 420, 350)  # x, y, width, height round the cup and saucer of skimage's coffee (600x400)


def grabcut_mask(image: np.ndarray) -> np.ndarray:
    """The cup's alpha in [0, 1]: GrabCut's foreground from CUP_BOX, holes filled, with a soft 2-pixel edge."""
    labels = np.zeros(image.shape[:2], np.uint8)
    models = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), labels, CUP_BOX, *models, 10, cv2.GC_INIT_WITH_RECT)
    found = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    contours, _ = cv2.findContours(found, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hard = np.zeros(found.shape, np.float32)  # the largest region, its holes (the shiny spoon) filled
    cv2.drawContours(hard, [max(contours, key=cv2.contourArea)], -1, 1.0, thickness=cv2.FILLED)
    return np.clip(cv2.GaussianBlur(hard, (0, 0), 2.0), 0.0, 1.0)


def service_mask(url: str, tier: str, image: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    response = httpx.post(
        f"{url}/v1/remove", params={"tier": tier, "effect": "mask"}, content=buffer.getvalue(), timeout=300
    )
    response.raise_for_status()
    return np.asarray(Image.open(io.BytesIO(response.content)), np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service: its model makes the mask (default: GrabCut)")
    parser.add_argument("--tier", default="quality")
    args = parser.parse_args()
    from skimage import data

    photo, backdrop = data.coffee(), data.rocket()
    mask = service_mask(args.url, args.tier, photo) if args.url else grabcut_mask(photo)
    effects = [effect.value for effect in Effect]
    params = RemoveParams(outputs=",".join(effects), color="#3a7bd5", blur_sigma=8)
    rendered = postprocess(photo, mask, params, background=backdrop)
    OUT.mkdir(parents=True, exist_ok=True)
    archive = zipfile.ZipFile(io.BytesIO(rendered.body))
    for old in OUT.glob("*"):
        old.unlink()
    for effect in ["photo", *effects]:
        image = Image.fromarray(photo) if effect == "photo" else Image.open(io.BytesIO(archive.read(f"{effect}.png")))
        image.thumbnail((WIDTH, WIDTH))
        if image.mode == "RGBA":  # the cut-out keeps its transparency; the opaque ones are smaller as JPEG
            image.save(OUT / f"{effect}.png", optimize=True)
        else:
            image.save(OUT / f"{effect}.jpg", quality=85)
    print(
        f"saved {len(effects) + 1} images in {OUT.relative_to(ROOT)} (mask: {'the service' if args.url else 'GrabCut'})"
    )


if __name__ == "__main__":
    main()
