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


def test_a_summary_keeps_serves_sentence_and_the_exception_and_drops_the_traceback() -> None:
    text = errors.summary(SERVE_CONSTRUCTOR_FAILURE)
    assert text.startswith("The deployment failed to start 3 times in a row.")
    assert text.endswith("IndexError: pop from empty list")
    assert "\x1b" not in text and "pid=" not in text and "File " not in text and "\n" not in text
    assert errors.summary("one line stays as it is") == "one line stays as it is"
    assert errors.summary("") == ""
    long = errors.summary("x" * 10_000)
    assert len(long) == errors.SUMMARY_CHARS and long.endswith("...")
