"""The ingress's CPU work, as two plain functions around the model call: ``preprocess`` before it (decode,
upright, resize to the tier's input) and ``postprocess`` after it (upsample the mask, apply each requested effect,
encode; several outputs go into one ZIP), plus the response headers that say how a result was made."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from serve_app.codec import (
    MEDIA_TYPES,
    ZIP_MEDIA_TYPE,
    check_encodable,
    converted,
    declared_pixels,
    decode_with_profile,
    encode_image,
    zip_files,
)
from serve_app.effects import (
    EMPTY_BOX,
    GREEN,
    WHITE,
    Box,
    apply_effect,
    cover,
    crop_box,
    finalize_alpha,
    foreground_box,
    has_alpha,
    times_own_alpha,
)
from serve_app.errors import InvalidParameterError, ServiceError
from serve_app.resize import ResizePolicy, to_model_input, upsample_mask
from serve_app.schemas import RGB, Effect, MaskResult, Refine, RemoveParams


class Stopwatch:
    """Seconds per named step, for the Server-Timing header and the serving benchmark; a step timed again (one
    effect per output) adds up."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - self._last)
        self._last = now


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # upright RGB upload, HxWx3 uint8
    model_input: np.ndarray  # resized for the tier, hxwx3 uint8
    timings: dict[str, float] = field(default_factory=dict)  # decode, resize
    icc_profile: bytes | None = None  # a wide-gamut upload's colour profile: the results carry it
    alpha: np.ndarray | None = None  # the upload's own transparency (HxW uint8): the results keep it


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    foreground: Box = EMPTY_BOX  # the subject's box in the upright upload
    timings: dict[str, float] = field(default_factory=dict)  # upsample, effect, encode


def preprocess(data: bytes, policy: ResizePolicy, base_size: int, max_pixels: int) -> Preprocessed:
    watch = Stopwatch()
    image, icc_profile, alpha = decode_with_profile(data, max_pixels=max_pixels)
    watch.lap("decode")
    model_input = to_model_input(image, policy, base_size)
    watch.lap("resize")
    return Preprocessed(image, model_input, watch.timings, icc_profile, alpha)


def check_outputs_fit(prepared: Preprocessed, params: RemoveParams) -> None:
    """A 422, before the model runs, for an output format that cannot hold the image (WebP: 16383 px a side). A
    crop's size is known only once the mask is: its encoding checks it then."""
    if not params.crop:
        height, width = prepared.image.shape[:2]
        check_encodable(height, width, [spec.format for spec in params.requested])


def pixels_to_hold(image: bytes, background: bytes | None, params: RemoveParams, max_pixels: int) -> int:
    """The pixels a request will hold decoded (its image, and its background where an output uses it), from the
    headers, before decoding: what the ingress's pixel budget counts. An image over ``max_pixels`` counts as
    ``max_pixels``: its decode answers 413 at once."""
    uploads = [image, background] if params.needs_background else [image]
    return sum(min(declared_pixels(data), max_pixels) for data in uploads)


def decode_background(
    data: bytes | None, params: RemoveParams, max_pixels: int
) -> tuple[np.ndarray | None, bytes | None]:
    """The background image for effect=background (HxWx4 where it has transparency, else HxWx3) and the profile
    its colours need, decoded as an upload is; a 422 when an output needs one and none was sent, or when one was
    sent and no output uses it (it was silently dropped, a puzzle to the caller)."""
    if not params.needs_background:
        if data is not None:
            raise InvalidParameterError(
                "a background image was sent, but no output puts the subject on it: ask for effect=background "
                "(or 'background' in outputs)"
            )
        return None, None
    if data is None:
        raise InvalidParameterError("effect=background needs the background image as multipart field 'background'")
    try:
        decoded = decode_with_profile(data, max_pixels=max_pixels)
        if decoded.alpha is None:
            return decoded.rgb, decoded.icc_profile
        return np.dstack([decoded.rgb, decoded.alpha]), decoded.icc_profile  # behind the subject, still transparent
    except ServiceError as exc:  # the same checks as the image's, saying which upload failed them
        raise type(exc)(f"background image: {exc.message}") from None


# The effects that add colours of their own, which a photo's profile would show otherwise.
COLOURED = frozenset({Effect.COLOR, Effect.GREEN, Effect.WHITE, Effect.OVERLAY})


def in_colour_space(colours: list[RGB], profile: bytes | None) -> list[RGB]:
    """sRGB colours as ``profile``'s pixels (None: sRGB) show them."""
    pixels = converted(np.array([colours], np.uint8), None, profile)[0]
    return [(int(r), int(g), int(b)) for r, g, b in pixels]


def postprocess(
    image: np.ndarray,
    model_mask: np.ndarray,
    params: RemoveParams,
    background: np.ndarray | None = None,
    icc_profile: bytes | None = None,
    background_profile: bytes | None = None,
    own_alpha: np.ndarray | None = None,
) -> Rendered:
    """Every requested output from one mask: the one image, or with ``outputs`` a ZIP of them all (each effect
    computed once, then encoded in each format asked for it; colour ones with the upload's ``icc_profile``).

    Results are in the upload's colour space (``icc_profile``, else sRGB): the colours asked for (sRGB, as CSS
    has them), transparent-background's green and the background image (in ``background_profile``'s, else
    sRGB) are converted into it, or a wide-gamut photo's profile showed them as other colours.

    An upload's ``own_alpha`` (HxW uint8) keeps what it hid hidden in every output, the mask included
    (``apply_effect``; threshold and reverse apply to the model's matte first): the colours under it showed where the
    model took them for the subject."""
    watch = Stopwatch()
    height, width = image.shape[:2]
    alpha = finalize_alpha(upsample_mask(model_mask, height, width), params.threshold, params.reverse)
    foreground = foreground_box(times_own_alpha(alpha, own_alpha))
    if params.crop:  # before the effect: it then works on the crop only
        kept = crop_box(foreground, params.crop_margin, height, width)
        rows, cols = slice(kept.top, kept.top + kept.height), slice(kept.left, kept.left + kept.width)
        image, alpha = image[rows, cols], alpha[rows, cols]
        own_alpha = None if own_alpha is None else own_alpha[rows, cols]
    watch.lap("upsample")
    refine = params.refine if params.threshold is None else Refine.NONE  # a hard alpha has no soft edge
    requested = params.requested
    files = {spec.filename: b"" for spec in requested}  # in request order
    effects = list(dict.fromkeys(spec.effect for spec in requested))  # in request order, each once
    color, green, white = params.rgba[:3], GREEN, WHITE
    if icc_profile is not None and COLOURED.intersection(effects):
        color, green, white = in_colour_space([color, green, white], icc_profile)
    if background is not None:  # at the image's size first: a 50 MP background is not converted whole
        background = cover(background, *image.shape[:2])
        if background_profile != icc_profile:  # its colours as the photo's space has them; its alpha as it is
            colours = converted(np.ascontiguousarray(background[..., :3]), background_profile, icc_profile)
            background = np.dstack([colours, background[..., 3]]) if has_alpha(background) else colours
    for effect in effects:
        output = apply_effect(
            image,
            alpha,
            effect,
            (*color, params.rgba[3]),
            refine,
            params.blur_sigma,
            background,
            green,
            white,
            own_alpha,
        )
        if effect == effects[-1]:
            del alpha  # the float matte (4 bytes a pixel) is not needed while the last outputs encode
        watch.lap("effect")
        for spec in requested:
            if spec.effect == effect:
                files[spec.filename] = encode_image(output, spec.format, params.quality, params.lossless, icc_profile)
        del output
        watch.lap("encode")
    if params.outputs is None:
        (body,) = files.values()
        media_type = MEDIA_TYPES[params.format]
    else:
        body, media_type = zip_files(files), ZIP_MEDIA_TYPE
        watch.lap("encode")
    return Rendered(body=body, media_type=media_type, foreground=foreground, timings=watch.timings)


def step_seconds(
    prepared: Preprocessed, result: MaskResult, round_trip_s: float, rendered: Rendered
) -> dict[str, float]:
    """Seconds per step of a served request, in request order: decode, resize, queue, model, upsample, effect,
    encode (Server-Timing's steps, and the metrics')."""
    return {
        **prepared.timings,
        "queue": max(0.0, round_trip_s - result.model_seconds),  # batching wait, transfer, replica hand-off
        "model": result.model_seconds,
        **rendered.timings,
    }


def result_headers(
    tier: str, weights: str, prepared: Preprocessed, result: MaskResult, rendered: Rendered, steps: dict[str, float]
) -> dict[str, str]:
    """X-Tier, X-Weights, X-Batch-Size, X-Runtime (the runtime that made the mask), X-Model-Input, the subject's
    box (X-Foreground-Top, -Left, -Width, -Height, as remove.bg names them; all 0 with no subject) and
    Server-Timing (ms per step of ``step_seconds``, in request order)."""
    height, width = prepared.model_input.shape[:2]
    box = rendered.foreground
    return {
        "X-Foreground-Top": str(box.top),
        "X-Foreground-Left": str(box.left),
        "X-Foreground-Width": str(box.width),
        "X-Foreground-Height": str(box.height),
        "X-Tier": tier,
        "X-Weights": weights,
        "X-Batch-Size": str(result.batch_size),
        "X-Runtime": result.runtime,
        "X-Model-Input": f"{width}x{height}",
        "Server-Timing": ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in steps.items()),
    }
