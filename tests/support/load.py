"""Load and faults against a running service, for the resilience tests and ``bench/overload.py``: fire requests
from threads and record what came back, find a deployment's replica processes, read their memory."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from serve_app.mask_cache import RUN_THE_MODEL
from tests.support.serve_run import descendant_pids


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: no HTTP answer at all (connection reset, timeout)
    seconds: float
    code: str | None  # our JSON error code
    retry_after: str | None
    json_body: bool


def send(url: str, data: bytes, params: dict[str, str], timeout_s: float = 120.0) -> Outcome:
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{url}/v1/remove", params=params, content=data, headers=RUN_THE_MODEL, timeout=timeout_s
        )  # every request a model call: the same image is sent many times
    except httpx.HTTPError:
        return Outcome(0, time.monotonic() - started, None, None, False)
    seconds = time.monotonic() - started
    is_json = response.headers.get("content-type", "").startswith("application/json")
    code = response.json().get("error", {}).get("code") if is_json else None
    return Outcome(response.status_code, seconds, code, response.headers.get("retry-after"), is_json)


def burst(
    url: str, data: bytes, params: dict[str, str], count: int, during: Callable[[], None] | None = None
) -> list[Outcome]:
    """``count`` requests at once (one thread each); ``during`` runs meanwhile (a kill, say)."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(send, url, data, params) for _ in range(count)]
        if during is not None:
            during()
        return [f.result() for f in futures]


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summary(outcomes: list[Outcome]) -> str:
    """Counts by status and code, with p50/p95 seconds of each status."""
    lines = []
    for (status, code), count in sorted(Counter((o.status, o.code) for o in outcomes).items()):
        seconds = [o.seconds for o in outcomes if o.status == status and o.code == code]
        lines.append(
            f"{status} {code or '':20s} x{count:4d}  p50 {percentile(seconds, 50):6.2f} s  "
            f"p95 {percentile(seconds, 95):6.2f} s"
        )
    return "\n".join(lines)


def replica_pids(root_pid: int, app: str, deployment: str) -> list[int]:
    """Process ids of a deployment's live replicas in the Ray started by ``root_pid`` (Ray titles each replica's
    process ``ray::ServeReplica:<app>:<deployment>``)."""
    return descendant_pids(root_pid, f"ServeReplica:{app}:{deployment}")


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process in MB, from the kernel's own accounting (VmRSS, VmHWM)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def private_mb(pid: int) -> float:
    """A process's own anonymous memory in MB (RssAnon): what a leak grows. Not VmRSS, which also counts pages of
    shared libraries the kernel evicts and faults back in, and the Ray object store's shared memory a replica
    writes its larger results into (a 160x160 float mask is over Ray's 100 KiB inline limit), whose pages a
    replica touches more of as the store cycles through its space."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> float:
    """Seconds until /readyz answers 200 again."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready again after {timeout_s} s")
