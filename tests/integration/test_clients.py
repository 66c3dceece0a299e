"""The Python client and the bgserve-remove CLI against the real app (configs/test.yaml, segmenting weights)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.cli import main as cli
from serve_app.client import AsyncClient, Client, RemoveError
from tests.conftest import ROOT, skimage_photo
from tests.support import scenes
from tests.support.serve_run import until

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo(name: str, width: int = 160) -> Image.Image:
    image = Image.fromarray(skimage_photo(name))
    return image.resize((width, round(width * image.height / image.width)))


def photo_folder(folder: Path, names: tuple[str, ...] = PHOTOS[:3], copies: int = 1) -> list[Path]:
    """Real photos as JPEGs, one of them in a subfolder, and a file that claims to be an image and is not."""
    paths = []
    for copy in range(copies):
        for index, name in enumerate(names):
            path = folder / ("nested" if index == 0 else "") / f"{name}{copy or ''}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo(name).save(path, quality=90)
            paths.append(path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but no image after all")
    return paths


def test_the_client_takes_paths_bytes_pil_images_and_arrays(service: str, tmp_path: Path) -> None:
    picture = photo("astronaut")
    path = tmp_path / "astronaut.png"
    picture.save(path)
    with Client(service) as client:
        masks = [
            client.remove(source, tier="fast", effect="mask").image()
            for source in (path, str(path), path.read_bytes(), picture, np.asarray(picture))
        ]
        assert all(mask.mode == "L" and mask.size == picture.size for mask in masks)
        for mask in masks[1:]:  # a PNG of the same pixels: the same mask
            np.testing.assert_array_equal(np.asarray(mask), np.asarray(masks[0]))
        cutout = client.remove(picture, tier="fast", crop=True, crop_margin="4")
        assert cutout.image().mode == "RGBA" and cutout.tier == "fast" and cutout.runtime == "openvino"
        _, _, width, height = cutout.foreground  # the subject's box in the photo; the crop is it plus 4 px a side
        assert width > 0 and height > 0 and cutout.image().size[0] <= width + 8
        with pytest.raises(RemoveError) as refused:
            client.remove(b"not an image", tier="fast")
        assert refused.value.status == 400 and refused.value.code == "invalid_image"
        with pytest.raises(RemoveError) as unknown:
            client.remove(picture, tier="ultra")
        assert (
            unknown.value.status == 422
            and unknown.value.code == "invalid_parameter"
            and "tier" in unknown.value.message
        )
        assert [t["tier"] for t in client.tiers()] == ["fast", "balanced", "quality"]


def test_remove_many_rides_out_503s_with_retries(service: str) -> None:
    """A burst larger than the fast tier holds (configs/test.yaml: 8 at its replica + 8 queued) gets 503s with
    Retry-After from the real service; the client waits as told and every image comes back."""
    images = [np.asarray(photo(PHOTOS[i % len(PHOTOS)], width=96 + 8 * i)) for i in range(40)]
    with Client(service, retries=30) as client:
        results = client.remove_many(images, concurrency=40, tier="fast", effect="mask", refine="none")
    failed = [r for r in results if isinstance(r, RemoveError)]
    assert not failed, failed[:3]
    assert [r.image().size for r in results] == [(im.shape[1], im.shape[0]) for im in images]  # in order
    assert max(r.attempts for r in results) > 1, "the burst never met a 503: nothing was retried"


def test_the_async_client(service: str) -> None:
    async def run() -> list[object]:
        async with AsyncClient(service) as client:
            return await client.remove_many(
                [photo("coffee"), b"junk", photo("chelsea")], concurrency=2, tier="fast", effect="mask"
            )

    good, bad, other = asyncio.run(run())
    assert not isinstance(good, RemoveError) and good.image().size == photo("coffee").size  # type: ignore[union-attr]
    assert isinstance(bad, RemoveError) and bad.code == "invalid_image"
    assert not isinstance(other, RemoveError)


def test_the_cli_does_a_folder_reports_a_bad_file_and_resumes(
    service: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = photo_folder(tmp_path / "in")
    out = tmp_path / "out"
    argv = [str(tmp_path / "in"), "--url", service, "--tier", "fast", "--effect", "mask", "--out", str(out)]
    assert cli(argv) == 1  # the broken file failed; the photos were done
    printed = capsys.readouterr()
    assert "3 done, 0 skipped (already there), 1 failed" in printed.out
    assert "broken.png: 400 invalid_image:" in printed.out  # status, code and the service's message
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert made == sorted(Path("nested" if p.parent.name == "nested" else "") / f"{p.stem}_mask.png" for p in photos)
    for path in photos:  # each output is the whole mask of its photo
        relative = path.relative_to(tmp_path / "in")
        mask = Image.open(out / relative.parent / f"{relative.stem}_mask.png")
        assert mask.mode == "L" and mask.size == Image.open(path).size

    (out / "coffee_mask.png").unlink()  # a partial earlier run: one output missing
    assert cli(argv) == 1
    assert "1 done, 2 skipped (already there), 1 failed" in capsys.readouterr().out
    (tmp_path / "in" / "broken.png").unlink()
    assert cli(argv) == 0
    assert "0 done, 3 skipped (already there), 0 failed" in capsys.readouterr().out


def test_the_cli_puts_every_subject_on_one_background(
    service: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = photo_folder(tmp_path / "in")
    (tmp_path / "in" / "broken.png").unlink()
    backdrop = tmp_path / "in" / "backdrop.png"  # among the photos: put on, not cut out
    Image.new("RGB", (64, 48), (20, 40, 250)).save(backdrop)
    out = tmp_path / "out"
    argv = [str(tmp_path / "in"), "--url", service, "--tier", "fast", "--out", str(out)]
    assert cli([*argv, "--effect", "background", "--background", str(backdrop)]) == 0
    assert "3 done, 0 skipped (already there), 0 failed" in capsys.readouterr().out
    made = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert made == sorted(f"{p.stem}_background.png" for p in photos)
    with Client(service) as client:
        for path in photos:  # each the photo over the backdrop by its own mask
            mask = client.remove(path, tier="fast", effect="mask").content
            alpha = np.asarray(Image.open(io.BytesIO(mask)))[..., None] / 255
            expected = np.asarray(Image.open(path)) * alpha + np.array([20, 40, 250]) * (1 - alpha)
            relative = path.relative_to(tmp_path / "in")
            result = np.asarray(Image.open(out / relative.parent / f"{relative.stem}_background.png"))
            assert result.shape == expected.shape and np.abs(result - expected).max() <= 2, path.name
            assert (alpha < 0.5).mean() > 0.05, path.name  # some of the backdrop shows


def test_the_cli_sends_the_services_options(service: str, tmp_path: Path) -> None:
    image = tmp_path / "in" / "scene.png"  # a subject in the middle, which the test weights segment
    image.parent.mkdir()
    Image.fromarray(scenes.make_scenes(seed=31, count=1, height=128, width=160)[0].image).save(image)
    options = ["--tier", "fast", "--effect", "mask", "--threshold", "0.5", "--crop", "--crop-margin", "4"]
    assert cli([str(image), "--url", service, "--out", str(tmp_path / "out"), *options]) == 0
    with Client(service) as client:  # the same request through the client
        expected = client.remove(image, tier="fast", effect="mask", threshold=0.5, crop=True, crop_margin="4")
    made = (tmp_path / "out" / "scene_mask.png").read_bytes()
    assert made == expected.content
    mask = np.asarray(Image.open(io.BytesIO(made)))
    assert set(np.unique(mask)) <= {0, 255} and mask.shape != np.asarray(Image.open(image)).shape[:2]  # hard, cropped


def test_ctrl_c_leaves_no_partial_file_and_a_rerun_finishes(service: str, tmp_path: Path) -> None:
    photo_folder(tmp_path / "in", names=PHOTOS, copies=4)  # 24 photos on the balanced tier: seconds of work
    (tmp_path / "in" / "broken.png").unlink()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "serve_app.cli", str(tmp_path / "in"), "--url", service, "--out", str(out)]
    command += ["--tier", "balanced", "--effect", "rgba", "--concurrency", "4"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert until(lambda: any(out.rglob("*_rgba.png")) if out.exists() else False, timeout_s=120)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr
    written = list(out.rglob("*_rgba.png"))
    assert 0 < len(written) < 24, "interrupted too late to test anything"
    assert f"{len(written)} done, 0 skipped (already there), 0 failed" in stderr  # those in flight counted too
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "a temporary file was left behind"
    for path in written:  # every output there is whole
        image = Image.open(path)
        image.load()
        assert image.mode == "RGBA"
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{24 - len(written)} done, {len(written)} skipped" in again.stdout
    assert len(list(out.rglob("*_rgba.png"))) == 24


def test_cli_reads_its_url_and_key_from_the_environment(service: str, tmp_path: Path) -> None:
    image = tmp_path / "one.png"
    photo("coffee").save(image)
    env = {**os.environ, "BGSERVE_URL": service, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", str(image), "--tier", "fast", "--effect", "white", "--format", "jpeg"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = Image.open(tmp_path / "one_white.jpg")
    assert result.mode == "RGB" and result.size == photo("coffee").size
