"""ONNX Runtime: runs an export made by ``python -m serve_app.export`` (fp32, same graph as eager), or that
export with INT8 MatMul weights (``onnx_int8``).

Execution providers come from config, or by default the best present for the tier's device: TensorRT, then
CUDA, then CPU. The export's manifest must name the weights this tier loads (``onnx_artifacts.find_export``);
otherwise the runtime refuses and says which export command to run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serve_app.errors import ConfigurationError
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.files import directory_lock
from serve_app.runtimes.inspyrenet import PinnedStaging, normalise_per_sample, to_model_tensor
from serve_app.runtimes.onnx_artifacts import find_export

logger = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"


class OnnxSession:
    """An onnxruntime session over an export: uint8 images in, per-sample normalised masks out.

    Runs through IO binding: ONNX Runtime reads the normalised batch from, and writes the logits into, torch
    tensors on the tier's device, so on CUDA the batch goes to the GPU once (from pinned memory), stays there for
    normalisation and the sigmoid + min-max, and only the finished masks come back. On CPU the same path saves
    ONNX Runtime's output copy.
    """

    def __init__(self, path: Path, providers: list[str], threads: int | None, device: torch.device) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.device = device
        self.device_index = device.index if device.index is not None else 0  # Ray shows a replica its GPU as 0
        # The GPU providers run on the tier's GPU, the one the IO binding below points at.
        provider_options = [{"device_id": str(self.device_index)} if p in GPU_PROVIDERS else {} for p in providers]
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=providers, provider_options=provider_options
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.staging = PinnedStaging()

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def masks(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = to_model_tensor(images, self.device, self.staging).contiguous()
            n, _, height, width = x.shape
            logits = torch.empty((n, 1, height, width), dtype=torch.float32, device=self.device)
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()  # ORT runs on its own stream
            binding = self.session.io_binding()
            index = self.device_index
            binding.bind_input(self.input_name, self.device.type, index, np.float32, tuple(x.shape), x.data_ptr())
            binding.bind_output(
                self.output_name, self.device.type, index, np.float32, tuple(logits.shape), logits.data_ptr()
            )
            self.session.run_with_iobinding(binding)  # returns once the outputs are written
            return normalise_per_sample(logits)[:, 0].cpu().numpy()


def default_providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [*GPU_PROVIDERS, CPU_PROVIDER] if device.type == "cuda" else [CPU_PROVIDER]
    return [p for p in wanted if p in available]


class OnnxRuntime(Runtime):
    name = "onnx"
    shape_specialised = True  # exported at the tier's size: only the batch axis is dynamic
    exact = True
    summary = (
        "ONNX Runtime on an export: run `python -m serve_app.export --tier fast` once (1-2.5 min per tier); "
        "providers TensorRT > CUDA > CPU as present (`onnx_providers:` to choose); `onnxruntime-gpu` comes with the "
        "`gpu` extra"
    )
    devices = "CPU, CUDA; not the quality tier (its variable input size does not export)"

    def load(self) -> None:
        if not self.settings.static_size:
            raise ConfigurationError(
                f"{self.name}: this tier's input size varies and the model exports only at a fixed size"
            )
        s = self.settings
        onnx_path, manifest = find_export(s.export_dir, s.weights, s.base_size, s.export_command)
        providers = list(s.onnx_providers or default_providers(self.device))
        if not providers:
            raise ConfigurationError(f"no usable onnxruntime provider for {self.device}")
        threads = self.cpu_threads if self.device.type == "cpu" else None
        self.session = OnnxSession(self.model_path(onnx_path, manifest), providers, threads, self.device)
        if self.device.type == "cuda" and self.session.providers[0] == CPU_PROVIDER:
            raise ConfigurationError(
                "onnxruntime runs this CUDA tier on the CPU: install onnxruntime-gpu (pip install 'bgserve[gpu]')"
            )
        logger.info(
            "%s: %s on %s (export parity %.2e)",
            self.name,
            onnx_path,
            self.session.providers,
            manifest["parity_max_abs"],
        )

    def model_path(self, onnx_path: Path, manifest: dict[str, Any]) -> Path:
        """The model file the session runs (the fp32 export itself)."""
        return onnx_path

    def _predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.masks(images)


class OnnxInt8Runtime(OnnxRuntime):
    """ONNX Runtime on the export with its MatMul weights quantised to INT8 (activations quantised per call):
    the Swin backbone's Linear layers, ~36 % of the fp32 export's time on CPU. The quantised model is made from
    the fp32 export at first load (seconds) and kept beside it, named by a digest of the export's manifest.

    Dynamic quantisation scales activations over the whole input, batch included, so each image runs alone:
    a mask never depends on what it was batched with (batching does not speed up a CPU anyway)."""

    name = "onnx_int8"
    exact = False
    summary = (
        "**opt-in**: the `onnx` export with INT8 MatMul weights, quantised at first load (seconds) and kept beside "
        "the export; each image runs alone. **Misses** the reduced bound on the test weights (mean abs 0.0054, IoU "
        "0.989 at 128 px; tested to 2/255 and 0.98), so `auto` skips it unless measured to hold on your weights"
    )
    devices = "CPU"

    def model_path(self, onnx_path: Path, manifest: dict[str, Any]) -> Path:
        if self.device.type != "cpu":
            raise ConfigurationError("onnx_int8 runs on CPU only (on a GPU use onnx or fp16)")
        logger.warning(
            "onnx_int8 is opt-in: its INT8 weights move masks slightly away from eager fp32 (on the test weights "
            "mean abs 0.0054, IoU 0.989); use onnx for masks that match transparent-background"
        )
        # Named by the export's manifest (checkpoint checksum, torch, opset, export time): a new export, a new file.
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
        quantised = onnx_path.with_name(f"{onnx_path.stem}-int8-{digest}.onnx")
        try:
            with directory_lock(onnx_path.parent, ".quantising.lock"):  # replicas starting together quantise once
                if not quantised.is_file():
                    quantise_matmul_weights(onnx_path, quantised)
        except OSError as exc:
            raise ConfigurationError(
                f"onnx_int8 could not write its quantised model beside {onnx_path} ({exc}): make "
                f"{onnx_path.parent} writable, or start once where it is"
            ) from exc
        return quantised

    def _predict(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.session.masks(images[i : i + 1]) for i in range(len(images))])


def quantise_matmul_weights(source: Path, target: Path) -> None:
    """Dynamic INT8 quantisation of every MatMul with a constant weight, written to a staging file and renamed
    into place, so a reader never sees half a model."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".quantising-"))
    try:
        staged = staging / target.name
        quantize_dynamic(
            # A loaded model, not the path: given a path, the quantiser writes a shape-inferred copy beside the
            # source under a fixed name; given a model, it uses a private temporary directory.
            onnx.load(str(source)),
            staged,
            op_types_to_quantize=["MatMul"],
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},  # attention's activation x activation products stay fp32
        )
        with open(staged, "rb") as handle:
            os.fsync(handle.fileno())
        staged.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("onnx_int8: quantised %s to %s", source.name, target.name)
