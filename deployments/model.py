"""The model deployment: one class, bound once per tier (and named after it), a thin shim over
``serve_app.predictor.Predictor``, which does the model work.

Requests are aggregated with ``@serve.batch``; the batch runs on the replica's one model thread so the event
loop keeps gathering the next batch meanwhile. One thread, always the same: batches run one at a time anyway, and
torch's per-thread state and the allocator's per-thread arenas stay with it instead of spreading over a pool
(asyncio.to_thread's) as batches land on its threads in turn. Batch size and wait come from ``user_config``
(``BatchingConfig``), so ``serve deploy`` with new values changes them live, without reloading the model.
"""

import asyncio
import contextvars
import functools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from deployments import SERVE_LOGGER, route_core_logs_to_serve
from deployments.metrics import GpuMetrics, ModelMetrics
from deployments.startup_board import StartupReporter
from serve_app.errors import DeadlineExceededError, ServiceError
from serve_app.predictor import Predictor
from serve_app.schemas import BatchingConfig, MaskResult, ServedTier

logger = logging.getLogger(SERVE_LOGGER)


@serve.deployment
class ModelDeployment:
    def __init__(self, tier: ServedTier) -> None:
        route_core_logs_to_serve()
        self.tier = tier
        self.metrics = ModelMetrics()
        progress = StartupReporter(serve.get_replica_context().app_name, tier.tier.value)
        try:
            self.predictor = Predictor(tier, on_model_call=self.metrics.model_call, report=progress)
        except BaseException as exc:  # the ingress shows why; Serve retries the replica
            progress.failed(exc)
            raise
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{tier.tier.value}-model")
        self.metrics.loaded(self.predictor.runtime.name, self.predictor.load_phases)
        self.gpu_metrics = GpuMetrics.start(str(self.predictor.runtime.device))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        batching = BatchingConfig.model_validate(user_config)
        batched: Any = self.predict_batch  # @serve.batch adds these setters; its typing does not show them
        batched.set_max_batch_size(batching.max_batch_size)
        batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        logger.info("tier %s batching: %s", self.tier.tier.value, batching.model_dump())
        if batching.max_batch_size > self.tier.config.max_ongoing_requests:
            logger.warning(
                "max_batch_size %d > max_ongoing_requests %d: batches will never be full",
                batching.max_batch_size,
                self.tier.config.max_ongoing_requests,
            )

    async def predict(self, image: np.ndarray, deadline: float | None = None) -> MaskResult:
        """One model-sized image in, its mask out; batched with concurrent calls. ``deadline`` (epoch seconds):
        past it the image is not run (``DeadlineExceededError``), whether it arrives late or waits too long."""
        if deadline is not None and time.time() >= deadline:
            raise DeadlineExceededError("its deadline passed before it reached the model; not run")
        result = await self.predict_batch((image, math.inf if deadline is None else deadline))
        if isinstance(result, ServiceError):
            raise result
        return result

    @serve.batch(**BatchingConfig().model_dump())  # replaced by reconfigure() before the first request
    async def predict_batch(self, requests: list[tuple[np.ndarray, float]]) -> list[MaskResult | ServiceError]:
        # Errors come back as values: an exception raised here would fail every request of the batch.
        images, deadlines = [image for image, _ in requests], [deadline for _, deadline in requests]
        run = functools.partial(contextvars.copy_context().run, self.predictor.predict_many, images, deadlines)
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, run)  # as to_thread, one thread

    def check_health(self) -> None:
        self.predictor.check_health()
