"""A real Prometheus server (Debian's ``prometheus``) scraping Ray's metrics endpoint, for the monitoring tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.serve_run import free_port

PROMETHEUS = shutil.which("prometheus")


@dataclass(frozen=True)
class Prometheus:
    url: str

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query; fails the test on a query Prometheus cannot parse or run."""
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=30).json()
        assert answer["status"] == "success", (expression, answer)
        return list(answer["data"]["result"])

    def metric_names(self, prefix: str) -> list[str]:
        answer = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=30).json()
        return [name for name in answer["data"] if name.startswith(prefix)]


@contextmanager
def prometheus(
    targets: list[str], directory: Path, scrape_interval_s: int = 1, labels: dict[str, str] | None = None
) -> Iterator[Prometheus]:
    """Prometheus scraping ``targets`` (host:port) every ``scrape_interval_s``, with its data in ``directory``;
    ``labels`` go on every series scraped (as a PodMonitor's relabelling puts ``ray_io_cluster`` on them)."""
    assert PROMETHEUS is not None, "needs Prometheus (scripts/test.sh installs Debian's prometheus)"
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s}s", "evaluation_interval": f"{scrape_interval_s}s"},
        "scrape_configs": [{"job_name": "ray", "static_configs": [{"targets": targets, "labels": labels or {}}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (directory / "prometheus.log").read_text()
            time.sleep(0.5)
        yield Prometheus(url)
    finally:
        process.terminate()
        process.wait(timeout=30)
