"""The Ray dashboard's Serve view of a running bgserve, as a PNG for the docs (headless Chromium).

Serves configs/test.yaml (the segmenting test weights, trained and cached by the test fixture) with ``serve run``
on a Ray of its own with token authentication off (the screenshot cannot type a token), sends a few requests so
the view has traffic, and saves ``docs/ray-dashboard-serve.png``.

    python -m bench.screenshot_dashboard
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT
from tests.support import scenes
from tests.support.segmenting_weights import segmenting_checkpoint
from tests.support.serve_run import serve_run

OUT = ROOT / "docs" / "ray-dashboard-serve.png"


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "needs Chromium (Debian's chromium package)"
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this local, throwaway Ray only
    weights_dir = Path(tempfile.mkdtemp())
    (weights_dir / "test-segmenting.pth").symlink_to(segmenting_checkpoint()[0])
    log = weights_dir / "serve.log"
    with serve_run(ROOT / "configs" / "test.yaml", weights_dir, log) as served:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(scenes.make_scenes(seed=3, count=1, height=96, width=128)[0].image).save(buffer, "PNG")
        for tier in ("fast", "balanced", "quality"):
            httpx.post(f"{served.url}/v1/remove", params={"tier": tier}, content=buffer.getvalue(), timeout=60)
        plain = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text())
        dashboard = re.findall(r"View the dashboard at (http://[0-9.]+:\d+)", plain)[0]
        time.sleep(5)  # the dashboard's Serve view polls the controller
        subprocess.run(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--window-size=1600,1000",
                "--virtual-time-budget=20000",
                f"--screenshot={OUT}",
                f"{dashboard}/#/serve",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"saved {OUT}")


if __name__ == "__main__":
    main()
