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

from deployments.ingress import Ingress
from deployments.tier import TierDeployment
from serve_app.schemas import AppConfig, TierModelArgs
from serve_app.weights import default_weights_dir

logger = logging.getLogger("ray.serve")


def build_app(args: AppConfig) -> Application:
    # Resolved here, where the operator's environment is, and handed to every replica as an absolute path.
    weights_dir = (args.weights_dir or default_weights_dir()).expanduser().resolve()
    config = args.model_copy(update={"weights_dir": weights_dir})
    logger.info("bgserve configuration: %s", config.model_dump_json())
    warn_if_gpus_missing(config)
    tiers = {
        tier.value: TierDeployment.options(
            name=tier.value,
            num_replicas=tier_config.num_replicas,
            max_ongoing_requests=tier_config.max_ongoing_requests,
            ray_actor_options={"num_cpus": tier_config.num_cpus, "num_gpus": tier_config.num_gpus},
            user_config=tier_config.batching.model_dump(),
        ).bind(TierModelArgs(tier=tier, config=tier_config, weights_dir=weights_dir))
        for tier, tier_config in config.tiers.items()
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
    available = float(ray.cluster_resources().get("GPU", 0.0))
    if available == 0:
        logger.error(
            "tiers %s ask for GPU shares %s but this Ray cluster has no GPU: their replicas cannot start until a "
            "GPU node joins. On a machine without a GPU serve configs/cpu.yaml instead. Until then /v1/tiers "
            "reports them not ready and their requests get 503.",
            ", ".join(wanted),
            wanted,
        )
