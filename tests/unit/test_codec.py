import io
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from serve_app import codec
from serve_app.codec import (
    INPUT_FORMATS,
    MAX_JPEG_MARKERS,
    MAX_JPEG_SCANS,
    converted,
    declared_pixels,
    decode_image,
    decode_with_profile,
    encode_image,
    flatten_on_white,
    jpeg_scans,
)
from serve_app.errors import EmptyUploadError, InvalidImageError, InvalidParameterError, PayloadTooLargeError
from serve_app.pipeline import Preprocessed, check_outputs_fit, decode_background, pixels_to_hold, postprocess
from serve_app.schemas import OutputFormat, RemoveParams
from tests.conftest import png_bytes
from tests.support.profiles import adobe_rgb, display_p3, rgb_profile

BIG = 10_000_000


def asymmetric(height: int = 24, width: int = 40) -> np.ndarray:
    """Every pixel distinct, so any flip or rotation shows."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 6, y * 10, (x + y) % 7 * 30], axis=-1).astype(np.uint8)


def with_orientation(stored: np.ndarray, orientation: int, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 100} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# What a camera stores for each EXIF orientation, given the upright picture (numpy's rot90 turns anticlockwise).
STORED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.rot90(a, 1)[::-1, :],
    6: lambda a: np.rot90(a, 1),
    7: lambda a: np.rot90(a, -1)[::-1, :],
    8: lambda a: np.rot90(a, -1),
}


@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_turned_upright(orientation: int) -> None:
    upright = asymmetric()
    data = with_orientation(np.ascontiguousarray(STORED[orientation](upright)), orientation)
    np.testing.assert_array_equal(decode_image(data, BIG), upright)


def test_exif_orientation_in_a_jpeg() -> None:
    y, x = np.mgrid[0:48, 0:80]
    upright = np.stack([x * 3, y * 5, np.full_like(x, 128)], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    decoded = decode_image(with_orientation(np.ascontiguousarray(np.rot90(upright, 1)), 6, "JPEG"), BIG)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright).mean() < 3
    assert np.abs(decoded.astype(int) - upright[::-1, ::-1]).mean() > 30  # a wrong turn would show


def test_grayscale_becomes_rgb() -> None:
    grey = np.arange(60, dtype=np.uint8).reshape(6, 10)
    out = decode_image(png_bytes(grey), BIG)
    assert out.shape == (6, 10, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], grey)


def test_palette_becomes_rgb() -> None:
    image = Image.fromarray(asymmetric()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), BIG)
    np.testing.assert_array_equal(out, np.asarray(image.convert("RGB")))


def test_rgba_drops_alpha_and_keeps_colour() -> None:
    rgba = np.dstack([asymmetric(), np.full((24, 40), 100, np.uint8)])
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), BIG), rgba[..., :3])


def test_cmyk_jpeg_becomes_rgb() -> None:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:, :8] = (255, 0, 0)
    rgb[:, 8:] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, format="JPEG", quality=100)
    out = decode_image(buffer.getvalue(), BIG)
    assert out.shape == (16, 16, 3)
    assert np.abs(out[4, 2].astype(int) - (255, 0, 0)).max() < 20
    assert np.abs(out[4, 13].astype(int) - (0, 0, 255)).max() < 20


def test_16_bit_grey_scales_to_8_bit() -> None:
    deep = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    out = decode_image(buffer.getvalue(), BIG)
    np.testing.assert_array_equal(out[..., 0], np.clip(deep / 65535 * 255 + 0.5, 0, 255).astype(np.uint8))


def test_16_bit_pgm_and_float_images_keep_their_brightness() -> None:
    """A 16-bit PGM (Pillow's mode I) and a float TIFF were scaled by their own brightest pixel: a dark PGM came
    out bright, and one hot pixel in a float image darkened all the others."""
    pgm = b"P5\n4 1\n65535\n" + np.array([0, 1000, 2000, 65535], ">u2").tobytes()
    assert Image.open(io.BytesIO(pgm)).mode == "I"
    np.testing.assert_array_equal(decode_image(pgm, BIG)[0, :, 0], [0, 4, 8, 255])
    dark = b"P5\n4 1\n65535\n" + np.array([0, 1000, 2000, 4000], ">u2").tobytes()
    np.testing.assert_array_equal(decode_image(dark, BIG)[0, :, 0], [0, 4, 8, 16])
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0.5, 0.25, 2.0, -1.0]], np.float32)).save(buffer, format="TIFF")
    np.testing.assert_array_equal(decode_image(buffer.getvalue(), BIG)[0, :, 0], [128, 64, 255, 0])


def test_16_bit_decode_makes_no_float64_copies() -> None:
    """Integer scaling: a 16-bit grey image costs the uint32 scratch and the RGB result (8 bytes a pixel here),
    where float64 arithmetic took ~25."""
    deep = np.random.default_rng(1).integers(0, 65536, (500, 600), dtype=np.uint16)
    data = png_bytes(deep)
    decode_image(data, BIG)
    tracemalloc.start()
    try:
        decode_image(data, BIG)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / deep.size <= 12


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue(), BIG).max() == 0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyUploadError),
        (b"this is not an image", InvalidImageError),
        (png_bytes(asymmetric())[:60], InvalidImageError),  # truncated inside the pixel data
    ],
    ids=["empty", "not-an-image", "truncated"],
)
def test_bad_uploads_raise_typed_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, BIG)


def saved(fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", INPUT_FORMATS)
def test_the_photo_and_web_formats_decode(fmt: str) -> None:
    assert decode_image(saved(fmt), BIG).shape == (24, 40, 3)


@pytest.mark.parametrize("fmt", ["ICO", "EPS", "PCX", "SGI", "DDS", "QOI", "JPEG2000", "SPIDER", "XBM"])
def test_other_formats_pillow_opens_are_refused(fmt: str) -> None:
    """Pillow opens some forty formats (EPS through Ghostscript; ICO, whose inner image is decoded before its size
    can be checked): an upload is read only as one of the formats photos and the web use."""
    data = saved(fmt, "1" if fmt == "XBM" else "RGB")
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would open it
    with pytest.raises(InvalidImageError, match="JPEG, PNG, WebP"):
        decode_image(data, BIG)


def test_the_declared_size_is_read_without_decoding() -> None:
    """What the ingress's pixel budget counts before it decodes anything; 0 where decoding will say what is wrong."""
    assert declared_pixels(png_bytes(asymmetric())) == 40 * 24
    header_only = png_bytes(np.zeros((3000, 4000, 3), np.uint8))[:100]  # the pixel data cut off: never decoded
    assert declared_pixels(header_only) == 3000 * 4000
    assert declared_pixels(None) == declared_pixels(b"") == declared_pixels(b"not an image") == 0
    assert declared_pixels(saved("ICO")) == 0  # not a format uploads are read as
    image, background = png_bytes(asymmetric()), png_bytes(asymmetric(30, 50))
    assert pixels_to_hold(image, background, RemoveParams(effect="background"), BIG) == 40 * 24 + 50 * 30
    assert pixels_to_hold(image, background, RemoveParams(effect="rgba"), BIG) == 40 * 24  # the background unused
    assert pixels_to_hold(image, None, RemoveParams(), 500) == 500  # over the limit: its decode gives the 413


def test_a_background_is_needed_exactly_when_an_output_uses_it() -> None:
    background = png_bytes(asymmetric(30, 50))
    assert decode_background(background, RemoveParams(effect="background"), BIG)[0].shape == (30, 50, 3)
    with_alpha = np.dstack([asymmetric(30, 50), np.full((30, 50), 128, np.uint8)])
    decoded, _ = decode_background(png_bytes(with_alpha), RemoveParams(effect="background"), BIG)
    np.testing.assert_array_equal(decoded, with_alpha)  # its transparency kept (it was dropped)
    assert decode_background(background, RemoveParams(outputs="rgba,background:jpeg"), BIG)[0] is not None
    assert decode_background(None, RemoveParams(effect="rgba"), BIG) == (None, None)
    with pytest.raises(InvalidParameterError, match="'background'"):
        decode_background(None, RemoveParams(effect="background"), BIG)
    with pytest.raises(InvalidParameterError, match="effect=background"):  # was silently dropped
        decode_background(background, RemoveParams(effect="rgba"), BIG)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLargeError, match="40x24"):
        decode_image(png_bytes(asymmetric()), max_pixels=40 * 24 - 1)
    assert decode_image(png_bytes(asymmetric()), max_pixels=40 * 24).shape == (24, 40, 3)


@pytest.mark.parametrize("fmt", list(OutputFormat))
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_encode_round_trips(fmt: OutputFormat, channels: int) -> None:
    base = asymmetric()
    alpha = np.tile(np.linspace(0, 255, base.shape[1]).astype(np.uint8), (base.shape[0], 1))
    array = {1: base[..., 0], 3: base, 4: np.dstack([base, alpha])}[channels]
    decoded = Image.open(io.BytesIO(encode_image(array, fmt)))
    assert decoded.format == {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}[fmt.value]
    assert decoded.size == (40, 24)
    grey_mode = "RGB" if fmt == OutputFormat.WEBP else "L"  # WebP has no grey mode
    expected_mode = {1: grey_mode, 3: "RGB", 4: "RGB" if fmt == OutputFormat.JPEG else "RGBA"}[channels]
    assert decoded.mode == expected_mode
    if fmt == OutputFormat.PNG:
        np.testing.assert_array_equal(np.asarray(decoded), array)


@pytest.mark.parametrize(("fmt", "longest"), [(OutputFormat.WEBP, 16383), (OutputFormat.JPEG, 65500)])
def test_a_side_over_the_encoders_limit_is_a_422_not_a_500(fmt: OutputFormat, longest: int) -> None:
    """libwebp writes at most 16383 pixels a side, libjpeg 65500: over that Pillow raised, and the ingress
    answered 500 after the model had run. The request is refused first, saying which format fits."""
    assert len(encode_image(np.zeros((1, longest, 3), np.uint8), fmt)) > 0
    with pytest.raises(InvalidParameterError, match=f"format={fmt.value} holds images up to {longest}.*png"):
        encode_image(np.zeros((longest + 1, 1, 3), np.uint8), fmt)
    panorama = Preprocessed(image=np.zeros((2, longest + 1, 3), np.uint8), model_input=np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(InvalidParameterError, match=f"{longest + 1}x2"):  # before the model runs
        check_outputs_fit(panorama, RemoveParams(format=fmt))
    with pytest.raises(InvalidParameterError):
        check_outputs_fit(panorama, RemoveParams(outputs=f"rgba,mask:{fmt.value}"))
    check_outputs_fit(panorama, RemoveParams(format="png"))
    check_outputs_fit(panorama, RemoveParams(format=fmt, crop=True))  # its size is known once the mask is


@pytest.mark.parametrize("shape", [(1, 65535), (1, 65536), (70000, 1), (1, 2**24 + 1)])
@pytest.mark.parametrize("channels", [3, 4])
def test_a_colour_png_longer_than_fpng_writes_comes_whole_from_pillow(shape: tuple[int, int], channels: int) -> None:
    """fpng stores a side in 16 bits: a 70000 px wide panorama came back as a 200 whose PNG said 4464 px and could not
    be read, and over 2**24 px it wrote nothing (a 200 with an empty body)."""
    line = np.zeros((*shape, channels), np.uint8)
    line[-1, -1] = (1, 2, 3, 4)[:channels]
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(line, OutputFormat.PNG))))
    np.testing.assert_array_equal(decoded, line)


def test_rgba_as_jpeg_is_flattened_on_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red-ish, right half fully transparent
    flat = flatten_on_white(rgba)
    np.testing.assert_array_equal(flat[0, 0], (200, 0, 0))
    np.testing.assert_array_equal(flat[0, 7], (255, 255, 255))
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(rgba, OutputFormat.JPEG))))
    assert decoded[4, 7].min() > 240 and decoded[4, 0, 0] > 180 and decoded[4, 0, 1] < 40


def test_lossless_webp_keeps_every_pixel_and_quality_trades_size() -> None:
    rng = np.random.default_rng(7)
    rgba = np.dstack([rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (48, 64), np.uint8)])
    exact = Image.open(io.BytesIO(encode_image(rgba, OutputFormat.WEBP, lossless=True)))
    np.testing.assert_array_equal(np.asarray(exact), rgba)
    lossy = np.asarray(Image.open(io.BytesIO(encode_image(rgba, OutputFormat.WEBP))))
    assert not np.array_equal(lossy, rgba)  # the default webp is lossy
    for fmt in (OutputFormat.JPEG, OutputFormat.WEBP):
        small, large = (len(encode_image(rgba[..., :3], fmt, quality=q)) for q in (20, 95))
        assert small < large, (fmt, small, large)


def test_a_request_for_lossless_webp_gets_the_same_pixels_as_png() -> None:
    from serve_app.pipeline import postprocess
    from serve_app.schemas import RemoveParams

    rng = np.random.default_rng(3)
    image, mask = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), rng.random((16, 16)).astype(np.float32)
    as_png = postprocess(image, mask, RemoveParams(effect="rgba", format="png"))
    as_webp = postprocess(image, mask, RemoveParams(effect="rgba", format="webp", lossless=True))
    assert as_webp.media_type == "image/webp"
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(as_webp.body))), np.asarray(Image.open(io.BytesIO(as_png.body)))
    )


def test_colour_pngs_are_written_fast_and_exact_from_several_threads() -> None:
    """fpng (not zlib) writes colour PNGs: the pixels come back exactly, through Pillow and OpenCV alike, also
    when the ingress's threads encode at once and from a view (a crop) of a larger array."""
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from serve_app import codec

    assert codec.fpng is not None, "fpng is a dependency: the fast PNG path must be the one tested"
    rng = np.random.default_rng(11)
    whole = np.dstack([rng.integers(0, 256, (300, 400, 3), np.uint8), rng.integers(0, 256, (300, 400), np.uint8)])
    views = [whole[10 + i : 200 + i, 20:333] for i in range(8)]  # non-contiguous crops
    with ThreadPoolExecutor(4) as pool:
        encoded = list(pool.map(lambda view: encode_image(view, OutputFormat.PNG), views))
    for view, data in zip(views, encoded, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), view)
        by_opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.cvtColor(by_opencv, cv2.COLOR_BGRA2RGBA), view)
    pillows = io.BytesIO()
    Image.fromarray(views[0]).save(pillows, format="PNG", compress_level=1)
    assert encoded[0] != pillows.getvalue()  # another writer than Pillow's


def test_a_wide_gamut_photos_profile_goes_into_its_colour_results() -> None:
    """A Display P3 photo's pixels mean other colours than sRGB's: results without its profile showed them washed
    out. They carry it, with the pixels unchanged (the model sees what Remover sees); the grey mask does not."""
    wide = display_p3()
    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).save(buffer, format="JPEG", quality=95, icc_profile=wide)
    pixels, profile, _ = decode_with_profile(buffer.getvalue(), BIG)
    assert profile == wide
    np.testing.assert_array_equal(pixels, decode_image(buffer.getvalue(), BIG))
    mask = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    for effect, fmt in [("rgba", "png"), ("white", "jpeg"), ("rgba", "webp"), ("mask", "png")]:
        params = RemoveParams(effect=effect, format=fmt)
        with_profile = Image.open(io.BytesIO(postprocess(pixels, mask, params, icc_profile=profile).body))
        without = Image.open(io.BytesIO(postprocess(pixels, mask, params).body))
        assert with_profile.info.get("icc_profile") == (None if effect == "mask" else wide), (effect, fmt)
        np.testing.assert_array_equal(np.asarray(with_profile), np.asarray(without))


def carried(profile: bytes) -> bytes | None:
    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).save(buffer, format="PNG", icc_profile=profile)
    return decode_with_profile(buffer.getvalue(), BIG)[1]


@pytest.mark.parametrize("space", ["sRGB", "LAB"])
def test_an_srgb_or_non_rgb_profile_is_not_carried(space: str) -> None:
    """sRGB is what every viewer assumes (and fpng, which writes no profile, keeps writing those PNGs); a grey,
    Lab or CMYK profile no longer applies once the pixels are RGB."""
    assert carried(rgb_profile(f"{space} built-in", space=space)) is None


def test_a_profile_is_told_to_be_srgb_by_its_colours_not_its_name() -> None:
    """GIMP names its linear exports "Linear sRGB": the name's "sRGB" dropped the profile, and its dark colours
    showed far darker. One that shows colours as sRGB does goes, whatever it is called."""
    for profile in (display_p3(), adobe_rgb(), rgb_profile("Linear sRGB", gamma=1.0)):
        assert carried(profile) == profile
    assert carried(rgb_profile("Wide built-in")) is None  # sRGB, renamed


def shown_as_srgb(data: bytes) -> np.ndarray:
    """An encoded result's pixels as a viewer shows them: converted from its embedded profile to sRGB."""
    image = Image.open(io.BytesIO(data))
    return converted(np.asarray(image.convert("RGB")), image.info.get("icc_profile"), None)


@pytest.mark.parametrize("profile", [display_p3(), adobe_rgb()], ids=["display-p3", "adobe-rgb"])
def test_colours_asked_for_show_as_asked_on_a_wide_gamut_photo(profile: bytes) -> None:
    """The colour asked for, transparent-background's green and white are sRGB; on a wide-gamut photo they were
    written as its pixels unconverted, so its profile showed them as other colours (#3a7bd5 as (21,125,220) on
    Display P3, green as (16,255,144))."""
    pixels = asymmetric(16, 16)
    mask = np.zeros((16, 16), np.float32)  # no subject: every pixel is the background's
    for params, expected in [
        (RemoveParams(effect="color", color="3a7bd5"), (0x3A, 0x7B, 0xD5)),
        (RemoveParams(effect="color", color="3a7bd5", format="jpeg"), (0x3A, 0x7B, 0xD5)),
        (RemoveParams(effect="green"), (120, 255, 155)),
        (RemoveParams(effect="white", format="jpeg"), (255, 255, 255)),
    ]:
        body = postprocess(pixels, mask, params, icc_profile=profile).body
        assert Image.open(io.BytesIO(body)).info.get("icc_profile") == profile
        error = np.abs(shown_as_srgb(body).astype(int) - expected).max()
        assert error <= (3 if params.format == "jpeg" else 1), (params, error)


def test_a_large_background_is_converted_at_the_photos_size() -> None:
    """Converted whole, a 50 MP wide-gamut background behind a small photo cost seconds and ~14 bytes a pixel
    beyond the pixel budget; it is covered to the photo's size first."""
    backdrop = np.full((2000, 3000, 3), (40, 160, 60), np.uint8)  # 18 MB
    params = RemoveParams(effect="background")
    tracemalloc.start()
    try:
        postprocess(asymmetric(16, 16), np.zeros((16, 16), np.float32), params, backdrop, None, display_p3())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak


def test_a_background_image_shows_its_own_colours_whatever_the_photos_space() -> None:
    """A background in another colour space than the photo's: its pixels were pasted as they were, so the result
    showed them as the photo's space has them."""
    backdrop = np.full((16, 16, 3), (40, 160, 60), np.uint8)
    mask = np.zeros((16, 16), np.float32)
    params = RemoveParams(effect="background")
    for photo_profile, backdrop_profile in [(display_p3(), None), (None, display_p3()), (adobe_rgb(), display_p3())]:
        body = postprocess(asymmetric(16, 16), mask, params, backdrop, photo_profile, backdrop_profile).body
        expected = converted(backdrop, backdrop_profile, None).astype(int)
        assert np.abs(shown_as_srgb(body).astype(int) - expected).max() <= 1, (photo_profile, backdrop_profile)
        translucent = np.dstack([backdrop, np.full((16, 16), 200, np.uint8)])  # the same, with an alpha: kept
        shown = Image.open(
            io.BytesIO(postprocess(asymmetric(16, 16), mask, params, translucent, None, backdrop_profile).body)
        )
        assert shown.mode == "RGBA" and (np.asarray(shown)[..., 3] == 200).all()
        assert np.abs(np.asarray(shown)[..., :3].astype(int) - expected).max() <= 1, backdrop_profile


def progressive_jpeg(extra_scans: int = 0) -> tuple[bytes, int]:
    """A progressive JPEG of a photo, with its last scan (an AC refinement, 14 bytes here) repeated
    ``extra_scans`` times before the end: libjpeg decodes each one in full, with only a warning."""
    buffer = io.BytesIO()
    Image.fromarray(asymmetric(64, 96)).save(buffer, format="JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last = data.rindex(b"\xff\xda")
    scan = data[last:-2]  # to the end-of-image marker
    return data[:-2] + scan * extra_scans + b"\xff\xd9", data.count(b"\xff\xda")


def test_a_jpegs_scans_are_counted_by_its_markers() -> None:
    data, scans = progressive_jpeg()
    assert 5 < scans < MAX_JPEG_SCANS  # libjpeg's script for a colour image
    assert jpeg_scans(data) == scans
    assert jpeg_scans(progressive_jpeg(7)[0]) == scans + 7
    baseline = io.BytesIO()
    Image.fromarray(asymmetric()).save(baseline, format="JPEG")
    assert jpeg_scans(baseline.getvalue()) == 1
    # Bytes that look like a start of scan inside a segment (a comment here) are skipped with the segment.
    commented = io.BytesIO()
    Image.fromarray(asymmetric()).save(commented, format="JPEG", comment=b"\xff\xda" * 500)
    assert jpeg_scans(commented.getvalue()) == 1
    np.testing.assert_array_equal(decode_image(commented.getvalue(), BIG), decode_image(baseline.getvalue(), BIG))


def test_a_jpeg_with_more_scans_than_encoders_write_is_refused_before_decoding() -> None:
    """Repeated scans cost a full decode each (17 ms at 49 MP for 14 bytes): 1 MB of them took minutes."""
    data, scans = progressive_jpeg(MAX_JPEG_SCANS - progressive_jpeg()[1])
    assert decode_image(data, BIG).shape == (64, 96, 3)  # at the limit: decoded
    with pytest.raises(InvalidImageError, match="scans"):
        decode_image(progressive_jpeg(MAX_JPEG_SCANS + 1 - scans)[0], BIG)


def test_a_jpeg_of_tiny_segments_is_refused_without_a_long_walk() -> None:
    data, _ = progressive_jpeg()
    padded = data[:2] + b"\xff\xfe\x00\x02" * (MAX_JPEG_MARKERS + 1) + data[2:]  # empty comment segments
    with pytest.raises(InvalidImageError, match="segments"):
        decode_image(padded, BIG)


def tiff_of_strips(rows: int) -> bytes:
    """A 1 x ``rows`` grey TIFF with one strip per row (little-endian, uncompressed), written field by field."""
    import struct

    entries, directory = 9, 8
    offsets_at = directory + 2 + 12 * entries + 4
    counts_at = offsets_at + 4 * rows
    pixels_at = counts_at + 4 * rows
    tags = [(256, 3, 1, 1), (257, 4, 1, rows), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1)]
    tags += [(273, 4, rows, offsets_at), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, rows, counts_at)]
    out = b"II*\0" + struct.pack("<IH", directory, entries)
    for tag, kind, count, value in tags:  # SHORT values sit in the first two bytes of the value field
        out += (
            struct.pack("<HHII", tag, kind, count, value)
            if kind == 4
            else struct.pack("<HHIHH", tag, kind, count, value, 0)
        )
    out += struct.pack("<I", 0) + struct.pack(f"<{rows}I", *range(pixels_at, pixels_at + rows))
    return out + struct.pack(f"<{rows}I", *[1] * rows) + bytes(rows)


def floods() -> dict[str, bytes]:
    """Headers padded with empty structure, one past each bound: JPEG segments, PNG chunks, GIF comment blocks, a
    PNM comment. Pillow walks such padding in Python (32 MB of it took 11-16 s)."""
    import struct
    import zlib

    def encoded(fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(asymmetric()).save(buffer, format=fmt)
        return buffer.getvalue()

    def chunk(kind: bytes, body: bytes = b"") -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    jpeg, png, gif = encoded("JPEG"), encoded("PNG"), encoded("GIF")
    table = 3 << ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0
    comment = b"\x21\xfe" + b"\x01x" * (codec.MAX_GIF_EXTENSION_BLOCKS + 1) + b"\x00"
    exif_segment = b"\xff\xe1" + (65533).to_bytes(2, "big") + b"Exif\0\0" + bytes(65533 - 8)  # a camera's largest
    return {
        "jpeg": jpeg[:2] + b"\xff\xe1\x00\x02" * (MAX_JPEG_MARKERS + 1) + jpeg[2:],
        "jpeg-fill": jpeg[:2] + b"\xff" * (codec.MAX_JPEG_GAP_BYTES + 1) + jpeg[2:],  # fill bytes, read one by one
        "jpeg-junk": jpeg[:2] + b"\xff\x00" + bytes(codec.MAX_JPEG_GAP_BYTES) + jpeg[2:],
        "png": png[:33] + chunk(b"abCd") * (codec.MAX_PNG_ANCILLARY_CHUNKS + 1) + png[33:],
        "png-idat": png[:33] + chunk(b"IDAT") * (codec.MAX_PNG_CHUNKS + 1) + png[33:],
        "gif": gif[: 13 + table] + comment + gif[13 + table :],
        "pnm": b"P6\n#" + b"a" * codec.MAX_PNM_HEADER_BYTES + b"\n4 4 255\n" + bytes(48),
        # Found by a review of the first version of these walks:
        "gif-empty": gif[: 13 + table] + b"\x21\xfe\x00" * (codec.MAX_GIF_EXTENSION_BLOCKS + 1) + gif[13 + table :],
        "pnm-plain": b"P2\n1 1\n255\n" + b"#\n" * (codec.MAX_PNM_COMMENTS + 1) + b"7\n",
        "jpeg-exif": jpeg[:2] + exif_segment * (codec.MAX_JPEG_EXIF_BYTES // len(exif_segment) + 1) + jpeg[2:],
        "tiff": tiff_of_strips(codec.MAX_TIFF_STRIPS + 1),  # Pillow reads the offsets in Python
    }


@pytest.mark.parametrize(
    "kind",
    ["jpeg", "jpeg-fill", "jpeg-junk", "jpeg-exif", "png", "png-idat", "gif", "gif-empty", "pnm", "pnm-plain", "tiff"],
)
def test_a_header_flooded_with_empty_structure_is_refused_before_pillow_reads_it(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = floods()[kind]
    opened: list[object] = []
    real_open = codec.Image.open
    monkeypatch.setattr(codec.Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    with pytest.raises(InvalidImageError, match=r"over|not within"):
        decode_image(data, BIG)
    assert codec.declared_pixels(data) == 0
    assert opened == []  # refused from the bytes: Pillow never walked them


def test_headers_within_the_bounds_still_decode() -> None:
    """What real files hold stays readable: a hundred empty chunks in a PNG, a PNM whose comments are long but end
    within its first 64 kB, an APNG of 6,000 frames. (Each bound's exact edge: the flood cases are one past it.)"""
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).save(buffer, format="PNG")
    png = buffer.getvalue()
    empty = struct.pack(">I", 0) + b"abCd" + struct.pack(">I", zlib.crc32(b"abCd"))
    assert decode_image(png[:33] + empty * 100 + png[33:], BIG).shape == asymmetric().shape
    pnm = b"P6\n" + b"# a comment\n" * 4000 + b"4 4 255\n" + bytes(48) + bytes(70_000)  # >64 kB in all
    assert decode_image(pnm, BIG).shape == (4, 4, 3)
    # An APNG's frames after the first are not walked: 6,000 frames (12,000 chunks) decoded before and do now.
    frames = [Image.new("RGB", (8, 8), (i % 256, 0, 0)) for i in range(6000)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue(), BIG).shape == (8, 8, 3)
    assert decode_image(tiff_of_strips(2000), BIG).shape == (2000, 1, 3)


def test_a_broken_avif_container_is_a_bad_image_not_a_server_error() -> None:
    if "AVIF" not in INPUT_FORMATS:
        pytest.skip("this Pillow reads no AVIF")
    buffer = io.BytesIO()
    Image.fromarray(asymmetric()).save(buffer, format="AVIF")
    broken = buffer.getvalue().replace(b"pitm", b"pitX", 1)  # its primary item is gone (RuntimeError in Pillow)
    with pytest.raises(InvalidImageError, match="could not be decoded"):
        decode_image(broken, BIG)


def test_a_carried_profile_is_rewritten_without_what_follows_it_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """littlecms ignores bytes after a profile: 4 MB of them behind an 8x8 image were copied into every result."""
    wide = display_p3()
    buffer = io.BytesIO()
    Image.fromarray(asymmetric(8, 8)).save(buffer, format="WEBP", lossless=True, icc_profile=wide + b"\0" * 4_000_000)
    assert decode_with_profile(buffer.getvalue(), BIG)[1] == wide
    monkeypatch.setattr(codec, "MAX_CARRIED_PROFILE_BYTES", len(wide) - 1)  # a profile over the bound goes
    assert decode_with_profile(buffer.getvalue(), BIG)[1] is None


def test_a_png_whose_profile_inflates_past_a_megabyte_is_read_as_other_formats_are() -> None:
    """Pillow refuses a PNG whose iCCP inflates past 1 MB (its MAX_TEXT_CHUNK): such a PNG was a 400, where a JPEG
    or a WebP with the same profile was read (the profile cut to its header's size, or not carried over 1 MB)."""
    wide, pixels = display_p3(), asymmetric(8, 8)
    for profile, carried in [(wide + b"\0" * 4_000_000, wide), (b"\0\x20\0\0" + b"\0" * 2_500_000, None)]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG", icc_profile=profile)
        with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):  # what Pillow does with it
            Image.open(io.BytesIO(buffer.getvalue()))
        decoded = decode_with_profile(buffer.getvalue(), BIG)
        np.testing.assert_array_equal(decoded.rgb, pixels)
        assert decoded.icc_profile == carried
        assert declared_pixels(buffer.getvalue()) == 8 * 8  # counted by the pixel budget (it was 0: not counted)
    small = png_bytes(pixels)
    assert codec.without_oversized_png_profile(small) is small  # any other PNG as it is
    data = buffer.getvalue()
    start = data.index(b"iCCP") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    broken = data[: end - 1] + bytes([data[end - 1] ^ 1]) + data[end:]  # a broken CRC: Pillow's to refuse, not mended
    assert codec.without_oversized_png_profile(broken) is broken


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def test_a_pngs_header_walks_stop_at_its_end_and_one_profile_is_allowed() -> None:
    """30 MB of empty chunks after IEND took the profile's walk ~1 s (Pillow stops at IEND); 9,000 small iCCP chunks
    (9 MB), each inflated by Pillow to 1 MB, took 5 s to decode."""
    header = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", (8).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
    past_the_end = header + png_chunk(b"IEND", b"") + png_chunk(b"tEXt", b"a\0b") * 1000
    assert [kind for kind, *_ in codec._png_chunks(past_the_end)] == [b"IHDR"]
    profile = png_chunk(b"iCCP", b"p\0\0" + zlib.compress(b"\0" * 1000))
    with pytest.raises(InvalidImageError, match="more than one colour profile"):
        decode_image(header + profile * 2 + png_chunk(b"IEND", b""), BIG)
    # The budget reads the size from the first IHDR; Pillow took the last one, or one after other chunks: a 1x1
    # header before a 2000x2000 one counted 1 pixel for a 4 MP decode.
    pixels = png_bytes(np.zeros((40, 30, 3), np.uint8))
    tiny = png_chunk(b"IHDR", (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0]))
    for hidden in (pixels[:8] + tiny + pixels[8:], pixels[:8] + png_chunk(b"tEXt", b"a\0b") + pixels[8:]):
        assert Image.open(io.BytesIO(hidden)).size == (30, 40)  # what Pillow decodes
        assert declared_pixels(hidden) == 0  # refused by its structure: nothing held
        with pytest.raises(InvalidImageError, match="header"):
            decode_image(hidden, BIG)


def test_a_profile_is_never_rewritten_larger_than_it_came() -> None:
    """littlecms copies each tag it does not parse on its own when it writes a profile: 100 tags over one blob
    came out 88 times the size sent (30 MB of WebP profile: gigabytes). The profile goes as it came, cut to its
    header's size."""
    wide = display_p3()
    count = int.from_bytes(wide[128:132], "big")
    blob_at, blob_size = 132 + 12 * (count + 40), 20_000
    entries = wide[132 : 132 + 12 * count] + b"".join(
        (0x61610000 + i).to_bytes(4, "big") + blob_at.to_bytes(4, "big") + (blob_size - i).to_bytes(4, "big")
        for i in range(40)
    )  # 40 private tags over one blob, each a byte shorter, after the real ones (whose offsets move by 480)
    body = bytearray(wide[:128] + (count + 40).to_bytes(4, "big") + entries + b"\0" * blob_size)
    for i in range(count):  # the real tags' data, moved behind the blob
        start = 132 + 12 * i
        offset, size = (
            int.from_bytes(entries[12 * i + 4 : 12 * i + 8], "big"),
            int.from_bytes(entries[12 * i + 8 : 12 * i + 12], "big"),
        )
        body[start + 4 : start + 8] = len(body).to_bytes(4, "big")
        body += wide[offset : offset + size] + b"\0" * (-size % 4)
    body[:4] = len(body).to_bytes(4, "big")
    profile = bytes(body)
    assert len(ImageCms.ImageCmsProfile(io.BytesIO(profile)).tobytes()) > 10 * len(profile)  # what littlecms does
    buffer = io.BytesIO()
    Image.fromarray(asymmetric(8, 8)).save(buffer, format="WEBP", lossless=True, icc_profile=profile)
    assert decode_with_profile(buffer.getvalue(), BIG)[1] == profile


def test_an_uploads_own_transparency_comes_with_its_pixels() -> None:
    """An upload's alpha was dropped: what it hid came back, its colours showing wherever the model took them for
    the subject. Alpha channels, palette transparency and a tRNS colour are kept; an opaque alpha is no alpha."""
    rgb = asymmetric()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :10] = 0
    alpha[:, 10:20] = 128
    decoded = decode_with_profile(png_bytes(np.dstack([rgb, alpha])), BIG)
    np.testing.assert_array_equal(decoded.alpha, alpha)
    np.testing.assert_array_equal(decoded.rgb, rgb)  # the model still sees every colour, hidden ones too
    grey = decode_with_profile(png_bytes(np.dstack([rgb[..., 0], alpha])), BIG)  # LA
    np.testing.assert_array_equal(grey.alpha, alpha)
    palette = Image.fromarray(rgb).quantize(8)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])  # one palette entry is transparent
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    decoded = decode_with_profile(buffer.getvalue(), BIG)
    assert decoded.alpha is not None
    np.testing.assert_array_equal(decoded.alpha == 0, np.asarray(palette) == np.asarray(palette)[0, 0])
    flat = np.zeros((8, 8, 3), np.uint8)
    flat[4:] = 200
    keyed = decode_with_profile(png_bytes(flat, transparency=(0, 0, 0)), BIG)  # a tRNS colour: black is clear
    assert keyed.alpha is not None and (keyed.alpha[:4] == 0).all() and (keyed.alpha[4:] == 255).all()
    assert decode_with_profile(png_bytes(np.dstack([rgb, np.full_like(alpha, 255)])), BIG).alpha is None
    assert decode_with_profile(png_bytes(rgb), BIG).alpha is None


def test_what_an_upload_hid_stays_hidden_in_every_output() -> None:
    """A PNG whose left half is transparent, over magenta the model would take for the subject there: the cut-out
    showed the hidden colours, the mask covered them; blur and overlay, which show the photo around the subject,
    showed them too (the review). The upload's alpha multiplies the matte (after reverse), and blur and overlay
    see the upload as it looks on white."""
    import zipfile

    rgb = np.dstack([np.full((64, 128), 255, np.uint8), asymmetric(64, 128)[..., 1], np.full((64, 128), 255, np.uint8)])
    rgb[:, :64] = (255, 0, 255)
    own = np.full(rgb.shape[:2], 255, np.uint8)
    own[:, :64] = 0
    mask = np.ones((16, 16), np.float32)  # the model: all subject
    rendered = postprocess(rgb, mask, RemoveParams(outputs="rgba,mask,white,blur,overlay"), own_alpha=own)
    with zipfile.ZipFile(io.BytesIO(rendered.body)) as archive:
        rgba, matte, white, blur, overlay = (
            np.asarray(Image.open(io.BytesIO(archive.read(n)))).astype(int) for n in archive.namelist()
        )
    assert (rgba[:, :64, 3] == 0).all() and (rgba[:, 64:, 3] >= 254).all()  # 254: the upsampling's float noise
    np.testing.assert_array_equal(matte, rgba[..., 3])
    assert (white[:, :64] == 255).all() and np.abs(white[:, 64:] - rgb[:, 64:]).max() <= 1
    for shown in (blur, overlay):  # magenta nowhere in the hidden half: white, as the upload shows on white
        assert (shown[:, :20] >= 240).all(), shown[:, :20].min()
    assert rendered.foreground.left == 64 and rendered.foreground.width == 64
    reverse = postprocess(rgb, np.zeros((16, 16), np.float32), RemoveParams(effect="mask", reverse=True), own_alpha=own)
    kept = np.asarray(Image.open(io.BytesIO(reverse.body)))
    assert (kept[:, :64] == 0).all() and (kept[:, 64:] >= 254).all()  # reversed, what was hidden is still hidden


@pytest.mark.parametrize("refine", ["fast", "full"])
def test_an_uploads_own_soft_pixels_keep_their_colours(refine: str) -> None:
    """A logo's anti-aliased edge or shadow: white at alpha 128 beside opaque black. Its alpha went into the matte
    before the edge colours were estimated, which took its white for a blend with the black (230 and less came
    back). The colours are estimated on the model's matte; the upload's alpha only multiplies the result's."""
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:, 32:] = 255
    own = np.full(rgb.shape[:2], 255, np.uint8)
    own[:, 32:] = 128
    rendered = postprocess(rgb, np.ones((16, 16), np.float32), RemoveParams(refine=refine), own_alpha=own)
    rgba = np.asarray(Image.open(io.BytesIO(rendered.body)))
    assert (rgba[:, 32:, :3] == 255).all(), rgba[:, 32:, :3].min()
    assert (np.abs(rgba[:, 32:, 3].astype(int) - 128) <= 1).all()
