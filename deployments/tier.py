"""The tier deployment: one class, bound once per tier, doing only model work.

Requests are aggregated with ``@serve.batch``; the batch runs in a worker thread so the replica's event loop
keeps gathering the next batch meanwhile. Batch size and wait come from ``user_config`` (``BatchingConfig``), so
``serve deploy`` with new values changes them live, without reloading the model.
"""

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

from deployments import SERVE_LOGGER, route_core_logs_to_serve
from serve_app.errors import ServiceError
from serve_app.schemas import BatchingConfig, MaskResult, TierModelArgs
from serve_app.tier_model import TierModel

logger = logging.getLogger(SERVE_LOGGER)


@serve.deployment
class TierDeployment:
    def __init__(self, args: TierModelArgs) -> None:
        route_core_logs_to_serve()
        self.args = args
        self.model = TierModel(args)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = BatchingConfig.model_validate(user_config)
        self.predict_batch.set_max_batch_size(batching.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        logger.info("tier %s batching: %s", self.args.tier.value, batching.model_dump())
        if batching.max_batch_size > self.args.config.max_ongoing_requests:
            logger.warning(
                "max_batch_size %d > max_ongoing_requests %d: batches will never be full",
                batching.max_batch_size,
                self.args.config.max_ongoing_requests,
            )

    async def predict(self, image: np.ndarray) -> MaskResult:
        """One model-sized image in, its mask out; batched with concurrent calls."""
        result = await self.predict_batch(image)
        if isinstance(result, ServiceError):
            raise result
        return result

    @serve.batch(**BatchingConfig().model_dump())  # replaced by reconfigure() before the first request
    async def predict_batch(self, images: list[np.ndarray]) -> list[MaskResult | ServiceError]:
        # Errors come back as values: an exception raised here would fail every request of the batch.
        return await asyncio.to_thread(self.model.predict_many, images)

    def check_health(self) -> None:
        self.model.check_health()
