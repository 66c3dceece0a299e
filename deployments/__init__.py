"""Ray Serve wiring: the HTTP ingress, the tier deployment and the application builder. No image math here."""

import logging
from collections.abc import Mapping
from typing import Any

SERVE_LOGGER = "ray.serve"
INGRESS_DEPLOYMENT = "ingress"  # its Serve deployment name; each tier's deployment is named as the tier


def route_core_logs_to_serve() -> None:
    """Send serve_app's log records (weights, model load, batch timings) to the replica's Serve log, so they
    appear in the Ray dashboard and the replica log files beside Serve's own. Call in a replica's __init__."""
    core = logging.getLogger("serve_app")
    core.setLevel(logging.INFO)
    for handler in logging.getLogger(SERVE_LOGGER).handlers:
        if handler not in core.handlers:
            core.addHandler(handler)
    core.propagate = False


def route_path(scope: Mapping[str, Any]) -> str:
    """The request's path within the app, as Serve's proxy matches it: under a route prefix or ``root_path``, the
    path Serve passes may include it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path
