"""RGB colour profiles for tests, made from littlecms's built-in sRGB profile with other colorants or another tone
curve: no wide-gamut profile ships on these machines. The colorants are Display P3's and Adobe RGB (1998)'s,
adapted to D50 as ICC profiles store them."""

from __future__ import annotations

from PIL import ImageCms

XYZ = tuple[float, float, float]
DISPLAY_P3 = ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841))
ADOBE_RGB = ((0.6097, 0.3111, 0.0195), (0.2053, 0.6257, 0.0609), (0.1492, 0.0632, 0.7446))
ADOBE_RGB_GAMMA = 563 / 256
_BUILT_IN = "sRGB built-in"


def s15(value: float) -> bytes:
    """ICC's s15Fixed16Number."""
    return round(value * 65536).to_bytes(4, "big", signed=True)


def rgb_profile(
    description: str, colorants: tuple[XYZ, XYZ, XYZ] | None = None, gamma: float | None = None, space: str = "sRGB"
) -> bytes:
    """littlecms's built-in ``space`` profile named ``description`` (cut or padded to its 13 characters), with
    the red, green and blue ``colorants`` and a plain ``gamma`` tone curve where given."""
    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile(space)).tobytes())
    for i in range(int.from_bytes(data[128:132], "big")):
        entry = 132 + 12 * i
        signature, offset = bytes(data[entry : entry + 4]), int.from_bytes(data[entry + 4 : entry + 8], "big")
        if colorants and signature in (b"rXYZ", b"gXYZ", b"bXYZ"):
            colorant = colorants[(b"rXYZ", b"gXYZ", b"bXYZ").index(signature)]
            data[offset + 8 : offset + 20] = b"".join(s15(v) for v in colorant)
        if gamma is not None and signature in (b"rTRC", b"gTRC", b"bTRC"):  # 'para' of function type 0: y = x^g
            data[offset + 8 : offset + 16] = b"\0\0\0\0" + s15(gamma)
    name = f"{space} built-in"
    return bytes(data).replace(name.encode("utf-16-be"), description.ljust(len(name))[: len(name)].encode("utf-16-be"))


def display_p3() -> bytes:
    return rgb_profile("Display P3", DISPLAY_P3)


def adobe_rgb() -> bytes:
    return rgb_profile("Adobe RGB", ADOBE_RGB, ADOBE_RGB_GAMMA)
