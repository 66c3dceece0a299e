"""Per-tier latency of one 1920x1080 photo over HTTP on the CPU config, next to Remover.process on the same
photo and weights, measured side by side in one run: each repeat times the service, then Remover, so a machine
whose speed drifts (shared hosts do) affects both alike. Also fires concurrent fast-tier requests and reports the
batch sizes they were served in.

    python bench/serve_latency.py [--weights PATH] [--repeats 3]

Without --weights it uses the segmenting test weights (tests/support/segmenting_weights.py): the architecture,
and so the cost, is the real checkpoints'; the masks are not.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
REMOVER_MODES = {"fast": ("fast", "static"), "balanced": ("base", "static"), "quality": ("base-nightly", "dynamic")}
EFFECTS = {"mask": "map", "rgba": "rgba"}  # ours → Remover's type
PORT = 8799


def photo_1080p() -> bytes:
    from skimage import data

    image = Image.fromarray(data.rocket()).resize((1920, 1080), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def start_service(weights: Path) -> None:
    import ray
    from ray import serve

    from deployments.app import build_app
    from serve_app.schemas import AppConfig

    args = yaml.safe_load((ROOT / "configs" / "cpu.yaml").read_text())["applications"][0]["args"]
    for tier in args["tiers"].values():
        tier["weights"] = str(weights)
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": PORT, "request_timeout_s": 900})
    serve.run(build_app(AppConfig.model_validate(args)), name="bench", route_prefix="/")


def timed(call) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def concurrency(client: httpx.Client, photo: bytes, count: int = 8) -> tuple[list[int], float]:
    def send(_: int) -> int:
        response = client.post("/v1/remove", params={"tier": "fast", "effect": "mask"}, content=photo)
        response.raise_for_status()
        return int(response.headers["x-batch-size"])

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        sizes = list(pool.map(send, range(count)))
    return sizes, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    weights = args.weights
    if weights is None:
        from tests.support.segmenting_weights import segmenting_checkpoint

        weights = segmenting_checkpoint()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transparent_background import Remover
    photo = photo_1080p()
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    start_service(weights)
    rows = []
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{PORT}", timeout=900) as client,
        tempfile.TemporaryDirectory() as home,
    ):
        os.environ["TRANSPARENT_BACKGROUND_FILE_PATH"] = home  # Remover's stock config.yaml: 384 / 1024 / 1024
        for tier, (mode, resize) in REMOVER_MODES.items():
            remover = Remover(mode=mode, ckpt=str(weights), resize=resize, device="cpu")
            for effect, kind in EFFECTS.items():

                def ours(tier: str = tier, effect: str = effect) -> None:
                    response = client.post("/v1/remove", params={"tier": tier, "effect": effect}, content=photo)
                    response.raise_for_status()
                    assert Image.open(io.BytesIO(response.content)).size == (1920, 1080)

                def theirs(remover=remover, kind: str = kind) -> None:  # type: ignore[no-untyped-def]
                    remover.process(image, type=kind)

                ours(), theirs()  # warm-up: allocator, pymatting, caches
                pairs = [(timed(ours), timed(theirs)) for _ in range(args.repeats)]
                a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
                rows.append((tier, effect, a, b))
                print(f"{tier:9s} {effect:5s} service {a:7.2f} s   Remover {b:7.2f} s", flush=True)
            del remover
        sizes, seconds = concurrency(client, photo)
    print("\n| tier | effect | service over HTTP (s) | Remover.process (s) | Remover ÷ service |")
    print("|---|---|---|---|---|")
    for tier, effect, a, b in rows:
        print(f"| {tier} | {effect} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    print(
        f"\nmedians of {args.repeats} interleaved pairs after one warm-up each; 1920x1080 JPEG; configs/cpu.yaml; "
        f"{os.cpu_count()} CPUs"
    )
    print(f"8 concurrent fast-tier requests: X-Batch-Size {sizes}; {seconds:.1f} s for all 8")


if __name__ == "__main__":
    main()
