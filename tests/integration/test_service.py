"""The whole request path over HTTP: real Ray Serve, the real model code, weights that segment."""

from __future__ import annotations

import io
import json
import re
import select
import shutil
import socket
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from serve_app.catalogue import Tier
from serve_app.mask_cache import RUN_THE_MODEL
from serve_app.runtimes.parity import iou
from tests.conftest import ROOT, png_bytes, skimage_photo
from tests.integration.conftest import Cluster
from tests.support import scenes
from tests.support.reference import (
    base_size_in_test_config,
    reference_mask,
    reference_remover,
    upload_stall_s_in_test_config,
)
from tests.support.serve_run import until

TIERS = [t.value for t in Tier]
# 160x128: the quality tier's dynamic resize keeps it as it is; the static tiers stretch it to their square.
SCENE_HEIGHT, SCENE_WIDTH = 128, 160
MIN_IOU = 0.8


def remove(client: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return client.post("/v1/remove", params=params, files={"image": ("upload.png", data, "image/png")})


def decode(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_tiers_are_listed_and_ready(client: httpx.Client) -> None:
    tiers = client.get("/v1/tiers").json()
    assert [t["tier"] for t in tiers] == TIERS
    assert {t["tier"]: t["checkpoint"] for t in tiers} == {
        "fast": "ckpt_fast.pth",
        "balanced": "ckpt_base.pth",
        "quality": "ckpt_base_nightly.pth",
    }
    for t in tiers:
        assert t["ready"] and t["status"] == "HEALTHY" and t["weights"] == "test-segmenting.pth"
    assert [t["tier"] for t in tiers if t["default"]] == ["balanced"]  # what a request without a tier gets
    assert client.get("/healthz").json() == {"status": "ok"}
    for path in ("/", "/healthz", "/readyz", "/v1/tiers"):  # uptime checkers' HEAD: the GET's status, no body
        head, get = client.head(path), client.get(path)
        assert head.status_code == get.status_code == 200 and head.content == b"", (path, head.status_code)
        assert head.headers["content-type"] == get.headers["content-type"], path
    ready = client.get("/readyz")  # only once rgba's kernels are compiled too: no first request waits for them
    assert ready.status_code == 200 and ready.json()["effects"] == "ready", ready.text


def test_openapi_docs(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/remove" in spec["paths"] and "/v1/tiers" in spec["paths"]
    body = spec["paths"]["/v1/remove"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    rembg = spec["paths"]["/api/remove"]["post"]  # its route reads rembg's options itself: the spec lists them
    assert [p["name"] for p in rembg["parameters"]] == ["model", "a", "af", "ab", "ae", "om", "ppm", "bgc", "extras"]
    assert set(rembg["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {"file"}
    operation_ids = [operation["operationId"] for path in spec["paths"].values() for operation in path.values()]
    assert len(operation_ids) == len(set(operation_ids)), operation_ids  # client generators need them unique


def test_openapi_documents_what_the_readme_does(client: httpx.Client) -> None:
    """Every parameter, upload field, colour form, header and status the README gives for POST /v1/remove (and
    /readyz's 503) is in the spec that /docs shows."""
    spec = client.get("/openapi.json").json()
    remove = spec["paths"]["/v1/remove"]["post"]
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### `POST /v1/remove`") : readme.index("### rembg's API")]
    parameters = re.findall(r"^\| `(\w+)` \|", section, re.MULTILINE)
    assert parameters == [p["name"] for p in remove["parameters"]]
    color_row = next(line for line in section.splitlines() if line.startswith("| `color` |"))
    color_doc = next(p for p in remove["parameters"] if p["name"] == "color")["description"]
    for form in re.findall(r"`([^`]+)`", color_row.split("|")[2]):
        assert form in color_doc, form
    assert "CSS" in color_row and "CSS" in color_doc
    fields = set(re.findall(r"multipart field `(\w+)`", section)) | set(re.findall(r"\(rembg's `(\w+)`", section))
    multipart = remove["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert set(fields) == set(multipart)
    headers = set(re.findall(r"`((?:X-[A-Za-z-]+)|Server-Timing|Retry-After|ETag)`", section))
    assert headers == set(remove["responses"]["200"]["headers"]) | set(remove["responses"]["503"]["headers"])
    statuses = set(re.findall(r"^\| (\d{3}) \|", section, re.MULTILINE))
    assert statuses and statuses <= set(remove["responses"])
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"] and "else 503" in readme
    assert set(spec["paths"]["/api/remove"]["get"]["responses"]) == {"422"}  # rembg's URL form: always refused


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (scripts/test.sh installs Debian's chromium)")
@pytest.mark.parametrize(("page", "rendered"), [("/docs", 'class="opblock'), ("/redoc", "Remove the background")])
def test_docs_render_offline_in_a_real_browser(service: str, tmp_path: Path, page: str, rendered: str) -> None:
    """Headless Chromium that can resolve no host but 127.0.0.1 renders the API docs: their scripts and styles come
    from the service itself (FastAPI's own pages load them from a CDN and stay blank offline)."""
    html = httpx.get(f"{service}{page}").text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert assets and all(a.startswith("/") for a in assets), assets
    dom = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=20000",
            "--dump-dom",
            f"{service}{page}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert rendered in dom and "/v1/remove" in dom, dom[-2000:]


MODEL_INPUT = {"fast": "128x128", "balanced": "160x160", "quality": "160x128"}  # from configs/test.yaml


def test_a_wide_gamut_photo_keeps_its_colour_profile(client: httpx.Client) -> None:
    """A phone's Display P3 photo: its colour results carry its profile (else they show washed out), the mask
    does not (a grey image)."""
    from tests.support.profiles import display_p3

    wide = display_p3()
    buffer = io.BytesIO()
    Image.fromarray(scenes.make_scenes(seed=5, count=1, height=96, width=128)[0].image).save(
        buffer, format="JPEG", quality=95, icc_profile=wide
    )
    params = {"tier": "fast", "outputs": "rgba,white:jpeg,mask"}
    answer = client.post("/v1/remove", params=params, content=buffer.getvalue())
    assert answer.status_code == 200, answer.text
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        profiles = {
            name: Image.open(io.BytesIO(archive.read(name))).info.get("icc_profile") for name in archive.namelist()
        }
    assert profiles == {"rgba.png": wide, "white.jpg": wide, "mask.png": None}


@pytest.mark.parametrize("tier", TIERS)
def test_mask_covers_the_subject(client: httpx.Client, tier: str) -> None:
    for scene in scenes.make_scenes(seed=2024, count=3, height=SCENE_HEIGHT, width=SCENE_WIDTH):
        response = remove(client, png_bytes(scene.image), tier=tier, effect="mask")
        mask = decode(response)
        assert mask.shape == scene.mask.shape
        assert response.headers["x-tier"] == tier and response.headers["x-weights"] == "test-segmenting.pth"
        assert response.headers["x-model-input"] == MODEL_INPUT[tier]
        steps = dict(part.split(";dur=") for part in response.headers["server-timing"].split(", "))
        assert list(steps) == ["decode", "resize", "queue", "model", "upsample", "effect", "encode"]
        assert float(steps["model"]) > 0
        assert iou(mask > 127, scene.mask) >= MIN_IOU
        assert iou(mask[::-1] > 127, scene.mask) < MIN_IOU  # a flipped mask would fail


def test_exif_rotated_upload_is_masked_upright(client: httpx.Client) -> None:
    scene = scenes.make_scenes(seed=77, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(scene.image, 1)))  # the camera held sideways
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif.tobytes())
    for tier in TIERS:
        mask = decode(remove(client, buffer.getvalue(), tier=tier, effect="mask"))
        assert mask.shape == scene.mask.shape  # width and height of the upright image
        assert iou(mask > 127, scene.mask) >= MIN_IOU


def test_what_a_transparent_upload_hid_stays_hidden(client: httpx.Client) -> None:
    """A PNG whose left half is transparent over the scene's own pixels: the model sees them (as Remover does) and
    took the subject there; the cut-out showed what the upload hid. The upload's alpha multiplies the matte (the
    ingress passes it on, EXIF-turned with the pixels)."""
    scene = scenes.make_scenes(seed=2024, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    half = SCENE_WIDTH // 2
    own = np.full(scene.mask.shape, 255, np.uint8)
    own[:, :half] = 0
    assert scene.mask[:, :half].any() and scene.mask[:, half:].any()  # the subject spans both halves
    upload = png_bytes(np.dstack([scene.image, own]))
    mask = decode(remove(client, upload, tier="fast", effect="mask"))
    rgba = decode(remove(client, upload, tier="fast", effect="rgba"))
    assert (mask[:, :half] == 0).all() and (rgba[:, :half, 3] == 0).all()
    assert iou(mask[:, half:] > 127, scene.mask[:, half:]) >= MIN_IOU  # the visible half is masked as before
    np.testing.assert_array_equal(rgba[..., 3], mask)


@pytest.mark.parametrize("effect", ["rgba", "mask", "color", "blur", "green", "white", "overlay"])
@pytest.mark.parametrize("fmt", ["png", "webp", "jpeg"])
def test_every_effect_and_format(client: httpx.Client, effect: str, fmt: str) -> None:
    scene = scenes.make_scenes(seed=5, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    response = remove(client, png_bytes(scene.image), tier="fast", effect=effect, format=fmt, color="#00ff00")
    assert response.headers["content-type"] == f"image/{fmt}"
    assert response.status_code == 200, response.text
    out = Image.open(io.BytesIO(response.content))
    assert out.size == (SCENE_WIDTH, SCENE_HEIGHT)
    array = np.asarray(out)
    inside = scene.mask
    outside = cv2.dilate(scene.mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0  # clear of the edge
    if effect == "rgba" and fmt != "jpeg":
        assert out.mode == "RGBA"
        assert array[..., 3][inside].mean() > 200 and array[..., 3][~inside].mean() < 60
    if effect == "rgba" and fmt == "jpeg":  # flattened on white
        assert array[~inside].mean() > 200
    if effect == "color":
        corner = array[:8, :8].reshape(-1, 3).mean(axis=0)
        assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60
    if effect == "mask":
        grey = array if array.ndim == 2 else array[..., 0]
        assert grey[inside].mean() > 200 and grey[~inside].mean() < 60
    if effect == "blur" and fmt == "png":
        original = scene.image.astype(float)
        blurred = cv2.GaussianBlur(scene.image, (0, 0), 15).astype(float)
        assert np.abs(array[inside] - original[inside]).mean() < 25  # the subject stays sharp
        to_blurred = np.abs(array[outside] - blurred[outside]).mean()
        assert to_blurred < np.abs(array[outside] - original[outside]).mean() and to_blurred < 3


def test_transparent_backgrounds_effects_match_remover_on_the_same_weights(
    client: httpx.Client, segmenting_weights: Path
) -> None:
    """green, white, blur and overlay over HTTP against ``Remover.process(type=...)``: the same pictures, up to
    the float noise of the mask (its values differ by at most 1/255), and for overlay a few outline pixels where
    the mask crosses 0.5."""
    photo = skimage_photo("astronaut")[::2, ::2].copy()  # 256x256
    with reference_remover(Tier.FAST, segmenting_weights, base_size_in_test_config(Tier.FAST)) as remover:
        for effect in ("green", "white", "blur", "overlay"):
            ours = decode(remove(client, png_bytes(photo), tier="fast", effect=effect)).astype(int)
            theirs = np.asarray(remover.process(Image.fromarray(photo), type=effect)).astype(int)
            assert ours.shape == theirs.shape == photo.shape
            close = np.abs(ours - theirs).max(axis=2) <= 2
            assert close.mean() >= (0.995 if effect == "overlay" else 1.0), (effect, close.mean())


def test_a_background_image_replaces_the_background(client: httpx.Client) -> None:
    scene = scenes.make_scenes(seed=12, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    backdrop = np.zeros((300, 200, 3), np.uint8)
    backdrop[..., 0] = 250  # red, of another size and shape: resized to cover
    files = {
        "image": ("a.png", png_bytes(scene.image), "image/png"),
        "background": ("b.png", png_bytes(backdrop), "image/png"),
    }
    response = client.post("/v1/remove", params={"tier": "fast", "effect": "background"}, files=files)
    out = decode(response).astype(int)
    assert out.shape == scene.image.shape
    outside = cv2.dilate(scene.mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    assert np.abs(out[outside] - [250, 0, 0]).mean() < 3  # the mask's faint values there let little through
    assert np.abs(out[scene.mask] - scene.image[scene.mask].astype(int)).mean() < 25
    # Where the background image is transparent, so is the answer (JPEG: on white), around the subject.
    translucent = np.dstack([backdrop, np.full((300, 200), 255, np.uint8)])
    translucent[150:, :, 3] = 0  # the lower half of it: (after the cover) the lower half of the answer
    files["background"] = ("b.png", png_bytes(translucent), "image/png")
    for fmt in ("png", "jpeg"):
        answer = client.post("/v1/remove", params={"tier": "fast", "effect": "background", "format": fmt}, files=files)
        out = decode(answer).astype(int)
        lower, upper = outside.copy(), outside.copy()
        lower[: SCENE_HEIGHT // 2 + 2], upper[SCENE_HEIGHT // 2 - 2 :] = False, False
        assert np.abs(out[upper][:, :3] - [250, 0, 0]).mean() < 3, fmt
        if fmt == "png":
            assert out.shape == (*scene.image.shape[:2], 4) and out[lower][:, 3].mean() < 3
            assert out[scene.mask][:, 3].mean() > 230  # the subject itself stays opaque
        else:
            assert np.abs(out[lower] - 255).mean() < 3  # JPEG has no alpha: on white
    files["background"] = ("b.png", png_bytes(backdrop), "image/png")
    missing = remove(client, png_bytes(scene.image), tier="fast", effect="background")
    assert missing.status_code == 422 and "'background'" in missing.json()["error"]["message"]
    files["background"] = ("b.png", b"not an image", "image/png")
    bad = client.post("/v1/remove", params={"tier": "fast", "effect": "background"}, files=files)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("background image:"), bad.text
    files["background"] = ("b.png", png_bytes(backdrop), "image/png")
    unused = client.post("/v1/remove", params={"tier": "fast", "effect": "rgba"}, files=files)  # was dropped, a 200
    assert unused.status_code == 422 and "effect=background" in unused.json()["error"]["message"], unused.text
    # A browser form's file input left empty sends its part with no file name and no bytes: no background chosen.
    empty_part = b'--X\r\nContent-Disposition: form-data; name="background"; filename=""\r\n\r\n\r\n'
    image_part = b'--X\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    body = image_part + png_bytes(scene.image) + b"\r\n" + empty_part + b"--X--\r\n"
    form = client.post(
        "/v1/remove",
        params={"tier": "fast"},
        content=body,
        headers={"content-type": "multipart/form-data; boundary=X"},
    )
    assert form.status_code == 200, form.text


def test_rembgs_api_answers_as_rembg_does(client: httpx.Client) -> None:
    """Requests as rembg's README sends them: `curl -F file=@input.png .../api/remove`, options as form fields or
    query parameters, and the URL form."""
    scene = scenes.make_scenes(seed=21, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    upload = {"file": ("input.png", png_bytes(scene.image), "image/png")}
    plain = client.post("/api/remove", files=upload)
    assert plain.headers["content-type"] == "image/png" and plain.headers["x-tier"] == "balanced"
    cut_out = Image.open(io.BytesIO(plain.content))
    assert cut_out.mode == "RGBA" and cut_out.size == (SCENE_WIDTH, SCENE_HEIGHT)
    np.testing.assert_array_equal(decode(plain), decode(remove(client, png_bytes(scene.image), effect="rgba")))
    mask = client.post("/api/remove", files=upload, data={"model": "u2netp", "om": "true"})
    assert mask.headers["x-tier"] == "fast" and Image.open(io.BytesIO(mask.content)).mode == "L"
    np.testing.assert_array_equal(
        decode(mask), decode(remove(client, png_bytes(scene.image), tier="fast", effect="mask"))
    )
    green = client.post("/api/remove", files=upload, params={"bgc": "0,255,0,255", "model": "birefnet-general"})
    assert green.headers["x-tier"] == "quality"
    corner = decode(green)[:8, :8].reshape(-1, 3).mean(axis=0)
    assert corner[1] > 200 and corner[0] < 60 and corner[2] < 60
    translucent = client.post("/api/remove", files=upload, data={"bgc": "0,0,255,100", "model": "birefnet-general"})
    pixels = decode(translucent)
    assert pixels.shape == (SCENE_HEIGHT, SCENE_WIDTH, 4)  # the PNG keeps an alpha, as rembg's does
    corner = pixels[:8, :8].reshape(-1, 4).mean(axis=0)  # background: the translucent colour
    assert abs(corner[3] - 100) < 8 and corner[2] > 200 and corner[0] < 60 and corner[1] < 60
    unknown = client.post("/api/remove", files=upload, data={"model": "no-such-model"})
    assert unknown.status_code == 422 and "unknown rembg model" in unknown.json()["error"]["message"]
    by_url = client.get("/api/remove", params={"url": "http://example.invalid/input.png"})
    assert by_url.status_code == 422 and "does not fetch URLs" in by_url.json()["error"]["message"]


def requests_served_by(cluster: Cluster, deployment: str) -> float:
    """Serve's own count of requests a deployment's replicas have handled (Ray's metrics endpoint)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "ray_serve_deployment_request_counter_total" and sample.labels.get("deployment") == deployment
    )


def settled_count(cluster: Cluster, deployment: str, every_s: float = 2.5) -> float:
    """``requests_served_by`` once two reads ``every_s`` apart agree: Ray exports metrics every second here, so a
    request answered just before may not be counted yet."""
    previous = requests_served_by(cluster, deployment)
    while True:
        time.sleep(every_s)
        current = requests_served_by(cluster, deployment)
        if current == previous:
            return current
        previous = current


def test_a_repeated_image_is_served_from_the_mask_cache_without_a_model_call(
    client: httpx.Client, cluster: Cluster
) -> None:
    rng = np.random.default_rng(4242)
    image = scenes.make_scene(rng, SCENE_HEIGHT, SCENE_WIDTH).image  # drawn for this test: no other sends it
    upload = png_bytes(image)
    first = remove(client, upload, tier="fast", effect="mask")
    assert first.headers["x-cache"] == "miss" and int(first.headers["x-batch-size"]) >= 1
    assert until(lambda: requests_served_by(cluster, "fast") > 0, timeout_s=15)
    time.sleep(2.5)  # Ray exports metrics every second here: let the first request's count settle
    served_before = requests_served_by(cluster, "fast")

    rgba = remove(client, upload, tier="fast", effect="rgba", refine="none")
    on_green = remove(client, upload, tier="fast", effect="green", crop="true", format="jpeg")
    for response in (rgba, on_green):
        assert response.status_code == 200 and response.headers["x-cache"] == "hit"
        assert response.headers["x-batch-size"] == "0" and "model;dur=0.0" in response.headers["server-timing"]
    np.testing.assert_array_equal(decode(rgba)[..., 3], decode(first))  # the same mask, another effect
    time.sleep(2.5)
    assert requests_served_by(cluster, "fast") == served_before  # the tier's replica saw neither

    # The same bytes again, with the ETag: 304 and no body. Another output of the image is not that ETag's.
    again = client.post(
        "/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        files={"image": ("upload.png", upload, "image/png")},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == first.headers["etag"]
    assert rgba.headers["etag"] != first.headers["etag"]
    fresh = client.post(
        "/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        files={"image": ("upload.png", upload, "image/png")},
        headers={"Cache-Control": "no-cache"},
    )
    assert fresh.headers["x-cache"] == "miss" and int(fresh.headers["x-batch-size"]) >= 1  # the model ran again
    other_tier = remove(client, upload, tier="balanced", effect="mask")
    assert other_tier.headers["x-cache"] == "miss"  # each tier's mask is its own


def test_several_outputs_come_from_one_model_call_in_one_zip(client: httpx.Client, cluster: Cluster) -> None:
    rng = np.random.default_rng(4343)
    upload = png_bytes(scenes.make_scene(rng, SCENE_HEIGHT, SCENE_WIDTH).image)  # drawn for this test only
    served_before = settled_count(cluster, "fast")  # earlier tests' requests all counted
    response = client.post(
        "/v1/remove",
        params={"tier": "fast", "outputs": "rgba,white:jpeg,mask,overlay:webp", "refine": "none"},
        files={"image": ("upload.png", upload, "image/png")},
        headers=RUN_THE_MODEL,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip" and response.headers["x-cache"] == "miss"
    assert "outputs.zip" in response.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["rgba.png", "white.jpg", "mask.png", "overlay.webp"]
    entries = {name: Image.open(io.BytesIO(archive.read(name))) for name in archive.namelist()}
    assert {name: image.mode for name, image in entries.items()} == {
        "rgba.png": "RGBA",
        "white.jpg": "RGB",
        "mask.png": "L",
        "overlay.webp": "RGB",
    }
    assert all(image.size == (SCENE_WIDTH, SCENE_HEIGHT) for image in entries.values())
    mask = np.asarray(entries["mask.png"])
    np.testing.assert_array_equal(np.asarray(entries["rgba.png"])[..., 3], mask)  # one mask under every output
    # The model ran once for the four: one request at the tier's replica (Serve's own count).
    assert until(lambda: requests_served_by(cluster, "fast") >= served_before + 1, timeout_s=15)
    time.sleep(2.5)  # Ray exports metrics every second here: let any further count arrive
    assert requests_served_by(cluster, "fast") == served_before + 1
    # Each entry is what a single request for it gives (these come from the cache: the same mask).
    single = remove(client, upload, tier="fast", effect="white", format="jpeg")
    assert single.headers["x-cache"] == "hit" and archive.read("white.jpg") == single.content
    assert response.headers["x-runtime"] == single.headers["x-runtime"] == "openvino"  # configs/test.yaml's; a hit too
    bad = client.post("/v1/remove", params={"outputs": "rgba,sepia"}, content=upload)
    assert bad.status_code == 422 and bad.json()["error"]["message"].startswith("outputs: 'sepia' is not effect")
    no_background = client.post("/v1/remove", params={"tier": "fast", "outputs": "mask,background"}, content=upload)
    assert no_background.status_code == 422 and "background" in no_background.json()["error"]["message"]


def test_options_come_as_form_fields_too(client: httpx.Client) -> None:
    """remove.bg's API takes its options as multipart text fields: here they count as the query's parameters do
    (a field over the same query parameter), and an unknown field or a bad value is a 422, as in the query."""
    upload = png_bytes(scenes.make_scenes(seed=31, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0].image)
    image = {"image": ("upload.png", upload, "image/png")}
    as_fields = client.post(
        "/v1/remove", params={"effect": "rgba"}, files=image, data={"tier": "fast", "effect": "mask"}
    )
    assert as_fields.status_code == 200, as_fields.text
    assert as_fields.headers["x-tier"] == "fast" and Image.open(io.BytesIO(as_fields.content)).mode == "L"
    assert as_fields.content == remove(client, upload, tier="fast", effect="mask").content
    unknown = client.post("/v1/remove", files=image, data={"tier": "fast", "efect": "mask"})
    assert unknown.status_code == 422 and "efect" in unknown.json()["error"]["message"], unknown.text
    bad_tier = client.post("/v1/remove", files=image, data={"tier": "ultra"})
    assert bad_tier.status_code == 422 and bad_tier.json()["error"]["code"] == "invalid_parameter", bad_tier.text
    huge = client.post("/v1/remove", files=image, data={"tier": "fast", "color": "x" * 60_000})  # under 64 KiB
    assert huge.status_code == 422 and len(huge.json()["error"]["message"]) <= 500, len(huge.text)  # not echoed


def test_threshold_and_reverse(client: httpx.Client) -> None:
    scene = scenes.make_scenes(seed=8, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    hard = decode(remove(client, png_bytes(scene.image), tier="fast", effect="mask", threshold=0.5))
    assert set(np.unique(hard)) <= {0, 255}
    reverse = decode(remove(client, png_bytes(scene.image), tier="fast", effect="mask", threshold=0.5, reverse=True))
    np.testing.assert_array_equal(reverse, 255 - hard)


def test_raw_body_equals_multipart(client: httpx.Client) -> None:
    data = png_bytes(scenes.make_scenes(seed=9, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0].image)
    raw = client.post(
        "/v1/remove",
        params={"tier": "fast", "effect": "mask"},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )
    np.testing.assert_array_equal(decode(raw), decode(remove(client, data, tier="fast", effect="mask")))
    rembg_style = client.post(
        "/v1/remove", params={"tier": "fast", "effect": "mask"}, files={"file": ("x.png", data, "image/png")}
    )
    np.testing.assert_array_equal(decode(rembg_style), decode(raw))


@pytest.mark.parametrize("tier", TIERS)
def test_real_photo_matches_the_reference(client: httpx.Client, tier: str, segmenting_weights: Path) -> None:
    photo = skimage_photo("astronaut")[::2, ::2].copy()  # 256x256
    response = remove(client, png_bytes(photo), tier=tier, effect="mask")
    ours = decode(response).astype(int)
    with reference_remover(Tier(tier), segmenting_weights, base_size_in_test_config(Tier(tier))) as remover:
        reference = reference_mask(remover, photo).astype(int)
    assert ours.shape == reference.shape == photo.shape[:2]
    assert np.abs(ours - reference).mean() <= 1.0
    assert np.abs(ours - reference).max() <= 1  # identical up to float noise: the whole HTTP path is Remover's
    rgba = decode(remove(client, png_bytes(photo), tier=tier, effect="rgba"))
    assert rgba.shape == (256, 256, 4)


def foreground_box(response: httpx.Response) -> tuple[int, int, int, int]:
    return tuple(int(response.headers[f"x-foreground-{side}"]) for side in ("top", "left", "width", "height"))  # type: ignore[return-value]


def test_the_subjects_box_comes_with_every_answer_and_crop_cuts_to_it(client: httpx.Client) -> None:
    scene = scenes.make_scenes(seed=77, count=1, height=SCENE_HEIGHT, width=SCENE_WIDTH)[0]
    upload = png_bytes(scene.image)
    masked = remove(client, upload, tier="fast", effect="mask")
    mask = decode(masked)
    top, left, width, height = foreground_box(masked)
    rows, cols = np.flatnonzero((mask > 127).any(axis=1)), np.flatnonzero((mask > 127).any(axis=0))
    assert (top, left, width, height) == (rows[0], cols[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    truth = np.flatnonzero(scene.mask.any(axis=1))
    assert abs(top - truth[0]) <= 8 and abs(top + height - 1 - truth[-1]) <= 8  # it is the subject's box
    cropped = remove(client, upload, tier="fast", effect="rgba", crop="true", crop_margin="3")
    assert foreground_box(cropped) == (top, left, width, height)
    out = decode(cropped)
    expected_h = min(SCENE_HEIGHT, top + height + 3) - max(0, top - 3)
    expected_w = min(SCENE_WIDTH, left + width + 3) - max(0, left - 3)
    assert out.shape == (expected_h, expected_w, 4)
    np.testing.assert_array_equal(
        out[..., 3], mask[max(0, top - 3) : top + height + 3, max(0, left - 3) : left + width + 3]
    )
    # Nothing visible (no alpha is above a threshold of 1): an empty box, a 200, and the whole image.
    nothing = remove(client, upload, tier="fast", effect="rgba", threshold=1.0, crop="true")
    assert foreground_box(nothing) == (0, 0, 0, 0)
    assert decode(nothing).shape == (SCENE_HEIGHT, SCENE_WIDTH, 4)
    assert remove(client, upload, crop_margin="ten").status_code == 422


def burst(client: httpx.Client, uploads: list[bytes], **params: object) -> list[httpx.Response]:
    """The uploads at once, each run by the model (``Cache-Control: no-cache`` skips the ingress's mask cache)."""

    def send(data: bytes) -> httpx.Response:
        files = {"image": ("upload.png", data, "image/png")}
        return client.post("/v1/remove", params=params, files=files, headers={"Cache-Control": "no-cache"})

    with ThreadPoolExecutor(len(uploads)) as pool:
        return list(pool.map(send, uploads))


def mixed_uploads() -> list[bytes]:
    rng = np.random.default_rng(11)
    return [
        png_bytes(scenes.make_scene(rng, SCENE_HEIGHT, SCENE_WIDTH).image),
        png_bytes(scenes.make_scene(rng, SCENE_HEIGHT, SCENE_WIDTH, subject=False).image),  # background only
        png_bytes(np.asarray(Image.fromarray(skimage_photo("rocket")).resize((SCENE_WIDTH, SCENE_HEIGHT)))),
        png_bytes(scenes.make_scene(rng, SCENE_HEIGHT, SCENE_WIDTH).image),
    ]


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(client: httpx.Client) -> None:
    uploads = mixed_uploads()
    singles = [remove(client, data, tier="fast", effect="mask") for data in uploads]
    assert all(r.headers["x-batch-size"] == "1" for r in singles)
    batched = burst(client, uploads, tier="fast", effect="mask")
    sizes = [int(r.headers["x-batch-size"]) for r in batched]
    assert max(sizes) > 1, sizes
    for single, together in zip(singles, batched, strict=True):
        assert np.abs(decode(single).astype(int) - decode(together).astype(int)).max() <= 1


def test_corrupt_upload_in_a_burst_fails_alone(client: httpx.Client) -> None:
    """A truncated PNG sent together with good uploads: it fails at decode in the ingress (400, before any model
    call), and the requests beside it are answered."""
    uploads = mixed_uploads()
    uploads[1] = uploads[1][: len(uploads[1]) // 3]  # truncated PNG
    responses = burst(client, uploads, tier="fast", effect="mask")
    assert responses[1].status_code == 400
    assert responses[1].json()["error"]["code"] == "invalid_image"
    assert [r.status_code for i, r in enumerate(responses) if i != 1] == [200, 200, 200]


@pytest.mark.parametrize("tier", TIERS)
def test_one_pixel_wide_images_are_answered_at_their_size(client: httpx.Client, tier: str) -> None:
    """1x1 (pymatting divides by zero on it), 1xN and Nx1: 200 at the upload's size, soft rgba included."""
    rng = np.random.default_rng(1)
    for height, width in ((1, 1), (1, 37), (37, 1)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for effect in ("rgba", "mask"):
            response = remove(client, png_bytes(image), tier=tier, effect=effect)
            assert decode(response).shape[:2] == (height, width), (height, width, effect)


def test_quality_tier_caps_a_panorama(client: httpx.Client) -> None:
    """Remover would feed a 3008x192 panorama to the model as it is; the quality tier caps the long side."""
    panorama = np.tile(scenes.make_scenes(seed=3, count=1, height=200, width=200)[0].image, (1, 15, 1))
    response = remove(client, png_bytes(panorama), tier="quality", effect="mask")
    assert decode(response).shape == (200, 3000)
    assert response.headers["x-model-input"] == "2560x160"


def test_limits_answer_413(client: httpx.Client) -> None:
    huge = png_bytes(np.zeros((7200, 7200), np.uint8))  # 51.8 MP, a few hundred KB as PNG: refused before decoding
    response = remove(client, huge, tier="fast")
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunks():  # a streamed upload without Content-Length, over the 32 MiB limit
        for _ in range(33):
            yield b"\0" * (1024 * 1024)

    response = client.post(
        "/v1/remove", params={"tier": "fast"}, content=chunks(), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_unknown_paths_and_methods_answer_json(client: httpx.Client) -> None:
    for response, status in ((client.get("/v2/nothing"), 404), (client.get("/v1/remove"), 405)):
        assert response.status_code == status
        assert response.json()["error"]["code"] in ("not_found", "method_not_allowed")


def test_invalid_item_in_a_model_batch_fails_alone(service: str) -> None:
    """Straight at the model deployment (the ingress would refuse a bad upload before it reaches a batch): an
    invalid array batched with three good ones gets its own error, and the three still share one model call."""
    from ray import serve

    from serve_app.errors import InvalidImageError
    from tests.integration.conftest import APP_NAME

    handle = serve.get_deployment_handle("fast", APP_NAME)
    good = [np.asarray(Image.fromarray(s.image).resize((128, 128))) for s in scenes.make_scenes(3, 3, 128, 128)]
    responses = [handle.predict.remote(image) for image in (good[0], np.zeros((128, 128), np.float32), *good[1:])]
    results = []
    for response in responses:
        try:
            results.append(response.result(timeout_s=60))
        except Exception as exc:
            results.append(exc)
    assert isinstance(results[1], InvalidImageError), results[1]
    assert [r.batch_size for i, r in enumerate(results) if i != 1] == [3, 3, 3]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"params": {"tier": "ultra"}}, 422, "invalid_parameter"),
        ({"params": {"efect": "mask"}}, 422, "invalid_parameter"),
        ({"params": {"threshold": "2"}}, 422, "invalid_parameter"),
        ({"params": {"color": "nope"}}, 422, "invalid_parameter"),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_upload"),
        ({"content": b"GIF89a broken", "headers": {"content-type": "image/gif"}}, 400, "invalid_image"),
        ({"json": {"image": "base64?"}}, 415, "unsupported_media_type"),
        ({"files": {"picture": ("x.png", b"123", "image/png")}}, 422, "invalid_parameter"),
        (
            {"content": b"--x\r\nnot a part", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            400,
            "malformed_request",
        ),
        (
            {"content": b"\0" * (32 * 1024 * 1024 + 1), "headers": {"content-type": "image/png"}},
            413,
            "payload_too_large",
        ),
        (
            {"files": {"image": ("x.png", b"123", "image/png")}, "data": {"color": "9" * 70_000}},
            413,
            "payload_too_large",
        ),
    ],
    ids=[
        "tier",
        "unknown-param",
        "threshold",
        "color",
        "empty",
        "corrupt",
        "json",
        "no-image-field",
        "multipart",
        "too-big",
        "long-text-field",
    ],
)
def test_bad_requests_get_json_errors(client: httpx.Client, request_kwargs: dict, status: int, code: str) -> None:
    response = client.post("/v1/remove", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_a_multipart_body_cut_before_its_closing_boundary_says_so(client: httpx.Client) -> None:
    """The image part without its closing boundary is not read at all; the 422 says what may be wrong."""
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    cut = png_bytes(scenes.make_scenes(seed=8, count=1, height=32, width=32)[0].image)
    response = client.post(
        "/v1/remove", content=head + cut, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert response.status_code == 422 and "closing boundary" in response.json()["error"]["message"], response.text


def test_an_image_sent_as_text_and_rembgs_field_are_named_in_the_422(client: httpx.Client) -> None:
    """`curl -F image=<photo.png` sends the file as a text field: the 422 said there was no field 'image' while
    listing 'image' among those sent. rembg's callers send 'file', which the message did not name."""
    other_file = {"notes": ("notes.txt", b"x", "text/plain")}  # httpx sends multipart only with a file part
    as_text = client.post("/v1/remove", data={"image": "not a file part"}, files=other_file)
    assert as_text.status_code == 422 and "image=@photo.jpg" in as_text.json()["error"]["message"], as_text.text
    image = {"image": ("a.png", png_bytes(scenes.make_scenes(seed=9, count=1, height=32, width=32)[0].image))}
    as_text = client.post("/v1/remove", params={"effect": "background"}, data={"background": "x"}, files=image)
    assert as_text.status_code == 422 and "background=@photo.jpg" in as_text.text, as_text.text
    no_file = client.post("/api/remove", data={"model": "u2netp"}, files=other_file)
    assert no_file.status_code == 422 and "'file'" in no_file.json()["error"]["message"], no_file.text
    # A misspelt background was dropped silently (an rgba came back): now a 422 that names it. rembg's route
    # ignores what rembg ignores.
    misspelt = client.post("/v1/remove", params={"effect": "mask"}, files={**image, "backgroud": ("b.png", b"x")})
    assert misspelt.status_code == 422 and "'backgroud'" in misspelt.json()["error"]["message"], misspelt.text
    rembg = client.post("/api/remove", files={"file": image["image"], "extra": ("x.txt", b"x")}, data={"om": "true"})
    assert rembg.status_code == 200, rembg.text


def slow_upload(
    service: str, declared: int, chunk: bytes, pause_s: float, limit_s: float = 30.0
) -> tuple[int, dict, float]:
    """POST an image body that arrives ``chunk`` every ``pause_s`` seconds (raw HTTP: a client can be this slow);
    the status, JSON body and seconds until the service answered."""
    address = urlsplit(service)
    head = (
        f"POST /v1/remove?tier=fast HTTP/1.1\r\nHost: {address.hostname}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {declared}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((address.hostname, address.port), timeout=limit_s) as connection:
        connection.sendall(head)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < limit_s:
            if sent < declared:
                part = chunk[: declared - sent]
                try:
                    connection.sendall(part)
                except OSError:  # the service answered and closed: read what it said
                    break
                sent += len(part)
            if select.select([connection], [], [], pause_s)[0]:
                break
        answered = time.monotonic() - started
        raw = b""
        while chunk_in := connection.recv(65536):
            raw += chunk_in
    head_part, _, body = raw.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    return status, json.loads(body) if body.startswith(b"{") else {}, answered


def test_a_stalled_upload_gets_408_and_frees_its_slot(service: str) -> None:
    """A body that stops after 1 KB is cut off at configs/test.yaml's upload_stall_s, not at Serve's request
    timeout (120 s here)."""
    stall_s = upload_stall_s_in_test_config()
    status, body, seconds = slow_upload(service, declared=100_000, chunk=b"\x89PNG" + b"\0" * 996, pause_s=30)
    assert status == 408 and body["error"]["code"] == "upload_too_slow", (status, body)
    assert stall_s - 0.5 < seconds < stall_s + 8, seconds


def test_a_crawling_upload_gets_408(service: str) -> None:
    """200 bytes every half second never pauses for the stall limit, but averages 400 bytes/s, under the 16 KiB/s
    minimum."""
    status, body, seconds = slow_upload(service, declared=100_000, chunk=b"\0" * 200, pause_s=0.5)
    assert status == 408 and body["error"]["code"] == "upload_too_slow", (status, body)
    assert "bytes/s" in body["error"]["message"] and seconds < 15, (body, seconds)
