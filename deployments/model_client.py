"""Calling a tier's model deployment from the ingress: Serve's errors become ours, and a replica that dies
mid-request costs the request nothing (it goes to another replica, once)."""

import logging

import numpy as np
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments import SERVE_LOGGER
from serve_app.errors import ServiceError, TierUnavailableError
from serve_app.schemas import MaskResult

logger = logging.getLogger(SERVE_LOGGER)


class ModelClient:
    def __init__(self, tier: str, handle: DeploymentHandle) -> None:
        self.tier = tier
        self.handle = handle

    async def predict(self, model_input: np.ndarray) -> MaskResult:
        for attempt in (1, 2):
            try:
                return await self.handle.predict.remote(model_input)
            except RayTaskError as exc:
                if isinstance(exc.cause, ServiceError):  # the model deployment's verdict on this image
                    raise exc.cause from None
                raise
            except RayActorError as exc:
                logger.warning("tier %s replica died during a request (attempt %d): %s", self.tier, attempt, exc)
            except BackPressureError as exc:
                raise TierUnavailableError(f"the {self.tier} tier is at capacity; retry shortly ({exc})") from exc
            except DeploymentUnavailableError as exc:
                raise TierUnavailableError(f"the {self.tier} tier is unavailable: {exc}") from exc
        raise TierUnavailableError(f"the {self.tier} tier's replica died twice while serving this request")
