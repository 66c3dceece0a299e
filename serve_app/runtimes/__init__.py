"""Model runtimes behind one registry, the only list of them: a tier names its runtime and ``create_runtime``
builds it. The config's valid choices (``runtime_choices``), the parity rule (``Runtime.exact``) and the
README's runtime table (``runtime_table``) are all read from here.

To add a runtime: subclass ``Runtime`` (or ``EagerRuntime`` to change only how the network runs), give it
``name``, ``exact``, ``summary`` and ``devices``, add it to ``RUNTIMES``, run ``python -m serve_app.runtimes`` to
refresh the README's table, and hold it to eager in ``tests/unit/test_runtimes.py``.
"""

from __future__ import annotations

from serve_app.errors import UnknownRuntimeError
from serve_app.runtimes.auto import AUTO
from serve_app.runtimes.base import Runtime, RuntimeSettings
from serve_app.runtimes.compiled import CompileRuntime, TorchScriptRuntime
from serve_app.runtimes.eager import EagerRuntime
from serve_app.runtimes.onnx import OnnxInt8Runtime, OnnxRuntime
from serve_app.runtimes.openvino import OpenVinoBF16Runtime, OpenVinoRuntime
from serve_app.runtimes.parity import parity_rule
from serve_app.runtimes.precision import BF16Runtime, FP16Runtime, Int8Runtime

RUNTIMES: dict[str, type[Runtime]] = {
    cls.name: cls
    for cls in (
        EagerRuntime,
        OpenVinoRuntime,
        OnnxRuntime,
        TorchScriptRuntime,
        Int8Runtime,
        OnnxInt8Runtime,
        BF16Runtime,
        FP16Runtime,
        CompileRuntime,
        OpenVinoBF16Runtime,
    )
}


def runtime_choices() -> list[str]:
    """What a tier's ``runtime:`` may be: every registered runtime, and ``auto``."""
    return [*RUNTIMES, AUTO]


def create_runtime(name: str, settings: RuntimeSettings) -> Runtime:
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise UnknownRuntimeError(f"unknown runtime {name!r}; valid runtimes: {', '.join(sorted(RUNTIMES))}") from None
    return cls(settings)


def runtime_table() -> str:
    """The README's runtime table, as Markdown."""
    rows = [
        "| runtime | what | where | parity with eager fp32 |",
        "|---|---|---|---|",
        *(
            f"| `{name}` | {cls.summary} | {cls.devices} | {'—' if cls is EagerRuntime else parity_rule(cls.exact)} |"
            for name, cls in RUNTIMES.items()
        ),
        f"| `{AUTO}` | the fastest runtime that held parity on this machine, from `python -m bench.runtimes --record "
        "<weights_dir>/runtime-measurements.json`; skips one that does not load (an export not made yet); eager "
        "when nothing was measured here | any | — |",
    ]
    return "\n".join(rows) + "\n"


__all__ = ["RUNTIMES", "Runtime", "RuntimeSettings", "create_runtime", "runtime_choices", "runtime_table"]
