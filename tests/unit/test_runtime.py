"""The eager runtime on weights that segment: right masks, and batched == single."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from serve_app.errors import DeviceUnavailableError, UnknownRuntimeError, WeightsUnavailableError
from serve_app.runtimes import RUNTIMES, RuntimeSettings, create_runtime
from serve_app.runtimes.inspyrenet import load_model, to_model_tensor
from serve_app.runtimes.parity import iou
from serve_app.weights import ResolvedWeights
from tests.conftest import skimage_photo
from tests.support import scenes

SIZE = 128


@pytest.fixture(scope="module")
def runtime(segmenting_weights: Path):  # type: ignore[no-untyped-def]
    rt = create_runtime("eager", RuntimeSettings(ResolvedWeights(segmenting_weights, "seg.pth"), SIZE, "cpu"))
    rt.load()
    return rt


def mixed_batch() -> np.ndarray:
    """Different kinds of image in one batch: identical ones would hide a batch-wide normalisation."""
    rng = np.random.default_rng(7)
    scene = scenes.make_scene(rng, SIZE, SIZE)
    empty = scenes.make_scene(rng, SIZE, SIZE, subject=False)  # background only
    photo = np.asarray(Image.fromarray(skimage_photo("astronaut")).resize((SIZE, SIZE), Image.BILINEAR))
    other = scenes.make_scene(rng, SIZE, SIZE)
    return np.stack([scene.image, empty.image, photo, other.image])


def test_masks_cover_the_subject(runtime) -> None:  # type: ignore[no-untyped-def]
    held_out = scenes.make_scenes(seed=4242, count=6, height=SIZE, width=SIZE)
    masks = runtime.predict(np.stack([s.image for s in held_out]))
    assert masks.shape == (6, SIZE, SIZE) and masks.dtype == np.float32
    ious = [iou(m > 0.5, s.mask) for m, s in zip(masks, held_out, strict=True)]
    assert np.mean(ious) >= 0.8, ious
    transposed = [iou(m.T > 0.5, s.mask) for m, s in zip(masks, held_out, strict=True)]
    assert np.mean(transposed) < np.mean(ious) - 0.1  # the check can tell a transposed mask


def test_each_image_of_a_batch_gets_its_single_result(runtime) -> None:  # type: ignore[no-untyped-def]
    batch = mixed_batch()
    batched = runtime.predict(batch)
    for i in range(len(batch)):
        single = runtime.predict(batch[i : i + 1])[0]
        assert np.abs(batched[i] - single).max() <= 1e-5, i
    assert batched.min() >= 0.0 and batched.max() <= 1.0


def test_this_batch_exposes_a_batch_wide_normalisation(runtime) -> None:  # type: ignore[no-untyped-def]
    """The model's own forward normalises over the whole batch; on this batch that visibly changes masks,
    so the test above fails if the runtime stops normalising per sample."""
    batch = mixed_batch()
    x = to_model_tensor(batch, torch.device("cpu"))
    with torch.inference_mode():
        batch_wide = runtime.model.inspyrenet(x)[:, 0].numpy()
        singles = np.stack([runtime.model.inspyrenet(x[i : i + 1])[0, 0].numpy() for i in range(len(batch))])
    assert np.abs(batch_wide - singles).max() > 0.1


def test_untrained_weights_are_seeded() -> None:
    untrained = ResolvedWeights(path=None, label="untrained")
    first, second = load_model(untrained, 64), load_model(untrained, 64)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_for_another_model_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"not.a.key": torch.zeros(1)}, bad)
    with pytest.raises(WeightsUnavailableError, match="not an InSPyReNet_SwinB checkpoint") as raised:
        load_model(ResolvedWeights(bad, "bad.pth"), 64)
    # torch lists every missing key (tens of KB): the fix comes first, the cause is cut short
    assert "point `weights:`" in raised.value.message[:300] and len(raised.value.message) < 600


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"", b"PK\x03\x04" + b"\0" * 100])
def test_a_file_that_is_no_checkpoint_is_refused_with_what_to_do(tmp_path: Path, content: bytes) -> None:
    """Text, an empty file, a broken zip: torch raises IndexError, EOFError, RuntimeError... each becomes the
    service's own error, naming the file and the fix."""
    bad = tmp_path / "notes.pth"
    bad.write_bytes(content)
    with pytest.raises(WeightsUnavailableError, match="not an InSPyReNet_SwinB checkpoint") as raised:
        load_model(ResolvedWeights(bad, "notes.pth"), 64)
    assert str(bad) in raised.value.message and "weights:" in raised.value.message


def test_unknown_runtime_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownRuntimeError, match="eager"):
        create_runtime("tensorrt-please", RuntimeSettings(ResolvedWeights(None, "untrained"), 64, "cpu"))
    assert "eager" in RUNTIMES


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceUnavailableError, match="no CUDA device"):
        create_runtime("eager", RuntimeSettings(ResolvedWeights(None, "untrained"), 64, "cuda"))
