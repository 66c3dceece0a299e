"""ONNX Runtime: runs an export made by ``python -m serve_app.export`` (fp32, same graph as eager).

Execution providers come from config, or by default the best present for the tier's device: TensorRT, then
CUDA, then CPU. The export's manifest must name the weights this tier loads; otherwise the runtime refuses and
says which export command to run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from serve_app.errors import ConfigurationError
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.model import PinnedStaging, normalise_per_sample, to_model_tensor

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
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
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
            index = self.device.index or 0
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

    def load(self) -> None:
        from serve_app.export import export_paths, source_fingerprint

        if not self.settings.static_size:
            raise ConfigurationError("onnx: this tier's input size varies and the model exports only at a fixed size")
        export_dir = self.settings.export_dir
        if export_dir is None:
            raise ConfigurationError("the onnx runtime needs an export directory")
        onnx_path, manifest_path = export_paths(export_dir, self.settings.weights, self.settings.base_size)
        command = self.settings.export_command or "python -m serve_app.export --help"
        if not (onnx_path.is_file() and manifest_path.is_file()):
            raise ConfigurationError(f"no ONNX export at {onnx_path}: run `{command}` once (about a minute and a half)")
        manifest = json.loads(manifest_path.read_text())
        expected = source_fingerprint(self.settings.weights)
        if manifest.get("source_sha256") != expected:
            raise ConfigurationError(
                f"{onnx_path} was exported from other weights (sha256 {manifest.get('source_sha256')}, these are "
                f"{expected}): run `{command}` again"
            )
        providers = list(self.settings.onnx_providers or default_providers(self.device))
        if not providers:
            raise ConfigurationError(f"no usable onnxruntime provider for {self.device}")
        threads = self.cpu_threads if self.device.type == "cpu" else None
        self.session = OnnxSession(onnx_path, providers, threads, self.device)
        if self.device.type == "cuda" and self.session.providers[0] == CPU_PROVIDER:
            raise ConfigurationError(
                "onnxruntime runs this CUDA tier on the CPU: install onnxruntime-gpu (pip install 'bgserve[gpu]')"
            )
        logger.info(
            "onnx: %s on %s (export parity %.2e)", onnx_path, self.session.providers, manifest["parity_max_abs"]
        )

    def _predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.masks(images)
