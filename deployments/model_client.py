"""Calling a tier's model deployment from the ingress: Serve's errors become ours, a replica that dies
mid-request costs the request nothing (it goes to another replica, once), and the tier's deadline is ours to
keep: past it the call is cancelled and the model skips the image if it has not started it."""

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments import SERVE_LOGGER
from serve_app.errors import DeadlineExceededError, ServiceError, TierUnavailableError
from serve_app.schemas import MaskResult

logger = logging.getLogger(SERVE_LOGGER)


class ModelClient:
    def __init__(
        self, tier: str, handle: DeploymentHandle, deadline_s: float, on_tier_trouble: Callable[[], None] = lambda: None
    ) -> None:
        self.tier = tier
        self.handle = handle
        self.deadline_s = deadline_s
        self.on_tier_trouble = on_tier_trouble  # a replica died or the tier is unavailable: look at Serve's status now

    async def predict(self, model_input: np.ndarray) -> MaskResult:
        # Wall-clock time: the replica may be another process or node (clocks kept by NTP); it skips the image
        # once this moment has passed.
        deadline = time.time() + self.deadline_s
        for attempt in (1, 2):
            response = self.handle.predict.remote(model_input, deadline)
            try:
                return await asyncio.wait_for(response, timeout=max(0.0, deadline - time.time()))
            except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11, two before
                response.cancel()  # frees its place in the tier's queue
                raise DeadlineExceededError(
                    f"the {self.tier} tier did not answer within its deadline of {self.deadline_s:g} s (queue and "
                    "model); retry later or use a faster tier"
                ) from None
            except RayTaskError as exc:
                if isinstance(exc.cause, ServiceError):  # the model deployment's verdict on this image
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                self.on_tier_trouble()
                logger.warning("tier %s replica died during a request (attempt %d): %s", self.tier, attempt, exc)
            except BackPressureError as exc:
                raise TierUnavailableError(f"the {self.tier} tier is at capacity; retry shortly ({exc})") from exc
            except DeploymentUnavailableError as exc:
                self.on_tier_trouble()
                raise TierUnavailableError(f"the {self.tier} tier is unavailable: {exc}") from exc
        raise TierUnavailableError(f"the {self.tier} tier's replica died twice while serving this request")
