"""The application builder: ``serve_config.yaml`` names ``deployments.app:build_app`` and its ``args`` validate
into ``AppConfig``. One ``TierDeployment`` is bound per served tier (named after the tier), plus the ingress.

Every option lives under ``args`` (resources too), because a ``ray_actor_options`` under ``deployments:`` in the
config file replaces the whole dict the code sets (leaving out num_cpus there silently means 1 CPU again).
"""

# No `from __future__ import annotations` here: Serve reads the builder's annotation to validate `args` into
# AppConfig, and a string annotation makes it pass a plain dict instead.
import logging

import ray
from ray.serve import Application

from deployments import SERVE_LOGGER
from deployments.ingress import Ingress
from deployments.tier import TierDeployment
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
    tiers = {
        tier.value: TierDeployment.options(
            name=tier.value,
            num_replicas=tier_args.config.num_replicas,
            max_ongoing_requests=tier_args.config.max_ongoing_requests,
            max_queued_requests=tier_args.config.max_queued_requests,
            ray_actor_options={"num_cpus": tier_args.config.num_cpus, "num_gpus": tier_args.config.num_gpus},
            user_config=tier_args.config.batching.model_dump(),
        ).bind(tier_args)
        for tier, tier_args in config.tier_args(weights_dir).items()
    }
    return Ingress.options(
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.ingress.num_cpus},
    ).bind(config, tiers)


def warn_if_gpus_missing(config: AppConfig) -> None:
    """GPU replicas on a cluster without GPUs wait forever without an error: say so now, loudly."""
    wanted = {tier.value: c.num_gpus for tier, c in config.tiers.items() if c.num_gpus > 0}
    if not wanted or not ray.is_initialized():
        return
    if float(ray.cluster_resources().get("GPU", 0.0)) == 0:
        logger.error(
            "%s Until then /v1/tiers reports them not ready and requests get 503.", gpu_missing_message(wanted)
        )
