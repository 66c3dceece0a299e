"""The eager runtime on CUDA agrees with the CPU and keeps batched == single (opt in: -m gpu)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from serve_app.runtimes import RuntimeSettings, create_runtime
from serve_app.weights import ResolvedWeights
from tests.unit.test_runtime import SIZE, mixed_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_matches_cpu_and_batches_exactly(segmenting_weights: Path) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    weights = ResolvedWeights(segmenting_weights, "seg.pth")
    cpu = create_runtime("eager", RuntimeSettings(weights, SIZE, "cpu"))
    gpu = create_runtime("eager", RuntimeSettings(weights, SIZE, "cuda"))
    cpu.load()
    gpu.load()
    gpu.check_health()
    batch = mixed_batch()
    on_gpu = gpu.predict(batch)
    assert np.abs(on_gpu - cpu.predict(batch)).max() <= 1e-3
    for i in range(len(batch)):
        assert np.abs(on_gpu[i] - gpu.predict(batch[i : i + 1])[0]).max() <= 1e-5
