"""Markers by folder, and the fixtures every level shares: segmenting weights, scenes, photos."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.segmenting_weights import segmenting_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MIN_HELD_OUT_IOU = 0.85  # the weights must really segment, or mask tests prove nothing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        level = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if level in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, level))


@pytest.fixture(scope="session")
def segmenting_weights(request: pytest.FixtureRequest) -> Path:
    """A checkpoint whose decoder was trained on synthetic scenes (cached; ~4-5 minutes the first time, with its
    progress on the terminal)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def progress(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    path, report = segmenting_checkpoint(progress=progress)
    for key, value in report.items():
        if key.startswith("iou_"):
            assert value >= MIN_HELD_OUT_IOU, f"test weights segment poorly ({key}={value:.3f}): {report}"
    return path


def png_bytes(array: np.ndarray, **save_options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)
