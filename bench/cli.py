"""``bgserve-remove`` on a folder against the CPU config's fast tier, beside a plain loop of single requests, in
one run:

    python -m bench.cli [--photos 20] [--weights-dir /tmp/bw-ov]

Starts ``configs/cpu.yaml``'s fast tier (its runtime as configured) on the segmenting test weights in a local Ray,
as ``bench/serve.py`` does, and writes ``--photos`` 1920x1080 JPEGs (scikit-image photos, each made distinct by
one pixel so the mask cache never answers). Then, on the same service: the CLI on the folder (its default
concurrency, rgba PNGs), and a plain loop of single ``POST /v1/remove`` requests, one at a time, with
``Cache-Control: no-cache`` (the CLI ran first, so its masks are cached). Prints images/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import PHOTOS, photo_1080p
from bench.serve import PORT, cpu_config_args, start_service
from serve_app.cli import main as cli
from serve_app.mask_cache import RUN_THE_MODEL
from tests.support.serve_run import wait_until_ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--weights-dir", type=Path, default=None, help="where OpenVINO's converted models live")
    args = parser.parse_args()
    from PIL import Image

    from tests.support.segmenting_weights import segmenting_checkpoint

    work = Path(tempfile.mkdtemp())
    folder = work / "photos"
    folder.mkdir()
    for index in range(args.photos):
        pixels = photo_1080p(PHOTOS[index % 4]).copy()
        pixels[0, 0] = (index, 255 - index, index // 2)  # a distinct upload each: no mask-cache hits
        Image.fromarray(pixels).save(folder / f"photo{index:02d}.jpg", quality=90)
    runtime = cpu_config_args()["tiers"]["fast"].get("runtime", "eager")
    start_service(str(segmenting_checkpoint()[0]), {"fast": runtime}, ["fast"], args.weights_dir or work)
    url = f"http://127.0.0.1:{PORT}"
    with httpx.Client(base_url=url, timeout=600) as client:
        wait_until_ready(client)
        warm = (folder / "photo00.jpg").read_bytes()
        client.post("/v1/remove", params={"tier": "fast"}, content=warm, headers={"Cache-Control": "no-store"})
        started = time.perf_counter()
        status = cli([str(folder), "--url", url, "--tier", "fast", "--out", str(work / "out")])
        cli_seconds = time.perf_counter() - started
        assert status == 0, "the CLI failed"
        started = time.perf_counter()
        for path in sorted(folder.iterdir()):
            response = client.post(
                "/v1/remove", params={"tier": "fast"}, content=path.read_bytes(), headers=RUN_THE_MODEL
            )
            response.raise_for_status()
        loop_seconds = time.perf_counter() - started
    cli_rate, loop_rate = args.photos / cli_seconds, args.photos / loop_seconds
    print(f"{args.photos} 1920x1080 photos, fast tier ({runtime}), rgba PNGs")
    print(f"bgserve-remove (concurrency 8): {cli_seconds:.1f} s, {cli_rate:.2f} images/s")
    print(f"plain loop of single requests:  {loop_seconds:.1f} s, {loop_rate:.2f} images/s")
    print(f"CLI / loop: {cli_rate / loop_rate:.2f}x")


if __name__ == "__main__":
    main()
