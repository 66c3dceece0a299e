from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_app.errors import DeadlineExceededError, InferenceError, InvalidImageError
from serve_app.predictor import predict_grouped, run_before_deadlines
from serve_app.schemas import MaskResult


class Recorder:
    """A stand-in model: the mask is the mean channel / 255; fails on a batch holding an all-white image."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape)
        if (batch.reshape(len(batch), -1).min(axis=1) == 255).any():
            raise RuntimeError("poisoned batch")
        return batch.mean(axis=3).astype(np.float32) / 255.0


def image(value: int, height: int = 8, width: int = 8) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def test_same_shapes_share_one_call_and_shapes_never_mix() -> None:
    model = Recorder()
    images = [image(10), image(20, 8, 16), image(30), image(40, 8, 16), image(50)]
    results = predict_grouped(images, model)
    assert sorted(model.calls) == [(2, 8, 16, 3), (3, 8, 8, 3)]
    for img, result in zip(images, results, strict=True):
        assert isinstance(result, MaskResult)
        np.testing.assert_allclose(result.mask, img[..., 0] / 255.0)  # each result belongs to its own image
        assert result.batch_size == (3 if img.shape[1] == 8 else 2) and result.model_seconds >= 0


def test_invalid_item_fails_alone() -> None:
    results = predict_grouped([image(10), np.zeros((8, 8), np.uint8), "not an array", image(20)], Recorder())
    assert isinstance(results[1], InvalidImageError) and isinstance(results[2], InvalidImageError)
    assert results[0].batch_size == 2 and results[3].batch_size == 2  # type: ignore[union-attr]


def test_failing_batch_is_retried_per_image() -> None:
    model = Recorder()
    results = predict_grouped([image(10), image(255), image(30)], model)
    assert isinstance(results[1], InferenceError)
    assert results[0].batch_size == 1 and results[2].batch_size == 1  # type: ignore[union-attr]  # run alone
    np.testing.assert_allclose(results[2].mask, 30 / 255.0)  # type: ignore[union-attr]
    assert model.calls[0] == (3, 8, 8, 3) and len(model.calls) == 4


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 3), np.uint8)]
)
def test_model_input_checks(bad: np.ndarray) -> None:
    assert isinstance(predict_grouped([bad], Recorder())[0], InvalidImageError)


def test_images_past_their_deadline_are_not_run() -> None:
    model = Recorder()
    images = [image(10), image(20), image(30)]
    results = run_before_deadlines(images, [99.0, 101.0, 100.0], model, now=lambda: 100.0)
    assert model.calls == [(1, 8, 8, 3)]  # only the image whose deadline is still ahead reached the model
    assert isinstance(results[1], MaskResult) and results[1].batch_size == 1
    for expired in (results[0], results[2]):
        assert isinstance(expired, DeadlineExceededError) and "not run" in expired.message


def test_nothing_runs_when_every_deadline_has_passed() -> None:
    model = Recorder()
    results = run_before_deadlines([image(10)], [1.0], model, now=lambda: 2.0)
    assert model.calls == [] and isinstance(results[0], DeadlineExceededError)


def test_without_deadlines_everything_runs() -> None:
    model = Recorder()
    results = run_before_deadlines([image(10), image(20)], None, model)
    assert model.calls == [(2, 8, 8, 3)] and all(isinstance(r, MaskResult) for r in results)


def test_warm_up_is_small_on_a_cpu_unless_the_runtime_specialises_on_shapes() -> None:
    from types import SimpleNamespace

    import torch

    from serve_app.catalogue import Tier
    from serve_app.predictor import warmup_side
    from serve_app.runtimes import RUNTIMES
    from serve_app.schemas import AppConfig

    served = AppConfig().served_tiers(Path("/tmp"))
    balanced, quality = served[Tier.BALANCED], served[Tier.QUALITY]

    def runtime(name: str, device: str) -> Any:
        return SimpleNamespace(shape_specialised=RUNTIMES[name].shape_specialised, device=torch.device(device))

    assert warmup_side(balanced, runtime("eager", "cpu")) == 128
    assert warmup_side(balanced, runtime("compile", "cpu")) == balanced.base_size == 1024
    assert warmup_side(balanced, runtime("openvino", "cpu")) == 1024  # converted for that size only
    assert warmup_side(balanced, runtime("openvino_bf16", "cpu")) == 1024  # the same converted model
    assert warmup_side(balanced, runtime("torchscript", "cpu")) == 1024
    assert warmup_side(balanced, runtime("onnx", "cpu")) == 1024  # exported at that size (it failed at 128)
    assert warmup_side(balanced, runtime("int8", "cpu")) == 128
    assert warmup_side(balanced, runtime("eager", "cuda")) == 1024  # cuDNN tunes per shape: the real one
    assert warmup_side(quality, runtime("eager", "cuda")) == 512
