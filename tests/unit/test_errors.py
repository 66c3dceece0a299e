import logging
import pickle

import pytest

from serve_app import errors
from serve_app.errors import ServiceError, all_error_types

EXPECTED = {
    errors.ServiceError: (500, "internal_error"),
    errors.InvalidParameterError: (422, "invalid_parameter"),
    errors.MalformedRequestError: (400, "malformed_request"),
    errors.EmptyUploadError: (400, "empty_upload"),
    errors.InvalidImageError: (400, "invalid_image"),
    errors.UnsupportedMediaTypeError: (415, "unsupported_media_type"),
    errors.PayloadTooLargeError: (413, "payload_too_large"),
    errors.UnauthorizedError: (401, "unauthorized"),
    errors.UploadTooSlowError: (408, "upload_too_slow"),
    errors.ClientClosedError: (499, "client_closed"),
    errors.TierUnavailableError: (503, "tier_unavailable"),
    errors.OverloadedError: (503, "overloaded"),
    errors.DeadlineExceededError: (504, "deadline_exceeded"),
    errors.InferenceError: (500, "inference_failed"),
    errors.ConfigurationError: (500, "configuration_error"),
    errors.WeightsUnavailableError: (500, "weights_unavailable"),
    errors.ChecksumMismatchError: (500, "checksum_mismatch"),
    errors.UnknownRuntimeError: (500, "unknown_runtime"),
    errors.DeviceUnavailableError: (500, "device_unavailable"),
}


def test_every_error_type_is_pinned() -> None:
    assert set(all_error_types()) == set(EXPECTED)


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_status_and_code(cls: type[ServiceError]) -> None:
    assert (cls.status, cls.code) == EXPECTED[cls]


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_survives_pickling_with_its_message(cls: type[ServiceError]) -> None:
    copy = pickle.loads(pickle.dumps(cls("what went wrong")))
    assert type(copy) is cls
    assert copy.message == "what went wrong"


SERVE_CONSTRUCTOR_FAILURE = (
    "The deployment failed to start 3 times in a row. This may be due to a problem with its constructor or initial "
    "health check failing. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:bgserve:fast.initialize_and_get_metadata()\x1b[39m (pid=3905, ip=10.0.0.2, "
    "actor_id=6f1a, repr=<ray.serve._private.replica.ServeReplica:bgserve:fast object at 0x7f>)\n"
    '  File "/home/ray/bgserve/deployments/model.py", line 88, in __init__\n'
    "    self.runtime = create_runtime(...)\n"
    "Traceback (most recent call last):\n"
    "IndexError: pop from empty list\n"
)


ROLLING_UPDATE_FAILURE = (  # Ray 2.60's wording (deployment_state.py), its first line 302 characters long
    "The deployment failed to start 3 times in a row during a rolling update. This may be due to a problem with its "
    "constructor, initial health check or health checks failing. The update is stopped and replicas of the previous "
    "version keep running until a new deploy. See controller logs for details. Error:\n"
    "\x1b[36mray::ServeReplica:bgserve:fast.initialize_and_get_metadata()\x1b[39m (pid=3905, ip=10.0.0.2)\n"
    "Traceback (most recent call last):\n"
    '  File "/home/ray/bgserve/serve_app/runtimes/inspyrenet.py", line 103, in load_model\n'
    "serve_app.errors.WeightsUnavailableError: /models/x.pth is not an InSPyReNet_SwinB checkpoint\n"
)
BUILD_FAILURE = (  # a redeploy whose args do not validate (DEPLOY_FAILED)
    "Deploying app 'bgserve' failed with exception:\n"
    "Traceback (most recent call last):\n"
    '  File "/home/ray/anaconda3/lib/python3.11/site-packages/ray/serve/_private/api.py", line 300, in build\n'
    "pydantic_core._pydantic_core.ValidationError: 1 validation error for AppConfig\n"
    "defualt_tier\n"
    "  Extra inputs are not permitted [type=extra_forbidden, input_value='fast', input_type=str]\n"
    "    For further information visit https://errors.pydantic.dev/2.14/v/extra_forbidden\n"
)


def test_a_summary_keeps_serves_sentence_and_the_exception_and_drops_the_traceback() -> None:
    text = errors.summary(SERVE_CONSTRUCTOR_FAILURE)
    assert text.startswith("The deployment failed to start 3 times in a row.")
    assert text.endswith("IndexError: pop from empty list")
    assert "\x1b" not in text and "pid=" not in text and "File " not in text and "\n" not in text
    update = errors.summary(ROLLING_UPDATE_FAILURE)  # a long sentence is shortened, the exception kept whole
    assert update.startswith("The deployment failed to start 3 times in a row during a rolling update.")
    assert update.endswith("WeightsUnavailableError: /models/x.pth is not an InSPyReNet_SwinB checkpoint")
    build = errors.summary(BUILD_FAILURE)  # pydantic's details follow its exception line; its link does not
    assert build.startswith("Deploying app 'bgserve' failed with exception: pydantic_core")
    assert "defualt_tier Extra inputs are not permitted" in build and "errors.pydantic.dev" not in build
    assert errors.summary("one line stays as it is") == "one line stays as it is"
    assert errors.summary("ValueError: alone") == "ValueError: alone"
    assert errors.summary("") == ""
    long = errors.summary("x" * 10_000)
    assert len(long) == errors.SUMMARY_CHARS and long.endswith("...")


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_refusals_an_operator_watches_log_one_warning_and_bad_requests_none(
    cls: type[ServiceError], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/operations.md: each refusal in its table (503, 504, and our 408 for a slow upload) is one WARNING line;
    a 500 is an ERROR; a 4xx the caller caused is left to the access line."""
    from deployments.http_errors import logger, service_error_response

    with caplog.at_level(logging.INFO, logger=logger.name):
        service_error_response(cls("what happened"))
    levels = [record.levelno for record in caplog.records if record.name == logger.name]
    if cls.status in (408, 503, 504):
        assert levels == [logging.WARNING]
    elif cls.status >= 500:
        assert levels == [logging.ERROR]
    else:
        assert levels == []
