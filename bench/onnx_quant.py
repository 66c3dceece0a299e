"""Would INT8 through ONNX Runtime beat the fp32 export? Quantises a fast-tier export four ways and measures,
side by side in one run, parity with the fp32 export and seconds per image against it and against eager fp32.

    python -m serve_app.export --tier fast --weights <test weights> --weights-dir /tmp/q --base-size 160
    python -m serve_app.export --tier fast --weights <test weights> --weights-dir /tmp/q
    python -m bench.onnx_quant --weights <test weights> --weights-dir /tmp/q

Variants (onnxruntime.quantization): dynamic INT8 MatMul (weights int8, activations quantised per call), and
static QDQ (activations calibrated on scenes and photos) of MatMul, of Conv, and of both. Parity is measured at
``--parity-size`` (the test weights give soft masks there; at 384 they saturate to 0/1 and would hide every
difference) on held-out scenes, with the same rule as ``serve_app.runtimes.parity`` for reduced precision; speed
at the tier's size. Writes ``<out>/onnx_quant.json`` and ``.md``. Not a runtime of the service: a measurement
of whether one is worth building.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RESULTS
from serve_app.runtimes import RUNTIMES, RuntimeSettings, create_runtime
from serve_app.runtimes.onnx import OnnxSession, quantise_matmul_weights
from serve_app.runtimes.onnx_artifacts import EXPORT_DIR, export_paths
from serve_app.runtimes.parity import compare, iou
from serve_app.weights import ResolvedWeights
from tests.support.scenes import make_scenes

VARIANTS = {  # name: (static?, op types)
    "dynamic-matmul": (False, ["MatMul"]),
    "static-matmul": (True, ["MatMul"]),
    "static-conv": (True, ["Conv"]),
    "static-conv+matmul": (True, ["Conv", "MatMul"]),
}
CPU = torch.device("cpu")


def calibration_images(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    photos = [
        np.asarray(Image.fromarray(getattr(data, n)()[..., :3]).resize((size, size))) for n in ("astronaut", "coffee")
    ]
    return np.stack([s.image for s in make_scenes(11, 4, size, size)] + photos).astype(np.uint8)


def quantise(source: Path, target: Path, static: bool, ops: list[str], size: int) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from serve_app.runtimes.inspyrenet import to_model_tensor

    if not static:  # exactly what the onnx_int8 runtime ships
        quantise_matmul_weights(source, target)
        return
    options: dict[str, Any] = {"MatMulConstBOnly": True}  # weights only: attention's activation products stay fp32

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(to_model_tensor(i[None], CPU).numpy() for i in calibration_images(size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"x": batch}

    quantize_static(
        source,
        target,
        Calibration(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        use_external_data_format=True,
        extra_options=options,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="the checkpoint the exports were made from")
    parser.add_argument("--weights-dir", type=Path, required=True, help="where the exports are (its onnx/)")
    parser.add_argument("--parity-size", type=int, default=160)
    parser.add_argument("--speed-size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()  # quantised variants are kept beside the exports; delete them after a re-export
    weights = ResolvedWeights(Path(args.weights), Path(args.weights).name)
    threads = torch.get_num_threads()
    sessions: dict[int, dict[str, OnnxSession]] = {}
    for size in (args.parity_size, args.speed_size):
        fp32, _ = export_paths(args.weights_dir / EXPORT_DIR, weights, size)
        if not fp32.is_file():
            sys.exit(
                f"no export at {fp32}: python -m serve_app.export --tier fast --weights {args.weights} "
                f"--weights-dir {args.weights_dir} --base-size {size}"
            )
        sessions[size] = {"fp32": OnnxSession(fp32, ["CPUExecutionProvider"], threads, CPU)}
        for name, (static, ops) in VARIANTS.items():
            target = fp32.with_name(f"{fp32.stem}-{name}.onnx")
            if not target.is_file():
                started = time.monotonic()
                quantise(fp32, target, static, ops, size)
                print(f"quantised {target.name} in {time.monotonic() - started:.0f} s", flush=True)
            sessions[size][name] = OnnxSession(target, ["CPUExecutionProvider"], threads, CPU)

    held_out = np.stack([s.image for s in make_scenes(7, 6, args.parity_size, args.parity_size)]).astype(np.uint8)
    reference = sessions[args.parity_size]["fp32"].masks(held_out)
    rows: dict[str, dict[str, Any]] = {}
    for name, session in sessions[args.parity_size].items():
        masks = session.masks(held_out)
        parity = compare(RUNTIMES["int8"], reference, masks)  # the reduced-precision rule
        rows[name] = {
            "mean_abs": parity.mean_abs,
            "max_abs": parity.max_abs,
            "iou": parity.iou,
            "worst_image_iou": min(iou(m > 0.5, r > 0.5) for r, m in zip(reference, masks, strict=True)),
            "holds": parity.holds,
        }

    eager = create_runtime("eager", RuntimeSettings(weights, args.speed_size, "cpu", cpu_threads=threads))
    eager.load()
    image = calibration_images(args.speed_size)[:1]
    runners = {"eager": eager.predict, **{n: s.masks for n, s in sessions[args.speed_size].items()}}
    seconds: dict[str, list[float]] = {n: [] for n in runners}
    for run in runners.values():
        run(image)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift on a shared box hits every variant alike
        for name, run in runners.items():
            started = time.perf_counter()
            run(image)
            seconds[name].append(time.perf_counter() - started)
    medians = {n: statistics.median(s) for n, s in seconds.items()}
    rows.setdefault("eager", {})
    for name, row in rows.items():
        row["seconds_per_image"] = medians[name]
        row["vs_onnx_fp32"] = medians["fp32"] / medians[name]
        row["vs_eager"] = medians["eager"] / medians[name]

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"parity_size": args.parity_size, "speed_size": args.speed_size, "threads": threads, "rows": rows}
    (args.out / "onnx_quant.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"| variant | s/image at {args.speed_size} (batch 1) | vs ONNX fp32 | vs eager | mean abs | max abs | IoU |"
        " worst image IoU | holds parity |",
        "|" + "---|" * 9,
    ]
    for name, r in rows.items():
        cells = (
            f"{r['mean_abs']:.4f} | {r['max_abs']:.3f} | {r['iou']:.4f} | {r['worst_image_iou']:.4f} | {r['holds']}"
            if "iou" in r
            else "— | — | — | — | —"
        )
        lines.append(
            f"| {name} | {r['seconds_per_image']:.2f} | {r['vs_onnx_fp32']:.2f}x | {r['vs_eager']:.2f}x | {cells} |"
        )
    table = "\n".join(lines) + f"\n\nParity vs the fp32 export at {args.parity_size} px on 6 held-out scenes.\n"
    (args.out / "onnx_quant.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
