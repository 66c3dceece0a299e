"""Checks before serving or deploying a config: ``python -m deployments.preflight CONFIG`` (``scripts/serve.sh`` runs
it, and prints the URL it gives), ``python -m deployments.preflight --config-only CONFIG`` before ``serve deploy``.

1. The config itself, as the cluster's build would see it: Serve's schema, each of our applications' ``args``
   through ``AppConfig`` and Serve's deployment options, and the names in its ``deployments:`` list. ``serve
   deploy`` reports a config that does not build only later, in ``serve status`` (the running version serves
   on); this says what is wrong, by config path, first.
2. The port (not with ``--config-only``). Serve's proxy binds it with SO_REUSEPORT, so a second service started
   on a busy port starts without an error and the two split the connections between them. Binding it here
   without that option tells a busy port from a free one, and says so before anything starts."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Any

from deployments import SERVE_LOGGER
from serve_app.errors import ConfigurationError
from serve_app.weights_cli import read_serve_config

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


def http_address(config: dict[str, Any]) -> tuple[str, int]:
    """The host and port a config's HTTP proxy listens on."""
    options = config.get("http_options") or {}
    return str(options.get("host", SERVE_DEFAULT_HOST)), int(options.get("port", SERVE_DEFAULT_PORT))


def check(config_path: Path, config: dict[str, Any]) -> str | None:
    """What stands in the way of serving ``config`` (read from ``config_path``) here, or None."""
    host, port = http_address(config)
    if port_in_use(host, port):
        return (
            f"port {port} on {host} is already in use (another bgserve, or another program).\n"
            "  Stop it first (Ctrl-C where it runs; `RAY_AUTH_MODE=token .venv/bin/serve shutdown -y` for `serve "
            "deploy`), or serve on another port:\n"
            f"  copy {config_path.name}, set http_options.port in the copy, and pass the copy to scripts/serve.sh"
            f"{CPU_COPY_HINT if config_path.name in CPU_CONFIGS else '.'}"
        )
    return None


BUILDER = "deployments.app:build_app"


def config_problems(config: dict[str, Any]) -> list[str]:
    """What Serve, or our builder, would refuse in a config (a dict as read from its YAML file)."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import configured_deployments
    from deployments.http_errors import validation_message
    from serve_app.schemas import AppConfig

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        return [f"Serve's config schema: {validation_message(exc)}"]
    problems = []
    for index, app in enumerate(config.get("applications") or []):
        if app.get("import_path") != BUILDER:
            continue
        where = f"applications[{index}] ({app.get('name', 'default')}) args"
        try:
            ingress, tiers = configured_deployments(AppConfig.model_validate(app.get("args") or {}))
        except ValidationError as exc:
            problems.append(f"{where}: {validation_message(exc)}")
            continue
        except ConfigurationError as exc:
            problems.append(f"{where}: {exc.message}")
            continue
        # Serve applies the `deployments:` list over what the builder made; a name it did not make fails the deploy.
        built = {ingress.name, *(deployment.name for deployment in tiers.values())}
        overrides = {entry.get("name"): entry for entry in app.get("deployments") or []}
        for name in overrides.keys() - built:
            problems.append(
                f"applications[{index}] deployments: {name!r} is not one of this application's deployments "
                f"({', '.join(sorted(built))})"
            )
        for deployment in tiers.values():
            problems += batching_problems(f"applications[{index}] tier {deployment.name}", deployment, overrides)
    return problems


def batching_problems(where: str, deployment: Any, overrides: dict[str, Any]) -> list[str]:
    """A tier's batching as it will run: its ``user_config`` and ``max_ongoing_requests`` from the config file's
    ``deployments:`` entry where it has them (Serve applies them over the builder's), else from ``args``."""
    from pydantic import ValidationError

    from deployments.http_errors import validation_message
    from serve_app.schemas import BatchingConfig

    entry = overrides.get(deployment.name) or {}
    try:
        batching = BatchingConfig.model_validate(entry.get("user_config", deployment.user_config))
    except ValidationError as exc:  # the replica would fail in reconfigure, at every start
        return [f"{where}: user_config: {validation_message(exc)}"]
    ongoing = entry.get("max_ongoing_requests", deployment.max_ongoing_requests)
    if ongoing < batching.max_batch_size:
        return [
            f"{where}: max_ongoing_requests ({ongoing}) < max_batch_size ({batching.max_batch_size}): Serve would "
            f"never send a full batch, and each batch would wait out batch_wait_timeout_s"
        ]
    return []


def url(config: dict[str, Any]) -> str:
    host, port = http_address(config)
    return f"http://{'localhost' if host in ('0.0.0.0', '::', '127.0.0.1') else host}:{port}"


def main() -> int:
    arguments = sys.argv[1:]
    config_only = "--config-only" in arguments
    paths = [a for a in arguments if a != "--config-only"]
    if len(paths) != 1:
        print("usage: python -m deployments.preflight [--config-only] CONFIG", file=sys.stderr)
        return 2
    logging.getLogger(SERVE_LOGGER).setLevel(logging.WARNING)  # not the builder's option lines: only problems
    path = Path(paths[0])
    try:
        config = read_serve_config(path)
    except ConfigurationError as exc:  # no file there, not YAML, or no Serve config
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    problems = config_problems(config)
    if not config_only and not problems:
        problems = [p for p in [check(path, config)] if p]
    for problem in problems:
        print(f"error: {path}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(url(config))  # where it will answer (scripts/serve.sh says so)
    return 0


if __name__ == "__main__":
    sys.exit(main())
