"""The ingress's middleware stack (deployments/ingress.py's add_middleware) on a FastAPI app of routes that fail,
driven by Starlette's TestClient: no Ray."""

from fastapi import FastAPI
from fastapi.testclient import TestClient

from deployments.http_errors import install_error_handlers
from deployments.ingress import add_middleware
from serve_app.errors import InferenceError
from serve_app.schemas import AppConfig

ORIGIN = "https://app.example.com"


def service(**access: object) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    add_middleware(app, AppConfig.model_validate({"access": {"cors_origins": [ORIGIN], **access}}))

    async def unexpected() -> None:
        raise RuntimeError("a bug")

    async def ours() -> None:
        raise InferenceError("the model failed")

    app.add_api_route("/unexpected", unexpected)
    app.add_api_route("/ours", ours)
    return TestClient(app, raise_server_exceptions=False)


def test_an_unexpected_500_is_json_a_page_on_an_allowed_origin_can_read() -> None:
    """Starlette answered it from its outermost layer, past CORS: the page saw a network error, not the JSON."""
    client = service()
    for path, code in (("/unexpected", "internal_error"), ("/ours", "inference_failed")):
        answer = client.get(path, headers={"Origin": ORIGIN})
        assert answer.status_code == 500 and answer.json()["error"]["code"] == code, answer.text
        assert answer.headers.get("access-control-allow-origin") == ORIGIN, (path, dict(answer.headers))
    assert "RuntimeError" in client.get("/unexpected").json()["error"]["message"]
