"""The service as ``scripts/serve.sh`` starts it (``python -m deployments.run CONFIG``: `serve run` that drains on
a stop), in a subprocess: for the end-to-end tests and the latency benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from deployments.proxy_guard import PROXY_CALLBACK_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 600


def free_port() -> int:
    """A TCP port nothing listens on now, for a test's own server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def until(condition: Callable[[], object], timeout_s: float = 60.0) -> bool:
    """Poll ``condition`` once a second until it is truthy (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1.0)
    return False


def wait_until_ready(
    client: httpx.Client,
    timeout_s: float = READY_TIMEOUT_S,
    watch: Callable[[httpx.Client], None] | None = None,
    every_s: float = 1.0,
) -> None:
    """Poll /readyz until 200; ``watch(client)`` runs at each poll (the cold-start benchmark reads the tiers)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            if watch is not None:
                watch(client)
            response = client.get("/readyz")
            if response.status_code == 200:
                return
            last = response.text
            if "DEPLOY_FAILED" in last:  # Serve gave up on a deployment: waiting longer cannot help
                raise RuntimeError(f"the service failed to deploy: {last}")
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(every_s)
    raise TimeoutError(f"service not ready after {timeout_s}s: {last}")


@dataclass(frozen=True)
class Served:
    url: str
    pid: int  # of the runner: Ray's processes for this service (raylet, workers, controller) descend from it
    process: subprocess.Popen[bytes]


def start_runner(
    address: str, config: Path, env: dict[str, str], log: Path, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """``python -m deployments.run --address ADDRESS CONFIG``, as scripts/serve.sh runs it, its output in ``log``,
    in a session of its own (a signal to it reaches the runner alone; the test sends them)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.run", "--address", address, str(config)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextmanager
def serve_run(
    config: Path,
    weights_dir: Path,
    log: Path,
    root: Path = ROOT,
    watch: Callable[[httpx.Client], None] | None = None,
) -> Iterator[Served]:
    """Serve ``config`` from the checkout at ``root`` with ``$BGSERVE_WEIGHTS_DIR=weights_dir``; yields it once
    ``/readyz`` answers 200, and stops it as Ctrl-C does (a drain, then Serve and its Ray shut down) on the way out.

    It keeps to itself: a Ray of its own (``--address local``; without it `serve run` joins any Ray running on the
    machine) and a free HTTP port (a copy of the config, beside the log)."""
    served_config = yaml.safe_load(config.read_text())
    served_config["http_options"] = {**served_config.get("http_options", {}), "port": free_port()}
    config = log.with_name(f"{config.stem}-{served_config['http_options']['port']}.yaml")
    config.write_text(yaml.safe_dump(served_config, sort_keys=False))
    env = {
        **os.environ,
        "BGSERVE_WEIGHTS_DIR": str(weights_dir),
        "PYTHONPATH": str(root),
    }
    env.pop("RAY_ADDRESS", None)  # it would win over --address
    env.pop(PROXY_CALLBACK_VARIABLE, None)  # the runner sets it, as it does for scripts/serve.sh
    process = start_runner("local", config, env, log, cwd=root)
    url = f"http://127.0.0.1:{served_config['http_options']['port']}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            try:
                wait_until_ready(client, watch=watch, every_s=0.25 if watch else 1.0)
            except TimeoutError as exc:
                raise TimeoutError(
                    f"`serve run` never became ready ({exc}); its log:\n{log.read_text()[-5000:]}"
                ) from None
        yield Served(url=url, pid=process.pid, process=process)
    finally:
        if process.poll() is None:  # a test may have stopped it
            process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def descendant_pids(root_pid: int, command_contains: str) -> list[int]:
    """Processes below ``root_pid`` (children, their children, ...) whose command line contains the text."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for line in table.splitlines():
        fields = line.split(None, 2)
        pid, ppid = int(fields[0]), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        commands[pid] = fields[2] if len(fields) > 2 else ""
    found, pending = [], list(children.get(root_pid, []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        if command_contains in commands.get(pid, ""):
            found.append(pid)
    return found
