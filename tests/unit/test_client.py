"""What the Python client uploads for each kind of input, without a service (tests/integration/test_clients.py runs
it against the real one)."""

import io

import numpy as np
import pytest
from PIL import Image

from serve_app.client import image_bytes
from serve_app.codec import decode_image
from tests.unit.test_codec import asymmetric, with_orientation


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_pil_image_goes_upright_as_its_file_would(orientation: int) -> None:
    """The client sends a PIL image as PNG, which carries no EXIF: a rotated photo opened with Pillow came back
    sideways, where the same file by path came back upright."""
    data = with_orientation(asymmetric(), orientation, "JPEG")
    from_file = decode_image(data, 10_000_000)
    from_pil = decode_image(image_bytes(Image.open(io.BytesIO(data))), 10_000_000)
    np.testing.assert_array_equal(from_pil, from_file)
    stored = np.asarray(Image.open(io.BytesIO(data)))  # the pixels as stored, orientation not applied
    assert from_file.shape != stored.shape or not np.array_equal(from_file, stored)


def test_a_cmyk_pil_image_is_sent_as_rgb() -> None:
    """PNG holds no CMYK: Pillow raised OSError in the client, where the file by path worked."""
    cmyk = Image.fromarray(asymmetric()).convert("CMYK")
    sent = decode_image(image_bytes(cmyk), 10_000_000)
    np.testing.assert_array_equal(sent, np.asarray(cmyk.convert("RGB")))


@pytest.mark.parametrize("mode", ["I", "F", "I;16", "LA", "P"])
def test_a_pil_image_in_any_mode_can_be_sent(mode: str) -> None:
    """32-bit integer and float images are no PNG mode Pillow writes: they go as RGB."""
    image = Image.fromarray(asymmetric()).convert("L").convert(mode)
    assert decode_image(image_bytes(image), 10_000_000).shape == (24, 40, 3)
