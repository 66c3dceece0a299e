"""A Ray cluster of separate nodes on this machine, started as an operator starts one: `ray start --head`, then
`ray start --address=...` for each worker node, each its own process tree.

Each node has its own loopback address (127.0.0.2 for the head, 127.0.0.3 and up for workers): Ray turns
127.0.0.1 into the machine's network address, and two nodes on one address would share it. Everything stays on
this machine. Stopping a worker node kills every process of it at once, as a lost machine would."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from tests.support.serve_run import ROOT, descendant_pids, free_port, until

HEAD_IP = "127.0.0.2"
START_TIMEOUT_S = 90


@dataclass
class RayNode:
    ip: str
    process: subprocess.Popen[bytes]  # `ray start --block`: the node's processes descend from it

    def kill(self) -> None:
        """SIGKILL every process of the node at once. Ray starts its workers in sessions of their own, so the tree
        is collected first: a process group would miss them."""
        pids = [*descendant_pids(self.process.pid, ""), self.process.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class LocalRayCluster:
    """A head (``--num-cpus=0``: only the control plane, Serve's controller and its HTTP proxy run there) and worker
    nodes, with the dashboard (and so Serve's REST API) on 127.0.0.1."""

    logs: Path
    env: dict[str, str]
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    head: RayNode | None = None
    workers: list[RayNode] = field(default_factory=list)
    _worker_ips: Any = field(default_factory=lambda: (f"127.0.0.{n}" for n in itertools.count(3)))

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, ip: str, name: str, *args: str) -> RayNode:
        ray_cli = Path(sys.executable).with_name("ray")
        with (self.logs / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(
                [str(ray_cli), "start", "--block", f"--node-ip-address={ip}", "--disable-usage-stats", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return RayNode(ip, process)

    def start_head(self) -> None:
        self.head = self._start(
            HEAD_IP,
            "head",
            "--head",
            f"--port={self.gcs_port}",
            "--num-cpus=0",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
        )

        def dashboard_answers() -> bool:
            try:
                return httpx.get(f"{self.dashboard}/api/version", timeout=2).status_code in (200, 401)  # 401: token
            except httpx.TransportError:
                return False

        assert until(dashboard_answers, START_TIMEOUT_S), f"the head never came up:\n{self.log('head')}"

    def start_worker(self, num_cpus: int) -> RayNode:
        name = f"worker-{len(self.workers) + 1}"
        node = self._start(
            next(self._worker_ips),
            name,
            f"--address={HEAD_IP}:{self.gcs_port}",
            f"--num-cpus={num_cpus}",
            f"--dashboard-agent-listen-port={free_port()}",
        )
        self.workers.append(node)
        assert until(lambda: node.ip in self.alive_node_ips(), START_TIMEOUT_S), f"no {name}:\n{self.log(name)}"
        return node

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def _list(self, resource: str, *filters: str) -> list[dict[str, Any]]:
        """``ray list RESOURCE`` against the dashboard, in a subprocess with the cluster's environment: Ray reads
        its authentication mode once per process, and this test process imported Ray before (without token mode)."""
        args = ["list", resource, "--address", self.dashboard, "--format", "json", "--limit", "10000"]
        for condition in filters:
            args += ["--filter", condition]
        done = subprocess.run(
            [str(Path(sys.executable).with_name("ray")), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"ray {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        if done.stdout.strip().startswith("No resource"):  # what the CLI prints for an empty list
            return []
        return list(json.loads(done.stdout))

    def alive_node_ips(self) -> dict[str, str]:
        """Node IP → node id, for the nodes the cluster has alive now."""
        return {n["node_ip"]: n["node_id"] for n in self._list("nodes", "state=ALIVE")}

    def alive_actors(self) -> list[dict[str, Any]]:
        return self._list("actors", "state=ALIVE")

    def serve_deploy(self, config: dict[str, Any]) -> None:
        path = self.logs / f"deploy-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = subprocess.run(
            [str(Path(sys.executable).with_name("serve")), "deploy", str(path), "-a", self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"serve deploy failed:\n{done.stdout}\n{done.stderr}"

    def stop(self) -> None:
        for node in [*self.workers, *([self.head] if self.head else [])]:
            if node.process.poll() is None:
                node.kill()
        # `ray start --head` leaves its address where a later plain `ray.init()` on this machine would try to join
        # it; `ray stop` would remove it, the kills above do not.
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if current.is_file() and current.read_text().strip() == f"{HEAD_IP}:{self.gcs_port}":
            current.unlink()


def cluster_env(weights_dir: Path) -> dict[str, str]:
    """What each node is started with: our code and weights, the proxy guard, and Ray 2.60's token mode (a `ray
    start` cluster has token authentication on, and the CLI and state API need to be told) with a token of its own:
    `ray start` makes none, and on a fresh machine (no ~/.ray/auth_token, which `ray.init` writes) it refused to
    start. The Dockerfile generates one for the same reason."""
    env = {
        **os.environ,
        "BGSERVE_WEIGHTS_DIR": str(weights_dir),
        "PYTHONPATH": str(ROOT),
        PROXY_CALLBACK_VARIABLE: PROXY_CALLBACK,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),  # read before ~/.ray/auth_token, by every process given this env
    }
    env.pop("RAY_ADDRESS", None)
    return env
