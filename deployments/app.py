"""The application builder: ``serve_config.yaml`` names ``deployments.app:build_app`` and its ``args`` validate
into ``AppConfig``. One ``ModelDeployment`` is bound per served tier (named after the tier), plus the ingress.

Each deployment's Serve options are our defaults with the config's ``deployment:`` mapping merged over them
(``AppConfig`` does the merge; Serve's own ``Deployment.options`` validates the result, so every option works as
Serve documents it). The config file's ``deployments:`` list is for what Serve applies live: each tier's
``user_config`` (its batching).
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation to validate `args` into
# AppConfig, and a string annotation makes it pass a plain dict instead.
import logging
import os
from typing import Any

import ray
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments import SERVE_LOGGER
from deployments.ingress import Ingress
from deployments.model import ModelDeployment
from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE
from serve_app.catalogue import Tier
from serve_app.errors import ConfigurationError
from serve_app.schemas import AppConfig, gpu_missing_message
from serve_app.weights import default_weights_dir

logger = logging.getLogger(SERVE_LOGGER)


def build_app(args: AppConfig) -> Application:
    # Resolved once, where the app is built, and handed to every replica as an absolute path. `serve run` builds
    # in the operator's shell; `serve deploy` builds in a task on the cluster, so there set `weights_dir` (or
    # BGSERVE_WEIGHTS_DIR under the application's runtime_env.env_vars).
    weights_dir = (args.weights_dir or default_weights_dir()).expanduser().resolve()
    config = args.model_copy(update={"weights_dir": weights_dir})
    logger.info("bgserve configuration: %s", config.model_dump_json())
    warn_if_gpus_missing(config)
    warn_if_proxy_unguarded()
    tiers = config.served_tiers(weights_dir)
    ingress, deployments = configured_deployments(config)
    models = {tier.value: deployments[tier].bind(served) for tier, served in tiers.items()}
    return ingress.bind(config, tiers, models)


def configured_deployments(config: AppConfig) -> tuple[Deployment, dict[Tier, Deployment]]:
    """The ingress's and each served tier's deployment with their Serve options, which Serve validates here (what a
    config can get wrong beyond ``AppConfig``; ``deployments/preflight.py`` checks a config file with it)."""
    tiers = {
        tier: with_options(
            ModelDeployment,
            f"tiers.{tier.value}.deployment",
            {"name": tier.value, "user_config": tier_config.batching.model_dump(), **tier_config.deployment_options()},
        )
        for tier, tier_config in config.tiers.items()
    }
    return with_options(Ingress, "ingress.deployment", config.ingress_deployment_options()), tiers


def with_options(deployment: Any, where: str, options: dict[str, Any]) -> Deployment:
    """``deployment.options(**options)``, with Serve's complaint about a bad option named by its config path.
    (``deployment`` is a ``Deployment``; mypy sees the decorated class, as @serve.deployment's typing keeps it.)"""
    logger.info("%s: %s", where, options)
    try:
        return deployment.options(**options)
    except (TypeError, ValueError) as exc:  # an unknown option, or a value Serve's schema refuses
        raise ConfigurationError(f"{where}: {exc}") from exc


def warn_if_proxy_unguarded() -> None:
    """Without the proxy guard, clients can lift the server's timeouts and a dying ingress costs a 500: say so."""
    if os.environ.get(PROXY_CALLBACK_VARIABLE) != PROXY_CALLBACK:
        logger.warning(
            "Serve's proxy runs without bgserve's guard: clients can lift request_timeout_s with a header, and a "
            "request lost with a dying ingress replica gets a plain 500. Start Ray with %s=%s (scripts/serve.sh "
            "does; see docs/operations.md).",
            PROXY_CALLBACK_VARIABLE,
            PROXY_CALLBACK,
        )


def warn_if_gpus_missing(config: AppConfig) -> None:
    """GPU replicas on a cluster without GPUs wait forever without an error: say so now, loudly."""
    wanted = {tier.value: c.num_gpus for tier, c in config.tiers.items() if c.num_gpus > 0}
    if not wanted or not ray.is_initialized():
        return
    if float(ray.cluster_resources().get("GPU", 0.0)) == 0:
        logger.error(
            "%s Until then /v1/tiers reports them not ready and requests get 503.", gpu_missing_message(wanted)
        )
