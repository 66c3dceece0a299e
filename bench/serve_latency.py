"""Per-tier latency of one 1920x1080 photo over HTTP on the CPU config, next to Remover.process on the same
photo and weights, measured in one run (the service first, then Remover, so they never share the CPU).

    python bench/serve_latency.py [--weights PATH] [--repeats 2]

Without --weights it uses the segmenting test weights (tests/support/segmenting_weights.py): the architecture,
and so the cost, is the same as the real checkpoints'; the masks are not.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"fast": "fast", "balanced": "base", "quality": "base-nightly"}  # tier → Remover mode
RESIZE = {"fast": "static", "balanced": "static", "quality": "dynamic"}
EFFECTS = ("mask", "rgba")


def photo_1080p() -> bytes:
    from skimage import data

    image = Image.fromarray(data.rocket()).resize((1920, 1080), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def serve_latencies(weights: Path, photo: bytes, repeats: int) -> dict[tuple[str, str], list[float]]:
    import ray
    from ray import serve

    from deployments.app import build_app
    from serve_app.schemas import AppConfig

    config = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())
    args = config["applications"][0]["args"]
    for tier in args["tiers"].values():
        tier["weights"] = str(weights)
    port = 8799
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 900})
    serve.run(build_app(AppConfig.model_validate(args)), name="bench", route_prefix="/")
    results: dict[tuple[str, str], list[float]] = {}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900) as client:
        for tier in TIERS:
            for effect in EFFECTS:
                times = []
                for attempt in range(repeats + 1):  # the first request warms up (pymatting, allocator)
                    started = time.perf_counter()
                    response = client.post("/v1/remove", params={"tier": tier, "effect": effect}, content=photo)
                    response.raise_for_status()
                    assert Image.open(io.BytesIO(response.content)).size == (1920, 1080)
                    if attempt:
                        times.append(time.perf_counter() - started)
                results[(tier, effect)] = times
                print(f"service {tier:9s} {effect:5s} {statistics.median(times):7.2f} s", flush=True)
    serve.shutdown()
    ray.shutdown()
    return results


def remover_latencies(weights: Path, photo: bytes, repeats: int) -> dict[tuple[str, str], list[float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transparent_background import Remover
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    results: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as home:
        os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = home  # its stock config.yaml: 384 / 1024 / 1024
        for tier, mode in TIERS.items():
            remover = Remover(mode=mode, ckpt=str(weights), resize=RESIZE[tier], device="cpu")
            for effect in EFFECTS:
                kind = "map" if effect == "mask" else "rgba"
                times = []
                for attempt in range(repeats + 1):
                    started = time.perf_counter()
                    remover.process(image, type=kind)
                    if attempt:
                        times.append(time.perf_counter() - started)
                results[(tier, effect)] = times
                print(f"remover {tier:9s} {effect:5s} {statistics.median(times):7.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    weights = args.weights
    if weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        weights = segmenting_checkpoint()[0]
    photo = photo_1080p()
    ours = serve_latencies(weights, photo, args.repeats)
    theirs = remover_latencies(weights, photo, args.repeats)
    print("\n| tier | effect | service over HTTP (s) | Remover.process (s) | ratio |")
    print("|---|---|---|---|---|")
    for key in ours:
        a, b = statistics.median(ours[key]), statistics.median(theirs[key])
        print(f"| {key[0]} | {key[1]} | {a:.2f} | {b:.2f} | {b / a:.2f}x |")
    print(f"\nmedian of {args.repeats} after one warm-up; 1920x1080 JPEG; configs/cpu.yaml; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
