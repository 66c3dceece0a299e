"""Image bytes in and out: decode to an upright RGB array, encode a result as PNG, WebP or JPEG."""

from __future__ import annotations

import functools
import io
import logging
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageCms, ImageOps, PngImagePlugin, UnidentifiedImageError

try:  # fpng writes 24/32-bit PNGs ~10x faster than zlib at level 1, files ~20% larger (docs/benchmarks.md)
    import fpng
except ImportError:  # a platform without its wheel: Pillow writes them
    fpng = None

from serve_app.errors import EmptyUploadError, InvalidImageError, InvalidParameterError, PayloadTooLargeError
from serve_app.schemas import OutputFormat

logger = logging.getLogger(__name__)

MEDIA_TYPES: dict[OutputFormat, str] = {
    OutputFormat.PNG: "image/png",
    OutputFormat.WEBP: "image/webp",
    OutputFormat.JPEG: "image/jpeg",
}
_PIL_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.WEBP: "WEBP", OutputFormat.JPEG: "JPEG"}
_HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# The formats an upload may be in: photos' and the web's. Pillow opens some forty more (EPS through Ghostscript,
# icon containers whose inner image is decoded before its size can be checked, scientific formats): none of them
# is a photo someone cuts out, and each is more code facing the internet.
Image.init()
INPUT_FORMATS = tuple(  # AVIF from Pillow 11.2: an older one would raise KeyError for every upload
    f for f in ("JPEG", "PNG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM", "TGA") if f in Image.OPEN
)
# A progressive JPEG is decoded once per scan, whatever the scan holds: 14 bytes of repeated scan cost ~17 ms of
# CPU at 49 MP, so 1 MB of them took minutes (libjpeg-turbo's "LJT-01-003"; its fix is an application's scan
# limit). Encoders write about 10 scans (libjpeg's default script), mozjpeg's optimised ones a few more.
MAX_JPEG_SCANS = 100
MAX_JPEG_MARKERS = 10_000  # real files have tens: the walk below stays short whatever the bytes
# A carried profile is cut to the size its header declares (anything appended after it, which littlecms ignores,
# is not copied into every result) and kept only up to this size: a display profile is a few kB, one with tables
# some hundreds. Not re-written by littlecms: a hostile profile's tags sharing one blob came out 88 times larger.
MAX_CARRIED_PROFILE_BYTES = 1 << 20
ICC_HEADER_BYTES = 128
# An RGB profile is told to be sRGB by what it does, not by its name ("Linear sRGB" is not; a renamed one is): it
# shows these colours within this many levels of what sRGB shows for them.
_PROBE_LEVELS = (0, 8, 32, 64, 128, 192, 255)
_PROBE = np.array(np.meshgrid(*[_PROBE_LEVELS] * 3, indexing="ij"), np.uint8).reshape(3, -1).T[None]
SRGB_TOLERANCE = 2
CACHED_PROFILE_BYTES = 64 * 1024
# Markers between segments and inside a scan's entropy-coded data, where FF00 is a stuffed byte, FFD0-FFD7 restart
# markers and FFFF fill: those are skipped by the pattern itself.
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_MARKERS_WITHOUT_LENGTH = {0x01, 0xD8, 0xD9}
_START_OF_SCAN, _END_OF_IMAGE, _APP1 = 0xDA, 0xD9, 0xE1


# Pillow reads a header's structure in Python, one segment, chunk or comment byte at a time: 32 MB of empty ones
# took it 11-16 s of the ingress's CPU (twice: once for the size, once to decode). Real files have tens; these
# bounds are checked first, by walks that stop at them.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_ANCILLARY_CHUNKS = 10_000  # any chunk but IDAT, Pillow's loop for each
MAX_PNG_CHUNKS = 100_000  # IDAT included: 32 MB at libpng's 8 kB a chunk is ~4,000
MAX_GIF_EXTENSION_BLOCKS = 10_000  # sub-blocks of the extensions before the first frame (XMP's trailer is 257)
MAX_PNM_HEADER_BYTES = 64 * 1024  # magic, sizes and comments; GIMP's comment is one line
MAX_JPEG_GAP_BYTES = 64 * 1024  # fill (FF) or junk between a JPEG's segments before its image: Pillow reads it bytewise
# Pillow joins Exif segments by concatenation (quadratic: 32 MB of them took 6.5 s); a camera writes one, of 64 kB
# at most.
MAX_JPEG_EXIF_BYTES = 1 << 20
MAX_PNM_COMMENTS = 1000
# Pillow handles a TIFF's strip and tile offsets in Python (100,000 one-row strips took 0.7 s, in a 1.2 MB file): an
# image of the largest size this service takes, in one-row strips, has ~20,000.
MAX_TIFF_STRIPS = 65_536
_TIFF_STRIP_TAGS = {273, 279, 324, 325}  # StripOffsets, StripByteCounts, TileOffsets, TileByteCounts


def structure_problem(data: bytes) -> str | None:
    """Why the upload's header is not one to hand to Pillow (a flood of empty segments, chunks or comments), else
    None. Each walk stops at its bound, so it costs milliseconds whatever the bytes."""
    if data.startswith(b"\xff\xd8"):
        return _jpeg_problem(data)
    if data.startswith(PNG_SIGNATURE):
        return _png_problem(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 13:
        return _gif_problem(data)
    if data[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_problem(data)
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 2:
        return _pnm_problem(data)
    return None


def _segment_end(data: bytes, start: int, marker: int) -> int:
    """Where the JPEG segment whose marker is at ``start`` ends: its length counts its own two bytes, not the
    marker's; a marker without a length is two bytes."""
    length = 0 if marker in _MARKERS_WITHOUT_LENGTH else int.from_bytes(data[start + 2 : start + 4], "big")
    return start + 2 + length


def _jpeg_problem(data: bytes) -> str | None:
    markers, position, gaps, exif = 0, 2, 0, 0
    too_much_gap = f"the JPEG has over {MAX_JPEG_GAP_BYTES // 1024} kB of fill or junk between its segments"
    while True:
        end = min(len(data), position + MAX_JPEG_GAP_BYTES - gaps + 2)  # the search stops where the bound would
        found = _JPEG_MARKER.search(data, position, end)
        if found is None:
            return too_much_gap if end < len(data) else None
        gaps += found.start() - position
        if gaps > MAX_JPEG_GAP_BYTES:
            return too_much_gap
        start, marker = found.start(), found.group()[1]
        if marker == _START_OF_SCAN:
            return None
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            return f"the JPEG has over {MAX_JPEG_MARKERS} segments before its image"
        position = _segment_end(data, start, marker)
        if marker == _APP1 and data.startswith(b"Exif\0\0", start + 4):
            exif += position - start - 2
            if exif > MAX_JPEG_EXIF_BYTES:
                return f"the JPEG has over {MAX_JPEG_EXIF_BYTES >> 20} MB of Exif segments"


def _png_problem(data: bytes) -> str | None:
    # IHDR first and once, as PNG has it (libpng refuses otherwise; Pillow takes the last): the pixel budget reads
    # the size from the first (declared_pixels).
    if data[12:16] != b"IHDR":
        return "the PNG does not start with its header (IHDR chunk)"
    chunks, ancillary, profiles, headers, image_seen = 0, 0, 0, 0, False
    for kind, _, _ in _png_chunks(data):
        if kind == b"fcTL" and image_seen:  # an APNG's next frame: Pillow stops there
            break
        image_seen = image_seen or kind == b"IDAT"
        chunks += 1
        ancillary += kind not in (b"IDAT", b"fdAT")
        profiles += kind == b"iCCP"
        headers += kind == b"IHDR"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS:
            break
    if headers > 1:
        return "the PNG has more than one header (IHDR chunk); PNG has one"
    if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY_CHUNKS:
        return f"the PNG has over {MAX_PNG_ANCILLARY_CHUNKS} chunks besides its image data, or {MAX_PNG_CHUNKS} in all"
    if profiles > 1:  # Pillow inflates each, up to 1 MB: 9,000 small ones (9 MB) cost 5 s
        return "the PNG has more than one colour profile (iCCP chunk); PNG allows one"
    return None


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each chunk of a PNG up to its IEND: (kind, start, end), the end past its CRC. Unbounded: its callers stop
    it (``_png_problem`` at its bounds; it runs first)."""
    position = 8
    while position + 8 <= len(data):
        kind = data[position + 4 : position + 8]
        if kind == b"IEND":
            return
        end = position + 12 + int.from_bytes(data[position : position + 4], "big")
        yield kind, position, end
        position = end


def without_oversized_png_profile(data: bytes) -> bytes:
    """A PNG whose ICC profile inflates past Pillow's ``MAX_TEXT_CHUNK`` (1 MB) failed to open as a whole (a 400).
    It is read as a JPEG's or a WebP's profile is (``wide_gamut_profile``): cut to the size its header declares
    where that fits (what follows is rewritten out), else dropped, being over ``MAX_CARRIED_PROFILE_BYTES`` (an iCCP
    chunk is ancillary: the PNG stays valid). Any other PNG is returned as is."""
    for kind, start, end in _png_chunks(data):
        if kind == b"IDAT":  # the profile comes before the image data
            break
        if kind == b"iCCP":
            payload = data[start + 8 : end - 4]
            header = payload[: payload.find(b"\0") + 2]  # the profile's name, its end and the compression method
            inflate = zlib.decompressobj()
            try:
                inflated = inflate.decompress(payload[len(header) :], PngImagePlugin.MAX_TEXT_CHUNK)
            except zlib.error:
                return data  # Pillow reads a corrupt profile as none
            if not inflate.unconsumed_tail:
                return data
            if zlib.crc32(data[start + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
                return data  # a broken chunk is Pillow's to refuse, not ours to mend
            declared = int.from_bytes(inflated[:4], "big")
            if not ICC_HEADER_BYTES <= declared <= min(len(inflated), MAX_CARRIED_PROFILE_BYTES):
                return data[:start] + data[end:]
            body = header + zlib.compress(inflated[:declared])
            chunk = len(body).to_bytes(4, "big") + b"iCCP" + body + zlib.crc32(b"iCCP" + body).to_bytes(4, "big")
            return data[:start] + chunk + data[end:]
    return data


def _gif_problem(data: bytes) -> str | None:
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the global colour table
    blocks = 0
    while position + 1 < len(data) and data[position] == 0x21:  # an extension, before the first frame
        position += 2  # its introducer and label, then sub-blocks until an empty one, which counts too (16 MB of
        while True:  # empty extensions took Pillow 3 s)
            blocks += 1
            if blocks > MAX_GIF_EXTENSION_BLOCKS:
                return f"the GIF has over {MAX_GIF_EXTENSION_BLOCKS} extension blocks before its first frame"
            if position >= len(data) or data[position] == 0:
                break
            position += data[position] + 1
        position += 1
    return None


def _tiff_problem(data: bytes) -> str | None:
    """Classic TIFF: the first image's directory, entries of 12 bytes."""
    order: Literal["little", "big"] = "little" if data[:2] == b"II" else "big"
    directory = int.from_bytes(data[4:8], order)
    entries = int.from_bytes(data[directory : directory + 2], order)
    for entry in range(directory + 2, min(len(data) - 7, directory + 2 + 12 * entries), 12):
        tag, count = data[entry : entry + 2], data[entry + 4 : entry + 8]
        if int.from_bytes(tag, order) in _TIFF_STRIP_TAGS and int.from_bytes(count, order) > MAX_TIFF_STRIPS:
            return f"the TIFF has over {MAX_TIFF_STRIPS} strips or tiles"
    return None


def _pnm_problem(data: bytes) -> str | None:
    numbers = 2 if data[1:2] in b"14" else 3  # bitmaps have no maximum value
    header = rb"P[1-6](?:(?:\s|#[^\r\n]*[\r\n])+\d+){%d}\s" % numbers
    if re.match(header, data[:MAX_PNM_HEADER_BYTES]) is None and len(data) > MAX_PNM_HEADER_BYTES:
        return f"the PNM header is not within its first {MAX_PNM_HEADER_BYTES // 1024} kB (a long comment?)"
    # Pillow cuts each comment out of a plain (text) raster with a copy of the rest: 1 MB of them took 6 s.
    if data[1:2] in b"123" and data.count(b"#") > MAX_PNM_COMMENTS:
        return f"the plain PNM has over {MAX_PNM_COMMENTS} comments"
    return None


def declared_pixels(data: bytes | None) -> int:
    """Width x height as the image's header declares it, read without decoding (0 when there is no image, or none
    this service reads: decoding it then says why)."""
    if not data or structure_problem(data) is not None:
        return 0
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:  # its one IHDR, first (_png_problem): whatever else
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")  # it holds (a large profile)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data), formats=INPUT_FORMATS).size
    except Exception:  # whatever a hostile header raises: decode_image turns it into a 4xx
        return 0
    return width * height


def jpeg_scans(data: bytes) -> int:
    """The scans in a JPEG's first image (up to its end-of-image marker), counted by walking its markers: each
    segment is skipped by its length, entropy-coded data by the pattern. Stops counting past ``MAX_JPEG_SCANS``."""
    scans, markers, position = 0, 0, 2  # after the start-of-image marker
    while scans <= MAX_JPEG_SCANS:
        found = _JPEG_MARKER.search(data, position)
        markers += 1
        if found is None or markers > MAX_JPEG_MARKERS:
            break
        start = found.start()
        marker = data[start + 1]
        if marker == _END_OF_IMAGE:
            break
        if marker == _START_OF_SCAN:
            scans += 1
        position = _segment_end(data, start, marker)
    if markers > MAX_JPEG_MARKERS:
        raise InvalidImageError(f"the JPEG has over {MAX_JPEG_MARKERS} segments before its image ends")
    return scans


class Decoded(NamedTuple):
    rgb: np.ndarray  # HxWx3 uint8, upright
    icc_profile: bytes | None  # the profile its colours need (``wide_gamut_profile``), else None
    alpha: np.ndarray | None  # HxW uint8, upright: the upload's own transparency; None where every pixel is opaque


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """The upload's pixels: ``decode_with_profile`` without the colour profile."""
    return decode_with_profile(data, max_pixels).rgb


def wide_gamut_profile(image: Image.Image) -> bytes | None:
    """The image's embedded ICC profile where its pixels need it to show their colours: an RGB profile that is not
    sRGB (a phone's Display P3, Adobe RGB, a linear one). None for one that shows colours as sRGB does, which
    every viewer assumes, and for a grey or CMYK profile, which no longer applies once the pixels are RGB."""
    icc = image.info.get("icc_profile")
    if not icc:
        return None
    declared = int.from_bytes(icc[:4], "big")  # the header's own size: what follows it is not the profile's
    if ICC_HEADER_BYTES <= declared < len(icc):
        icc = icc[:declared]
    if len(icc) > MAX_CARRIED_PROFILE_BYTES:
        return None
    icc = bytes(icc)
    # A phone's or a camera's profile (a few kB) comes again and again: its answer is kept (~2 ms each time).
    carry = _needs_carrying_cached(icc) if len(icc) <= CACHED_PROFILE_BYTES else needs_carrying(icc)
    return icc if carry else None


def needs_carrying(icc: bytes) -> bool:
    """An RGB profile that littlecms can use and that does not show colours as sRGB does."""
    try:
        if ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space != "RGB ":
            return False
        shown = converted(_PROBE, icc, None, strict=True).astype(np.int16)
    except (OSError, ImageCms.PyCMSError):  # a profile littlecms cannot read or use: the pixels go as they are
        return False
    return bool(np.abs(shown - _PROBE).max() > SRGB_TOLERANCE)


_needs_carrying_cached = functools.lru_cache(maxsize=64)(needs_carrying)  # keys at most 64 x 64 kB


def _profile(icc: bytes | None) -> ImageCms.ImageCmsProfile:
    # A new handle each time: littlecms reads a profile's tags lazily into it, so one is not shared by threads.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB") if icc is None else io.BytesIO(icc))


def converted(rgb: np.ndarray, source: bytes | None, target: bytes | None, strict: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB from one colour space to another, each an ICC profile or None for sRGB, as a viewer shows
    them (relative colorimetric). Where littlecms cannot go into ``target`` (an input-only profile), the pixels
    as they are, unless ``strict``."""
    if source == target:
        return rgb
    try:
        transform = ImageCms.buildTransform(
            _profile(source), _profile(target), "RGB", "RGB", ImageCms.Intent.RELATIVE_COLORIMETRIC
        )
    except ImageCms.PyCMSError:
        if strict:
            raise
        return rgb
    return np.asarray(ImageCms.applyTransform(Image.fromarray(rgb), transform))


def decode_with_profile(data: bytes, max_pixels: int) -> Decoded:
    """Decode an upload in one of ``INPUT_FORMATS`` to an HxWx3 uint8 RGB array, turned upright by its EXIF
    orientation, the ICC profile its colours need (``wide_gamut_profile``: results carry it, pixels unchanged), and
    its own transparency, if any.

    Grey, palette, CMYK and 16-bit images become RGB; the model sees the colours under transparent pixels, as
    transparent-background's does (the results then keep the upload's transparency: ``postprocess``); an
    animation gives its first frame. The size is checked before the pixels are decoded.
    """
    if not data:
        raise EmptyUploadError("the image sent is empty (0 bytes)")  # as the body or a field: both are read so
    if (problem := structure_problem(data)) is not None:
        raise InvalidImageError(problem)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if data.startswith(PNG_SIGNATURE):
                data = without_oversized_png_profile(data)
            image = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise PayloadTooLargeError(
                    f"image is {width}x{height} = {width * height} pixels; this service takes at most {max_pixels}"
                )
            if image.format in ("JPEG", "MPO") and jpeg_scans(data) > MAX_JPEG_SCANS:
                raise InvalidImageError(
                    f"the JPEG has over {MAX_JPEG_SCANS} scans, each decoded in full: encoders write about ten"
                )
            image.load()
            upright: Image.Image = ImageOps.exif_transpose(image)  # malformed EXIF fails here: a 400, not a 500
            rgb = to_rgb(upright)
            alpha = own_alpha(upright)
            profile = wide_gamut_profile(image)
    except (PayloadTooLargeError, InvalidImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLargeError(f"image too large to decode safely: {exc}") from exc
    except UnidentifiedImageError:
        raise InvalidImageError(
            "the upload is not an image this service reads: JPEG, PNG, WebP, AVIF, GIF, BMP, TIFF, PNM or TGA (not "
            "every kind of each: a float or 32-bit colour TIFF is not read)"
        ) from None
    # Truncated or corrupt data inside a known format (AVIF's container errors are RuntimeErrors).
    except (OSError, SyntaxError, ValueError, RuntimeError) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from exc
    if rgb.size == 0:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    return Decoded(rgb, profile, alpha)


def own_alpha(image: Image.Image) -> np.ndarray | None:
    """An upload's alpha channel, or its palette's or its tRNS colour's transparency, as HxW uint8; None when it has
    none or every pixel is opaque (an RGBA photo from an editor, often: nothing to keep, and no array to hold). A
    16-bit PNG's transparent colour is not read (Pillow reads the pixels as 8 or 32 bits and the colour as 16)."""
    if image.mode in _HIGH_BIT_MODES or not image.has_transparency_data:
        return None
    with_alpha = image if image.mode in ("RGBA", "LA", "PA") else image.convert("RGBA")
    alpha = np.asarray(with_alpha.getchannel("A"), dtype=np.uint8)
    return None if alpha.min() == 255 else alpha


def to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in _HIGH_BIT_MODES:
        return np.repeat(high_bit_to_uint8(image)[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def high_bit_to_uint8(image: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grey image scaled to 0..255 (rounded), without float64 copies: 16-bit
    values (Pillow's I;16 modes, and mode I where its values fit 16 bits, as a 16-bit PGM's do) from 0..65535, a
    float image from 0..1 (brighter clipped), as viewers show them. Only 32-bit integers beyond 16 bits, whose
    range nothing says, are scaled by their own maximum."""
    values = np.asarray(image)
    top = int(values.max()) if values.size and image.mode == "I" else 0
    if image.mode.startswith("I;16") or (image.mode == "I" and top <= 65535):
        # round(v * 255 / 65535) exactly, in integers: (2 * 255 * v + 65535) // (2 * 65535) never ties.
        wide = values.astype(np.int32)  # a copy, worked on in place (510 * 65535 + 65535 fits)
        np.clip(wide, 0, 65535, out=wide)
        wide *= 2 * 255
        wide += 65535
        wide //= 2 * 65535
        return wide.astype(np.uint8)
    scaled = values.astype(np.float32)
    scaled *= 255.0 if image.mode == "F" else 255.0 / top
    scaled += 0.5
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite an RGBA array over white, for formats without alpha."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return (rgb + 0.5).astype(np.uint8)


JPEG_QUALITY = 95
WEBP_QUALITY = 90
# The longest side each encoder writes (libwebp's and libjpeg's limits); Pillow's PNG has none that an image under
# max_image_pixels reaches.
MAX_SIDE = {OutputFormat.WEBP: 16383, OutputFormat.JPEG: 65500}
FPNG_MAX_SIDE = 65535  # beyond, fpng writes a size that wrapped at 2**16 (70000 px wide came out 4464) or nothing


def check_encodable(height: int, width: int, formats: list[OutputFormat]) -> None:
    """A 422 for an output format that cannot hold an image this size: asked before the model runs."""
    for fmt in dict.fromkeys(formats):
        limit = MAX_SIDE.get(fmt)
        if limit is not None and max(height, width) > limit:
            raise InvalidParameterError(
                f"format={fmt.value} holds images up to {limit} pixels a side, and this one is {width}x{height}: "
                "ask for format=png"
            )


def encode_image(
    array: np.ndarray,
    fmt: OutputFormat,
    quality: int | None = None,
    lossless: bool = False,
    icc_profile: bytes | None = None,
) -> bytes:
    """Encode an HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) uint8 array; RGBA as JPEG goes onto white.
    ``quality`` (1-100) for JPEG and lossy WebP; ``lossless`` for WebP; ``icc_profile`` (an RGB one) goes into a
    colour image. Colour PNGs are fpng's where it is installed (the 1920x1080 cut-out in 10 ms instead of Pillow's
    100) and no profile is to be embedded, grey ones Pillow's (fpng has no grey)."""
    check_encodable(array.shape[0], array.shape[1], [fmt])
    if array.ndim == 3 and array.shape[2] == 4 and fmt == OutputFormat.JPEG:
        array = flatten_on_white(array)
    array = np.ascontiguousarray(array)
    profile = icc_profile if array.ndim == 3 else None  # an RGB profile means nothing to a grey mask
    fits_fpng = max(array.shape[:2]) <= FPNG_MAX_SIDE and profile is None
    if fmt == OutputFormat.PNG and array.ndim == 3 and fpng is not None and fits_fpng:
        return bytes(fpng.from_ndarray(array))
    image = Image.fromarray(array)
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if fmt == OutputFormat.JPEG:
        options = {"quality": quality or JPEG_QUALITY}
    elif fmt == OutputFormat.WEBP and lossless:
        # lossless: quality is effort (the least is fastest); exact keeps the colour under transparent pixels
        options = {"lossless": True, "quality": 0, "method": 0, "exact": True}
    elif fmt == OutputFormat.WEBP:
        options = {"quality": quality or WEBP_QUALITY, "method": 4}
    elif fmt == OutputFormat.PNG:
        options = {"compress_level": 1}  # fast: level 6 costs ~5x the time for ~10% smaller files (grey masks)
    if profile is not None:
        options["icc_profile"] = profile
    image.save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


ZIP_MEDIA_TYPE = "application/zip"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same outputs make the same bytes (ETag)


def zip_files(files: dict[str, bytes]) -> bytes:
    """A ZIP of named files, stored as they are: PNG, WebP and JPEG are compressed already, so deflating them again
    would cost time for a few bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)
    return buffer.getvalue()
