"""``runtime: auto``: the fastest runtime that held parity on this device, from recorded measurements.

``python -m bench.runtimes --record`` measures every runtime per tier on the machine it runs on and appends the results
to ``<weights_dir>/runtime-measurements.json``. ``auto`` reads that file, keeps the entries for this device and
tier that held parity, and tries them fastest first (batch-1 latency); a runtime that fails to load (an ONNX
export not made yet, say) is skipped. With no measurements for this device it runs eager and says so.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"  # the config value that asks for this choice
MEASUREMENTS_FILE = "runtime-measurements.json"


def device_signature(device: torch.device) -> str:
    """Names the hardware a measurement holds for."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    model = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"cpu:{model} x{os.cpu_count()}"


def load_measurements(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("measurements", []))


def ranked_runtimes(measurements: list[dict[str, Any]], signature: str, tier: str) -> list[str]:
    """Runtimes measured here for this tier that held parity, fastest (batch-1 seconds per image) first."""
    best: dict[str, float] = {}
    for m in measurements:
        if m.get("device") == signature and m.get("tier") == tier and m.get("batch") == 1 and m.get("holds_parity"):
            best[m["runtime"]] = min(best.get(m["runtime"], float("inf")), float(m["seconds_per_image"]))
    return sorted(best, key=best.__getitem__)
