import io
import tracemalloc

import cv2
import numpy as np
import pytest

from serve_app import effects
from serve_app.effects import (
    BLUR_SIGMA,
    EMPTY_BOX,
    EXACT_BLUR_SIGMA,
    Box,
    alpha_to_uint8,
    apply_effect,
    blurred,
    cover,
    crop_box,
    finalize_alpha,
    foreground_box,
)
from serve_app.schemas import Effect, Refine, RemoveParams
from tests.support.scenes import SoftComposite, soft_band_colour_error, soft_composite


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A noisy image and an alpha that is 1 on the left third, 0 on the right third, soft in the middle."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    alpha = np.zeros((30, 60), np.float32)
    alpha[:, :20] = 1.0
    alpha[:, 20:40] = np.linspace(1.0, 0.0, 20, dtype=np.float32)
    return image, alpha


def test_finalize_alpha_threshold_and_reverse() -> None:
    alpha = np.array([[0.1, 0.5, 0.51, 0.9]], np.float32)
    np.testing.assert_array_equal(finalize_alpha(alpha, None, False), alpha)
    np.testing.assert_array_equal(finalize_alpha(alpha, 0.5, False), [[0, 0, 1, 1]])
    np.testing.assert_allclose(finalize_alpha(alpha, None, True), 1 - alpha)
    np.testing.assert_array_equal(finalize_alpha(alpha, 0.5, True), [[1, 1, 0, 0]])


def test_mask_truncates_like_remover() -> None:
    alpha = np.array([[0.0, 0.5, 0.999, 1.0]], np.float32)
    np.testing.assert_array_equal(alpha_to_uint8(alpha), [[0, 127, 254, 255]])
    out = apply_effect(np.zeros((1, 4, 3), np.uint8), alpha, Effect.MASK)
    assert out.shape == (1, 4) and out.dtype == np.uint8


def test_color_composites_over_the_colour(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    out = apply_effect(image, alpha, Effect.COLOR, (0, 255, 0, 255))
    np.testing.assert_array_equal(out[:, :20], image[:, :20])
    np.testing.assert_array_equal(out[:, 40:], np.broadcast_to((0, 255, 0), out[:, 40:].shape))
    expected = image[:, 30].astype(np.float32) * alpha[:, 30:31] + np.array([0, 255, 0]) * (1 - alpha[:, 30:31])
    np.testing.assert_array_equal(out[:, 30], expected.astype(np.uint8))


def test_blur_keeps_the_subject_and_blurs_the_background(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    out = apply_effect(image, alpha, Effect.BLUR)
    np.testing.assert_array_equal(out[:, :20], image[:, :20])
    blurred = cv2.GaussianBlur(image, (0, 0), BLUR_SIGMA)
    np.testing.assert_array_equal(out[:, 40:], blurred[:, 40:])
    assert out[:, 40:].std() < image[:, 40:].std() / 3


def test_rgba_hard_alpha_keeps_original_colours(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    hard = finalize_alpha(alpha, 0.5, False)
    out = apply_effect(image, hard, Effect.RGBA, refine=Refine.NONE)
    assert out.shape == (30, 60, 4)
    np.testing.assert_array_equal(out[..., :3], image)
    np.testing.assert_array_equal(out[..., 3], alpha_to_uint8(hard))


def test_rgba_soft_alpha_estimates_foreground_colours() -> None:
    """Over a soft edge between a red subject and a blue background, the estimated foreground stays red."""
    alpha = np.tile(np.linspace(1.0, 0.0, 40, dtype=np.float32), (20, 1))
    red, blue = np.array([220, 30, 30], np.float32), np.array([30, 30, 220], np.float32)
    image = (alpha[..., None] * red + (1 - alpha[..., None]) * blue).astype(np.uint8)
    out = apply_effect(image, alpha, Effect.RGBA)
    np.testing.assert_array_equal(out[..., 3], alpha_to_uint8(alpha))
    middle = out[:, 15:25, :3].astype(int)
    assert (middle[..., 0] - middle[..., 2]).mean() > 100  # the raw image there is purple, the foreground red


def test_size_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="differ"):
        apply_effect(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.float32), Effect.MASK)


def traced_peak_per_pixel(work, pixels: int) -> float:  # type: ignore[no-untyped-def]
    """Peak bytes numpy (and pymatting's numba arrays) hold during ``work()``, per pixel of the image."""
    work()  # once first: lazy imports and caches are not the request's memory
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1] / pixels
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def photo_and_alpha() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (400, 600, 3), dtype=np.uint8), rng.random((400, 600)).astype(np.float32)


@pytest.mark.parametrize("effect", [Effect.MASK, Effect.COLOR, Effect.BLUR])
def test_composites_make_no_float64_copies(effect: Effect, photo_and_alpha: tuple[np.ndarray, np.ndarray]) -> None:
    """A 50-megapixel upload is allowed: two float32 RGB buffers (24 bytes a pixel) are the most an effect may
    hold. One float64 RGB copy alone is 24 bytes a pixel, so any float64 work fails this (it took 40-43)."""
    image, alpha = photo_and_alpha
    assert traced_peak_per_pixel(lambda: apply_effect(image, alpha, effect), alpha.size) <= 32


def test_rgba_adds_nothing_to_pymattings_own_memory(photo_and_alpha: tuple[np.ndarray, np.ndarray]) -> None:
    """pymatting works in float32 whatever it gets (~75 bytes a pixel of its own); float64 input only added
    copies (20 bytes a pixel more)."""
    from pymatting import estimate_foreground_ml

    image, alpha = photo_and_alpha
    pymatting_alone = traced_peak_per_pixel(lambda: estimate_foreground_ml(image.astype(np.float32), alpha), alpha.size)
    ours = traced_peak_per_pixel(lambda: apply_effect(image, alpha, Effect.RGBA, refine=Refine.FULL), alpha.size)
    assert ours <= pymatting_alone + 4, (ours, pymatting_alone)


@pytest.fixture(scope="module")
def composites() -> list[SoftComposite]:
    return [soft_composite(seed) for seed in range(3)]


def test_fast_refinement_finds_edge_colours_nearly_as_well_as_full_estimation(composites: list[SoftComposite]) -> None:
    """On 1920x1080 composites with a known foreground under a feathered edge and strands, the colour error of
    fast refinement in the soft band: within 10% of full-size estimate_foreground_ml's over the scenes (each
    within 20%), and far below taking the image's colours (no estimation). Measured: 1.00x, 1.02x, 1.14x."""
    fast, full, none = [], [], []
    for composite in composites:
        image, alpha = composite.image, composite.alpha
        for errors, refine in ((fast, Refine.FAST), (full, Refine.FULL), (none, Refine.NONE)):
            colours = apply_effect(image, alpha, Effect.RGBA, refine=refine)[..., :3]
            errors.append(soft_band_colour_error(colours, composite))
    ratios = [f / m for f, m in zip(fast, full, strict=True)]
    assert sum(fast) <= 1.10 * sum(full), ratios
    assert max(ratios) <= 1.20, ratios
    assert sum(fast) <= 0.4 * sum(none), (fast, none)


def test_fast_refinement_keeps_colours_outside_the_soft_band(composites: list[SoftComposite]) -> None:
    composite = composites[0]
    alpha = composite.alpha.copy()
    alpha[alpha > 0.9] = 1.0
    alpha[alpha < 0.1] = 0.0
    out = apply_effect(composite.image, alpha, Effect.RGBA)
    hard = (alpha == 0.0) | (alpha == 1.0)
    np.testing.assert_array_equal(out[..., :3][hard], composite.image[hard])
    assert (out[..., :3][~hard] != composite.image[~hard]).any()  # and changes the soft band
    np.testing.assert_array_equal(out[..., 3], alpha_to_uint8(alpha))


def test_refine_has_boolean_aliases() -> None:
    assert RemoveParams(refine="false").refine == Refine.NONE
    assert RemoveParams(refine="true").refine == Refine.FAST
    assert RemoveParams().refine == Refine.FAST


def test_foreground_box_holds_the_subject() -> None:
    alpha = np.zeros((50, 80), np.float32)
    alpha[10:20, 30:45] = 1.0
    alpha[25, 60] = 0.5  # a soft edge's pixel, not over 0.5: outside the box
    alpha[22, 50] = 0.6  # the subject's: inside
    assert foreground_box(alpha) == Box(top=10, left=30, width=21, height=13)
    assert foreground_box(np.zeros((5, 5), np.float32)) == EMPTY_BOX and EMPTY_BOX.empty


def test_crop_box_grows_by_pixels_or_percent_within_the_image() -> None:
    box = Box(top=10, left=30, width=20, height=10)
    assert crop_box(box, "0", 50, 80) == box
    assert crop_box(box, "5", 50, 80) == Box(5, 25, 30, 20)
    assert crop_box(box, "50%", 50, 80) == Box(0, 20, 40, 30)  # 10 px: half of the longer side; top clipped at 0
    assert crop_box(box, "100", 50, 80) == Box(0, 0, 80, 50)
    assert crop_box(EMPTY_BOX, "10", 50, 80) == Box(0, 0, 80, 50)  # no subject: nothing is cropped


def test_postprocess_crops_to_the_subject_and_reports_its_box() -> None:
    from PIL import Image

    from serve_app.pipeline import postprocess

    image = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    mask = np.zeros((60, 90), np.float32)
    mask[20:40, 10:30] = 1.0
    whole = postprocess(image, mask, RemoveParams(effect="mask"))
    cropped = postprocess(image, mask, RemoveParams(effect="rgba", crop=True, crop_margin="2"))
    assert whole.foreground == cropped.foreground == Box(20, 10, 20, 20)
    assert Image.open(io.BytesIO(whole.body)).size == (90, 60)
    out = np.asarray(Image.open(io.BytesIO(cropped.body)))
    assert out.shape == (24, 24, 4)
    np.testing.assert_array_equal(out[..., :3], image[18:42, 8:32])
    empty = postprocess(image, np.zeros_like(mask), RemoveParams(effect="rgba", crop=True))
    assert empty.foreground == EMPTY_BOX and Image.open(io.BytesIO(empty.body)).size == (90, 60)


def test_green_and_white_composite_over_transparent_backgrounds_colours(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    for effect, colour in ((Effect.GREEN, (120, 255, 155)), (Effect.WHITE, (255, 255, 255))):
        out = apply_effect(image, alpha, effect)
        np.testing.assert_array_equal(out[:, :20], image[:, :20])
        assert (out[:, 40:] == np.array(colour, np.uint8)).all()


def test_overlay_tints_the_subject_and_outlines_it(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    out = apply_effect(image, alpha, Effect.OVERLAY).astype(int)
    tinted = (image.astype(int) + np.array([120, 255, 155])) // 2
    np.testing.assert_array_equal(out[:, 2:18], tinted[:, 2:18])  # inside: halfway to green
    np.testing.assert_array_equal(out[:, 45:], image[:, 45:].astype(int))  # outside: as it was
    outline = (out == np.array([120, 255, 155])).all(axis=2)
    assert outline[:, 28:32].any(axis=1).all()  # the outline runs down the edge, at alpha 0.5


def test_blur_strength_is_the_gaussians_sigma(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene
    soft = apply_effect(image, alpha, Effect.BLUR, blur_sigma=2.0)
    expected = cv2.GaussianBlur(image, (0, 0), 2.0)
    np.testing.assert_array_equal(soft[:, 45:], expected[:, 45:])
    assert not np.array_equal(soft, apply_effect(image, alpha, Effect.BLUR))


def test_a_background_image_is_resized_to_cover_and_composited(scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, alpha = scene  # 30x60
    tall = np.zeros((200, 100, 3), np.uint8)
    tall[:, :, 2] = np.arange(200, dtype=np.uint8)[:, None]  # blue grows downwards
    covered = cover(tall, 30, 60)
    assert covered.shape == (30, 60, 3)
    # Scaled by 0.6 to 120x60 (the width covers), then the middle 30 rows: rows 75..124 of the original.
    assert 73 <= covered[0, 0, 2] <= 77 and 122 <= covered[-1, 0, 2] <= 126
    out = apply_effect(image, alpha, Effect.BACKGROUND, background=tall)
    np.testing.assert_array_equal(out[:, 45:], covered[:, 45:])
    np.testing.assert_array_equal(out[:, :20], image[:, :20])
    with pytest.raises(ValueError, match="background"):
        apply_effect(image, alpha, Effect.BACKGROUND)
    assert cover(np.zeros((10, 10, 3), np.uint8), 30, 60).shape == (30, 60, 3)  # upscaled too
    wide = cover(np.repeat(tall, 7, axis=1), 30, 60)  # 200x700, wider than 1:2: all its rows, scaled by 0.15
    assert wide[0, 0, 2] <= 5 and wide[-1, 0, 2] >= 193


def test_a_transparent_background_image_stays_transparent_behind_the_subject(
    scene: tuple[np.ndarray, np.ndarray],
) -> None:
    """Its alpha was dropped: the colours under its transparent pixels (often black) showed around the subject. Now
    the subject goes over it as Pillow's alpha_composite puts the cut-out onto it."""
    from PIL import Image

    image, alpha = scene  # 30x60: subject on the left third, soft in the middle, none on the right
    rng = np.random.default_rng(5)
    backdrop = np.dstack([rng.integers(0, 256, (30, 60, 3), dtype=np.uint8), np.zeros((30, 60), np.uint8)])
    backdrop[:15, :, 3] = 255  # opaque above, transparent below (black under it: what showed)...
    backdrop[15:, :, :3] = 0
    backdrop[:, 50:, 3] = 100  # ...and translucent on the right
    out = apply_effect(image, alpha, Effect.BACKGROUND, background=backdrop)
    assert out.shape == (30, 60, 4)
    cutout = Image.fromarray(np.dstack([image, alpha_to_uint8(alpha)]))
    expected = np.asarray(Image.alpha_composite(Image.fromarray(backdrop), cutout))
    assert np.abs(out.astype(int) - expected).max() <= 2
    np.testing.assert_array_equal(out[15:, 40:50, 3], 0)  # transparent where the backdrop is and no subject is
    np.testing.assert_array_equal(out[:15, 40:50], backdrop[:15, 40:50])
    np.testing.assert_array_equal(out[:15, 50:], backdrop[:15, 50:])  # translucent: its colours and alpha exactly
    clear = apply_effect(image, alpha, Effect.BACKGROUND, background=np.zeros((30, 60, 4), np.uint8))
    cut_out = apply_effect(image, alpha, Effect.RGBA, refine=Refine.NONE)
    np.testing.assert_array_equal(clear[..., 3], cut_out[..., 3])  # over nothing: the cut-out's own alpha
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)  # no subject: every level of the backdrop passes exactly
    behind = np.dstack([np.full((16, 16, 3), 77, np.uint8), levels])
    alone = apply_effect(image[:16, :16], np.zeros((16, 16), np.float32), Effect.BACKGROUND, background=behind)
    np.testing.assert_array_equal(alone[..., 3], levels)
    np.testing.assert_array_equal(alone[levels > 0][:, :3], 77)
    np.testing.assert_array_equal(out[:, :20, :3], image[:, :20])  # all subject: the photo, opaque
    assert (out[:, :20, 3] == 255).all()
    opaque = apply_effect(image, alpha, Effect.BACKGROUND, background=np.ascontiguousarray(backdrop[..., :3]))
    assert opaque.shape == (30, 60, 3)  # a background without alpha: an opaque answer, as before


def test_a_transparent_background_is_scaled_without_its_hidden_colours() -> None:
    """Scaled as it was, the black under a transparent half darkened the opaque half's edge (straight alpha's
    linear mix); scaled premultiplied, the colours where it shows are its own."""
    backdrop = np.zeros((100, 100, 4), np.uint8)
    backdrop[:, 50:] = (250, 250, 250, 255)  # white, opaque on the right; black, transparent on the left
    for height, width in ((33, 33), (300, 300), (40, 70)):  # down (INTER_AREA), up (INTER_LINEAR), and cropped
        covered = cover(backdrop, height, width)
        assert covered.shape == (height, width, 4)
        shows = covered[..., 3] > 0
        assert shows.any() and (covered[..., 3] < 255).any(), (height, width)  # an edge was scaled...
        assert np.abs(covered[shows][:, :3].astype(int) - 250).max() <= 3, (height, width)  # ...without black
    # A crop that fits as it is is not scaled, nor premultiplied: a faint pixel's colour is not rounded away.
    faint = np.dstack([np.full((200, 100, 3), (1, 2, 3), np.uint8), np.full((200, 100), 3, np.uint8)])
    np.testing.assert_array_equal(cover(faint, 100, 100), faint[50:150])


@pytest.mark.parametrize("shape", [(1, 2000, 3), (2000, 1, 3)])
def test_a_background_of_another_shape_costs_the_images_size_only(shape: tuple[int, int, int]) -> None:
    """Scaled to cover before it was cropped, a 1x2000 background behind a 200x200 image was 200x400000 pixels
    (240 MB; a 40000x1 photo behind a square asked for 4.8 GB)."""
    background = np.arange(2000 * 3, dtype=np.uint16).astype(np.uint8).reshape(shape)
    tracemalloc.start()
    covered = cover(background, 200, 200)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert covered.shape == (200, 200, 3)
    assert peak < 4 * covered.nbytes
    middle = background.reshape(-1, 3)[(2000 - 1) // 2]  # one pixel along its long side, from the middle
    np.testing.assert_array_equal(covered[100, 100], middle)  # the background's centre, as a cover crops it


def test_a_wide_blur_is_within_four_levels_of_the_exact_gaussian() -> None:
    """A wide Gaussian costs in proportion to its sigma (sigma 100: 2-3 s a megapixel, 90 s for the largest
    upload): over EXACT_BLUR_SIGMA it blurs a shrunk copy. On a 1920x1080 photo it was within 3 levels (mean 0.3);
    on this 480x270 one, within 4 (mean 0.8 at sigma 100, where the copy is 77x43)."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (480, 270), interpolation=cv2.INTER_AREA)
    for sigma in (BLUR_SIGMA, EXACT_BLUR_SIGMA):
        np.testing.assert_array_equal(blurred(photo, sigma), cv2.GaussianBlur(photo, (0, 0), sigma))
    for sigma in (20.0, 50.0, 100.0):
        difference = np.abs(blurred(photo, sigma).astype(np.int16) - cv2.GaussianBlur(photo, (0, 0), sigma))
        assert difference.max() <= 4 and difference.mean() < 1.0, sigma
    assert blurred(photo[:1, :1], 100.0).shape == (1, 1, 3)
    for narrow in (np.ascontiguousarray(np.repeat(photo[:, :3], 8, axis=0)), photo[:10], photo[:, :1]):
        difference = np.abs(blurred(narrow, 100.0).astype(np.int16) - cv2.GaussianBlur(narrow, (0, 0), 100.0))
        # Each axis shrunk by its own ratio: with the width's ratio for both, 2000x1 was 91 levels off.
        assert difference.max() <= 8, (narrow.shape, difference.max())


def test_a_wide_blur_runs_on_a_shrunk_copy_at_sigma_16(monkeypatch: pytest.MonkeyPatch) -> None:
    """What makes it cheap: the Gaussian itself never runs wider than EXACT_BLUR_SIGMA, nor at full size."""
    calls: list[tuple[tuple[int, ...], float]] = []
    gaussian = cv2.GaussianBlur

    def spy(image: np.ndarray, ksize: tuple[int, int], sigma: float, **kwargs: float) -> np.ndarray:
        calls.append((image.shape, max(sigma, kwargs.get("sigmaY", 0.0))))
        return gaussian(image, ksize, sigma, **kwargs)

    monkeypatch.setattr(effects.cv2, "GaussianBlur", spy)
    image = np.zeros((600, 800, 3), np.uint8)
    blurred(image, 100.0)
    ((shape, sigma),) = calls
    assert sigma <= EXACT_BLUR_SIGMA + 0.5 and shape[0] * shape[1] < image.shape[0] * image.shape[1] / 30


def test_a_translucent_colour_composites_as_pillow_does(scene: tuple[np.ndarray, np.ndarray]) -> None:
    """rembg's bgc with an alpha: Pillow's alpha_composite of the cut-out onto the colour (rembg's own code)."""
    from PIL import Image

    image, alpha = scene
    color = (10, 200, 30, 128)
    out = apply_effect(image, alpha, Effect.COLOR, color)
    assert out.shape == (*image.shape[:2], 4)
    cutout = Image.fromarray(np.dstack([image, alpha_to_uint8(alpha)]))
    expected = np.asarray(Image.alpha_composite(Image.new("RGBA", cutout.size, color), cutout))
    assert np.abs(out.astype(int) - expected).max() <= 2
    np.testing.assert_array_equal(out[:, 45:], np.broadcast_to(color, out[:, 45:].shape))  # no subject: the colour
    np.testing.assert_array_equal(out[:, :20, :3], image[:, :20])  # all subject: the photo, opaque
    assert (out[:, :20, 3] == 255).all()


def test_several_outputs_come_from_one_mask_in_one_zip() -> None:
    import zipfile

    from PIL import Image

    from serve_app.pipeline import postprocess

    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1.0
    params = RemoveParams(outputs="rgba, white:jpeg,mask,rgba:webp", format="png", refine="none")
    rendered = postprocess(image, mask, params)
    assert rendered.media_type == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(rendered.body))
    assert archive.namelist() == ["rgba.png", "white.jpg", "mask.png", "rgba.webp"]
    assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    for name in archive.namelist():  # each entry is what the single request makes
        effect, fmt = {"rgba.png": ("rgba", "png"), "white.jpg": ("white", "jpeg"), "mask.png": ("mask", "png"),
                       "rgba.webp": ("rgba", "webp")}[name]  # fmt: skip
        single = postprocess(image, mask, RemoveParams(effect=effect, format=fmt, refine="none"))
        assert archive.read(name) == single.body, name
        assert Image.open(io.BytesIO(archive.read(name))).size == (50, 40)
    assert rendered.foreground == single.foreground
    assert set(rendered.timings) == {"upsample", "effect", "encode"}
    assert postprocess(image, mask, params).body == rendered.body  # the same outputs, the same bytes (ETag)


@pytest.mark.parametrize(
    ("outputs", "complaint"),
    [
        ("rgba,sepia", "'sepia' is not effect"),
        ("mask:gif", "'mask:gif'"),
        ("rgba,rgba:png", "asked for twice"),
        ("", "'' is not effect"),
    ],
)
def test_bad_output_lists_are_refused(outputs: str, complaint: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=complaint):
        RemoveParams(outputs=outputs)
