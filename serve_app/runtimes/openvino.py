"""OpenVINO on the CPU: the loaded PyTorch model is converted by ``openvino.convert_model`` at the first start (no
export step to run), kept on disk beside the weights, and compiled for latency in fp32.

- **fp32 on purpose**: on CPUs with native bf16 (AVX-512 BF16, AMX) OpenVINO infers in bf16 unless told
  otherwise; ``INFERENCE_PRECISION_HINT`` is set to f32, so masks hold exact parity with eager.
- **The converted model** lives at ``<weights_dir>/openvino/<checkpoint>-<size>-<key>.xml`` (+ ``.bin``), the key a
  digest of the checkpoint's sha256, the input shape, and the OpenVINO and torch versions: other weights or
  another OpenVINO never reuse it. It is written under a lock (replicas starting together convert once) into a
  staging folder and renamed into place, ``.bin`` before ``.xml`` (a reader looks for the ``.xml``).
- **Shapes**: the batch axis is dynamic; height and width are the tier's, or dynamic too for the quality tier,
  whose size varies with the photo: one converted model takes every size (Swin's shifted-window mask is built from
  the input size in integer arithmetic, ``inspyrenet._shifted_window_mask``; with the original's numpy rounding the
  trace froze the example's size and any other failed in a Reshape).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from serve_app.errors import ConfigurationError
from serve_app.runtimes.base import Runtime
from serve_app.runtimes.files import directory_lock
from serve_app.runtimes.inspyrenet import LogitsModel, load_model, normalise_per_sample, to_model_tensor
from serve_app.runtimes.onnx_artifacts import source_fingerprint
from serve_app.runtimes.precision import require_native_bf16

logger = logging.getLogger(__name__)

CONVERTED_DIR = "openvino"  # beside the checkpoints, under the weights directory
CONVERSION_VERSION = "1"  # bump when the converted graph changes (inspyrenet.py's model code, this conversion)
# The example a varying-size model is traced at: small (the conversion takes ~20 s) and padded at every Swin stage
# (40x56, 20x28, 10x14, 5x7 tokens, none a multiple of the 12-token window), so the trace takes the padding branch,
# which is a no-op where a real size needs no padding. Inputs are multiples of 32 (DynamicResize), never odd.
ANY_SIZE_EXAMPLE = (160, 224)


class OpenVinoRuntime(Runtime):
    name = "openvino"
    shape_specialised = True
    exact = True
    summary = (
        "OpenVINO in fp32, converted from the loaded model at the first start (tens of seconds; kept beside the "
        "weights for later starts): the fastest exact runtime on CPUs here (docs/benchmarks.md); `openvino` comes "
        "with the `cpu` extra"
    )
    devices = "CPU (every tier: one converted model takes the quality tier's varying sizes)"
    precision: ClassVar[str] = "f32"  # OpenVINO's inference precision: not the bf16 it picks on bf16-capable CPUs

    def load(self) -> None:
        if self.device.type != "cpu":
            raise ConfigurationError("openvino runs on CPU only here (on a GPU use eager, onnx or fp16)")
        import openvino as ov

        s = self.settings
        if s.converted_dir is None:
            raise ConfigurationError("the openvino runtime needs a directory for its converted model")
        key = hashlib.sha256(
            "\n".join(
                [CONVERSION_VERSION, source_fingerprint(s.weights), str(s.base_size), ov.__version__, torch.__version__]
            ).encode()
        ).hexdigest()[:12]
        size = str(s.base_size) if s.static_size else "any"
        path = s.converted_dir / f"{Path(s.weights.label).stem}-{size}-{key}.xml"
        try:
            s.converted_dir.mkdir(parents=True, exist_ok=True)
            with directory_lock(s.converted_dir, ".converting.lock"):
                if not (path.is_file() and path.with_suffix(".bin").is_file()):
                    self._convert(path)
        except OSError as exc:
            raise ConfigurationError(
                f"openvino could not keep its converted model in {s.converted_dir} ({exc}): make it writable"
            ) from exc
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": self.cpu_threads,
            "INFERENCE_PRECISION_HINT": self.precision,
        }
        # Fixed at one image: static shapes run ~6 % faster per image than the any-batch model (measured,
        # docs/benchmarks.md), each compiled copy ~300-430 MB. The any-batch model is compiled at the first batch of
        # several (seconds), so a tier that takes one image at a time (configs/cpu.yaml) never holds it. The
        # quality tier's model takes any size and any batch as it is.
        self._compile_any_batch = lambda: core.compile_model(core.read_model(path), "CPU", config)
        self.compiled: dict[int | None, Any] = {}  # by batch size; None: any batch (and, for quality, any size)
        if s.static_size:
            single = core.read_model(path)
            single.reshape([1, 3, s.base_size, s.base_size])
            self.compiled[1] = core.compile_model(single, "CPU", config)
        else:
            self.compiled[None] = self._compile_any_batch()
        self._compile_lock = threading.Lock()
        self._requests = threading.local()  # infer requests per calling thread
        logger.info(
            "openvino %s: %s on CPU, %d threads, %s", ov.__version__, path.name, self.cpu_threads, self.precision
        )

    def _convert(self, path: Path) -> None:
        """Convert the PyTorch model to OpenVINO's format, staged and renamed into place."""
        import openvino as ov

        s = self.settings
        started = time.perf_counter()
        model = LogitsModel(load_model(s.weights, s.base_size)).eval()
        if s.static_size:
            example = torch.zeros(1, 3, s.base_size, s.base_size)
            shape = ov.PartialShape([-1, 3, s.base_size, s.base_size])  # a dynamic batch axis
        else:  # and a dynamic height and width
            example = torch.zeros(1, 3, *ANY_SIZE_EXAMPLE)
            shape = ov.PartialShape([-1, 3, -1, -1])
        # OpenVINO traces the model as convert_model(model) would, less torch.jit.trace's check (a second and third
        # run of the model to compare with the trace: ~12 s of ~45 s at 384 px). The parity tests compare the
        # converted model with eager.
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

        with torch.no_grad():
            decoder = TorchScriptPythonDecoder(model, example_input=example, trace_kwargs={"check_trace": False})
            converted = ov.convert_model(decoder, input=[shape])
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".converting-"))
        try:
            staged = staging / path.name
            ov.save_model(converted, staged, compress_to_fp16=False)  # fp32 weights, as loaded
            staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
            staged.replace(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("openvino: converted %s in %.1f s to %s", s.weights.label, time.perf_counter() - started, path)

    def _request(self, batch: int) -> Any:
        shape = batch if batch in self.compiled else None
        if shape is None and None not in self.compiled:
            with self._compile_lock:
                if None not in self.compiled:
                    self.compiled[None] = self._compile_any_batch()
        requests = self._requests.__dict__.setdefault("by_shape", {})
        if shape not in requests:
            requests[shape] = self.compiled[shape].create_infer_request()
        return requests[shape]

    def _predict(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = to_model_tensor(images, self.device).contiguous()
            request = self._request(len(images))
            request.infer({0: x.numpy()})
            logits = torch.from_numpy(np.array(request.get_output_tensor(0).data))  # a copy: the request's buffer
            return normalise_per_sample(logits)[:, 0].numpy()


class OpenVinoBF16Runtime(OpenVinoRuntime):
    """The same converted model, inferred in bf16 on CPUs that have bf16 arithmetic: about twice ``openvino``'s
    speed there (docs/benchmarks.md), held to the reduced parity bound, so an explicit choice."""

    name = "openvino_bf16"
    exact = False
    summary = (
        "OpenVINO with bf16 inference from the same converted model: ~2x `openvino` on CPUs with AVX-512 BF16 or "
        "AMX; refused on others"
    )
    devices = "CPU with AVX-512 BF16/AMX"
    precision = "bf16"

    def load(self) -> None:
        require_native_bf16(self.device, self.name, "openvino (fp32)")
        super().load()
