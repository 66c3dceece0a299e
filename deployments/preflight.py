"""Checks before `serve run`, run by ``scripts/serve.sh``: ``python -m deployments.preflight CONFIG``.

Serve's proxy binds its port with SO_REUSEPORT, so a second service started on a busy port starts without an
error and the two split the connections between them. Binding it here without that option tells a busy port
from a free one, and says so before anything starts."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import yaml

SERVE_DEFAULT_HOST, SERVE_DEFAULT_PORT = "127.0.0.1", 8000


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


CPU_CONFIGS = ("cpu.yaml", "try.yaml")  # scripts/serve.sh gives these, and only these, configs/cpu.env's settings
CPU_COPY_HINT = " (keep configs/cpu.env's settings for it: `set -a; . configs/cpu.env; set +a` first)."


def check(config_path: Path) -> str | None:
    """What stands in the way of serving ``config_path`` here, or None."""
    options = (yaml.safe_load(config_path.read_text()) or {}).get("http_options") or {}
    host, port = str(options.get("host", SERVE_DEFAULT_HOST)), int(options.get("port", SERVE_DEFAULT_PORT))
    if port_in_use(host, port):
        return (
            f"port {port} on {host} is already in use (another bgserve, or another program).\n"
            "  Stop it first (Ctrl-C where it runs; `RAY_AUTH_MODE=token .venv/bin/serve shutdown -y` for `serve "
            "deploy`), or serve on another port:\n"
            f"  copy {config_path.name}, set http_options.port in the copy, and pass the copy to scripts/serve.sh"
            f"{CPU_COPY_HINT if config_path.name in CPU_CONFIGS else '.'}"
        )
    return None


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python -m deployments.preflight CONFIG", file=sys.stderr)
        return 2
    problem = check(Path(sys.argv[1]))
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
