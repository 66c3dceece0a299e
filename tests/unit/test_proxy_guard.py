"""The guard Serve's proxy runs before our ingress (deployments/proxy_guard.py), driven as the proxy drives it:
an ASGI app inside it that answers as Serve's proxy does. The integration tests check it inside a real proxy."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

import pytest
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from deployments import proxy_guard
from deployments.proxy_guard import IngressWatch, ProxyGuard, Refusals, middlewares, route_of, unserved_routes


def http_scope(headers: list[tuple[bytes, bytes]], path: str = "/v1/remove") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


def drive(
    inner: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
    client_leaves: bool = False,
    watch: IngressWatch | None = None,
    path: str = "/v1/remove",
) -> list[Message]:
    sent: list[Message] = []
    incoming = [{"type": "http.disconnect"}] if client_leaves else [{"type": "http.request", "body": b"x"}]

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(ProxyGuard(inner, watch)(http_scope(headers or [], path), receive, send))
    return sent


def status_and_body(sent: list[Message]) -> tuple[int, dict[str, bytes], bytes]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_client_headers_that_lift_server_limits_never_reach_the_proxy() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["headers"])
        await JSONResponse({"ok": True})(scope, receive, send)

    headers = [
        (b"x-request-timeout-seconds", b"0"),
        (b"X-Request-Disconnect-Disabled", b"?1"),
        (b"content-type", b"image/png"),
    ]
    status, _, body = status_and_body(drive(proxy, headers))
    assert status == 200 and json.loads(body) == {"ok": True}
    assert seen == [[(b"content-type", b"image/png")]]


def test_a_request_the_proxy_drops_unanswered_gets_a_retriable_503() -> None:
    async def proxy_whose_ingress_died(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # Serve's proxy returns without an answer on ActorDiedError

    status, headers, body = status_and_body(drive(proxy_whose_ingress_died))
    assert status == 503 and headers[b"retry-after"] == b"2"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"]["code"] == "ingress_unavailable"


def test_a_path_is_logged_quoted_so_a_newline_in_it_forges_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """The proxy hands the path percent-decoded: /v1/remove%0AINFO ... wrote a second, forged, log line."""

    async def proxy_whose_ingress_died(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    forged = "/v1/remove\nINFO 2026-01-01 00:00:00,000 proxy -- POST /admin 200"
    with caplog.at_level(logging.WARNING, logger=proxy_guard.logger.name):
        drive(proxy_whose_ingress_died, path=forged)
    lines = [record.getMessage() for record in caplog.records if "replica died" in record.getMessage()]
    assert lines and all("\n" not in line for line in lines), lines
    assert "\\nINFO" in lines[0]


def test_a_proxy_error_before_answering_is_a_retriable_503_too() -> None:
    async def failing_proxy(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("lost the replica")

    status, _, body = status_and_body(drive(failing_proxy))
    assert status == 503 and json.loads(body)["error"]["code"] == "ingress_unavailable"


def test_a_client_that_left_gets_nothing() -> None:
    async def proxy_that_cancelled(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()  # the disconnect: Serve cancels the request and answers nothing

    assert drive(proxy_that_cancelled, client_leaves=True) == []


@pytest.mark.parametrize("code", [503, 429])  # 429: an ingress whose backpressure_config.status_code says so
def test_the_proxys_plain_text_refusals_become_json_with_their_headers(code: int) -> None:
    async def proxy_backpressure(scope: Scope, receive: Receive, send: Send) -> None:
        response = PlainTextResponse("Request dropped due to backpressure", code, headers={"Retry-After": "3"})
        await response(scope, receive, send)

    status, headers, body = status_and_body(drive(proxy_backpressure))
    assert status == code and headers[b"retry-after"] == b"3" and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": {"code": "overloaded", "message": "Request dropped due to backpressure"}}
    assert int(headers[b"content-length"]) == len(body)


def test_a_proxy_refusal_without_retry_after_gets_one() -> None:
    """Serve sends Retry-After only when the ingress's backpressure_config sets retry_after_s (the builder does; a
    config may not), and never on its 503 for an unavailable deployment: the client is told when to retry anyway."""

    async def proxy_backpressure(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("Request dropped due to backpressure", 503)(scope, receive, send)

    status, headers, body = status_and_body(drive(proxy_backpressure))
    assert status == 503 and headers[b"retry-after"] == b"2" and json.loads(body)["error"]["code"] == "overloaded"


def test_the_proxys_404_is_a_503_while_the_application_may_still_come() -> None:
    """While `serve run` starts, Serve's proxy answers every path with a plain-text 404 for some seconds (no route
    yet): the client and the CLI, which retry only 503/504, gave up on 25 of 40 images across a restart."""

    async def proxy_without_the_route(scope: Scope, receive: Receive, send: Send) -> None:
        text = f"Path '{scope['path']}' not found. Ping http://.../-/routes for available routes."  # Serve's words
        await PlainTextResponse(text, 404)(scope, receive, send)

    for watch in (IngressWatch(refreshing=False), watch_seeing({"applications": {}})):  # nothing seen, none known
        status, headers, body = status_and_body(drive(proxy_without_the_route, watch=watch))
        assert status == 503 and headers[b"retry-after"] == b"5", body
        assert json.loads(body)["error"]["code"] == "ingress_unavailable"
    under_known_app = watch_seeing(serve_details(["RUNNING"], route="/bg"))
    status, _, body = status_and_body(drive(proxy_without_the_route, watch=under_known_app, path="/bg/v1/remove"))
    assert status == 503, body  # the app is running, but the proxy has not learned its route yet
    status, headers, body = status_and_body(drive(proxy_without_the_route, watch=under_known_app, path="/other"))
    assert status == 404 and headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"] == {
        "code": "not_found",
        "message": "Path '/other' not found. Ping http://.../-/routes for available routes.",
    }


def test_the_proxys_404_is_a_404_once_no_application_is_coming() -> None:
    """Past the proxy's first minute, no application known (all deleted) or no fresh view (the controller stopped
    answering) is no reason to send a request again: a 503 would have had clients retry for ever."""

    async def proxy_without_the_route(scope: Scope, receive: Receive, send: Send) -> None:
        text = f"Path '{scope['path']}' not found. Ping http://.../-/routes for available routes."
        await PlainTextResponse(text, 404)(scope, receive, send)

    none_deployed = watch_seeing({"applications": {}})
    none_deployed.created_at -= proxy_guard.PROXY_STARTUP_S
    assert status_and_body(drive(proxy_without_the_route, watch=none_deployed))[0] == 404
    stale = watch_seeing(serve_details(["RUNNING"], route="/bg"))
    stale.created_at -= proxy_guard.PROXY_STARTUP_S
    stale.taken_at -= 60
    assert status_and_body(drive(proxy_without_the_route, watch=stale, path="/bg/v1/remove"))[0] == 404


def test_an_application_still_building_may_come_and_a_first_404_looks_before_deciding() -> None:
    """Serve gives a config's application its route only when its build is done, which may take longer than the
    proxy's first minute: a 404 then is a 503 to send again. A proxy's first 404 after that minute came before
    any view was taken (the watch starts on the first request): it now looks first."""

    async def proxy_without_the_route(scope: Scope, receive: Receive, send: Send) -> None:
        text = f"Path '{scope['path']}' not found. Ping http://.../-/routes for available routes."
        await PlainTextResponse(text, 404)(scope, receive, send)

    building = {"applications": {"bgserve": {"route_prefix": None, "status": "DEPLOYING", "deployments": {}}}}
    watch = watch_seeing(building)
    watch.created_at -= proxy_guard.PROXY_STARTUP_S
    assert status_and_body(drive(proxy_without_the_route, watch=watch))[0] == 503
    built = serve_details(["RUNNING"], route="/bg")
    blind = IngressWatch(read=lambda: built, refreshing=False)  # no view taken when the 404 comes
    blind.created_at -= proxy_guard.PROXY_STARTUP_S
    assert status_and_body(drive(proxy_without_the_route, watch=blind, path="/other"))[0] == 404
    blind = IngressWatch(read=lambda: built, refreshing=False)
    blind.created_at -= proxy_guard.PROXY_STARTUP_S
    assert status_and_body(drive(proxy_without_the_route, watch=blind, path="/bg/v1/remove"))[0] == 503


def test_an_applications_own_plain_text_404_passes_as_it_is() -> None:
    """Only Serve's own words mark the proxy's 404: another application's plain-text 404 under a known route was
    turned into a 503 "send it again" for a path that will never exist."""

    async def app_without_the_page(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("Not Found", 404)(scope, receive, send)

    status, headers, body = status_and_body(
        drive(app_without_the_page, watch=watch_seeing(serve_details(["RUNNING"])), path="/nope")
    )
    assert (status, body) == (404, b"Not Found") and headers[b"content-type"].startswith(b"text/plain")


def test_our_own_answers_pass_untouched() -> None:
    async def ingress_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"error": {"code": "tier_unavailable", "message": "m"}}, 503)(scope, receive, send)

    status, _, body = status_and_body(drive(ingress_answer))
    assert status == 503 and json.loads(body)["error"]["code"] == "tier_unavailable"


def test_serve_gets_a_list_of_starlette_middlewares() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(middlewares())[0].cls is ProxyGuard


def serve_details(
    ingress_replica_states: list[str], route: str = "/", min_replicas: int | None = None
) -> dict[str, Any]:
    """The part of Serve's instance details (`get_serve_instance_details`) the watch reads."""
    autoscaling = {"min_replicas": min_replicas, "max_replicas": 2} if min_replicas is not None else None
    return {
        "applications": {
            "bgserve": {
                "route_prefix": route,
                "deployment_topology": {"ingress_deployment": "ingress"},
                "deployments": {
                    "ingress": {
                        "status": "UNHEALTHY",
                        "message": "A replica's health check failed.",
                        "deployment_config": {"autoscaling_config": autoscaling},
                        "replicas": [{"state": state} for state in ingress_replica_states],
                    },
                    "fast": {"status": "HEALTHY", "message": "", "replicas": [{"state": "RUNNING"}]},
                },
            }
        }
    }


def test_an_application_is_unserved_when_its_ingress_has_no_replica_that_takes_requests() -> None:
    assert set(unserved_routes(serve_details(["PENDING_ALLOCATION", "STOPPING"]))) == {"/"}
    assert unserved_routes(serve_details([]))["/"].app == "bgserve"
    assert unserved_routes(serve_details(["STARTING", "RUNNING"])) == {}
    assert unserved_routes(serve_details(["UPDATING"])) == {}
    # A request is what scales an ingress up from zero: never refused for having none.
    assert unserved_routes(serve_details([], min_replicas=0)) == {}
    assert set(unserved_routes(serve_details([], min_replicas=1))) == {"/"}


def test_paths_match_route_prefixes_as_serves_proxy_matches_them() -> None:
    routes = ["/", "/api", "/api/v2"]
    assert route_of("/v1/remove", routes) == "/"
    assert route_of("/api", routes) == "/api" and route_of("/api/x", routes) == "/api"
    assert route_of("/apix", routes) == "/"
    assert route_of("/api/v2/remove", routes) == "/api/v2"
    assert route_of("/x", ["/api"]) is None


def watch_seeing(details: dict[str, Any]) -> IngressWatch:
    watch = IngressWatch(read=lambda: details, refreshing=False)
    watch.refresh()
    return watch


def drive_while(inner: Any, watch: IngressWatch, change: Any) -> tuple[list[Message], float]:
    """One request through the guard while ``change()`` (a coroutine) runs beside it: what was sent, and in how many
    seconds."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"x"}

    async def run() -> float:
        started = asyncio.get_running_loop().time()
        await asyncio.gather(ProxyGuard(inner, watch)(http_scope([]), receive, send), change())
        return asyncio.get_running_loop().time() - started

    took = asyncio.run(run())
    return sent, took


def test_a_request_to_an_application_without_an_ingress_replica_is_answered_503_at_once() -> None:
    reached: list[str] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await JSONResponse({"ok": True})(scope, receive, send)

    status, headers, body = status_and_body(drive(proxy, watch=watch_seeing(serve_details(["PENDING_ALLOCATION"]))))
    assert status == 503 and headers[b"retry-after"] == b"5" and reached == []
    error = json.loads(body)["error"]
    assert error["code"] == "ingress_unavailable"
    assert "'bgserve' has no running ingress replica (UNHEALTHY: A replica's health check failed.)" in error["message"]
    # With a running replica, or a view gone stale (the controller stopped answering), requests pass.
    assert status_and_body(drive(proxy, watch=watch_seeing(serve_details(["RUNNING"]))))[0] == 200
    stale = watch_seeing(serve_details([]))
    stale.taken_at -= 60
    assert status_and_body(drive(proxy, watch=stale))[0] == 200
    assert len(reached) == 2


def test_serves_own_health_and_routes_pass_whatever_the_ingress() -> None:
    """KubeRay's readiness probe reads the proxy's /-/healthz: answered 503 for an app without an ingress replica
    (under route prefix /, every path is the app's), every pod would leave the Service at once."""
    reached: list[str] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await PlainTextResponse("success")(scope, receive, send)

    for path in ("/-/healthz", "/-/routes"):
        watch = watch_seeing(serve_details(["PENDING_ALLOCATION"]))
        assert status_and_body(drive(proxy, watch=watch, path=path))[0] == 200
    assert reached == ["/-/healthz", "/-/routes"]
    # The app's own paths are still refused, those under /-/ too: Serve answers only those two itself.
    for path in ("/v1/remove", "/-/anything", "/-/healthz/x"):
        assert status_and_body(drive(proxy, watch=watch, path=path))[0] == 503, path
    assert len(reached) == 2


def test_a_request_held_by_the_proxy_is_answered_503_once_its_ingress_is_known_lost() -> None:
    details = serve_details(["RUNNING"])
    watch = watch_seeing(details)
    cancelled: list[bool] = []

    async def proxy_waiting_for_a_replica(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await asyncio.sleep(5)  # Serve's router waits until a replica appears
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def lose_the_ingress_soon() -> None:
        await asyncio.sleep(0.2)
        details["applications"]["bgserve"]["deployments"]["ingress"]["replicas"] = [{"state": "PENDING_ALLOCATION"}]
        watch.refresh()

    sent, took = drive_while(proxy_waiting_for_a_replica, watch, lose_the_ingress_soon)
    status, _, body = status_and_body(sent)
    assert status == 503 and json.loads(body)["error"]["code"] == "ingress_unavailable"
    assert cancelled == [True] and took < 2


def test_a_request_in_flight_while_its_ingress_drains_for_an_update_is_left_to_finish() -> None:
    """An update stops the old ingress replica gracefully while the new one starts: no replica takes new requests
    (a new one gets its 503 at once), but the old one finishes what it holds, so those are not cut off."""
    details = serve_details(["RUNNING"])
    watch = watch_seeing(details)

    async def ingress_finishing_its_work(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(1.5)  # past a few of the guard's checks
        await JSONResponse({"ok": True})(scope, receive, send)

    async def update_the_ingress_soon() -> None:
        await asyncio.sleep(0.2)
        details["applications"]["bgserve"]["deployments"]["ingress"]["replicas"] = [
            {"state": "STOPPING"},
            {"state": "STARTING"},
        ]
        watch.refresh()

    sent, _ = drive_while(ingress_finishing_its_work, watch, update_the_ingress_soon)
    assert status_and_body(sent)[:3:2] == (200, b'{"ok":true}')
    assert unserved_routes(details)["/"].draining  # and a new request meanwhile is refused at once:
    assert status_and_body(drive(ingress_finishing_its_work, watch=watch))[0] == 503


class Counted(Refusals):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def count(self, application: str, reason: str) -> None:
        super().count(application, reason)  # the real Counter too: it records without a Ray
        self.seen.append((application, reason))


def test_the_guards_own_answers_are_counted_and_passing_requests_are_not() -> None:
    """Neither the ingress nor Serve's proxy counts what the guard answers itself: it counts them."""
    counted = Counted()

    async def run(inner: Any, watch: IngressWatch) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"x"}

        async def send(message: Message) -> None:
            pass

        await ProxyGuard(inner, watch, counted)(http_scope([]), receive, send)

    async def ingress_died(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()

    async def answered(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"ok": True})(scope, receive, send)

    asyncio.run(run(answered, watch_seeing(serve_details(["PENDING_ALLOCATION"]))))
    asyncio.run(run(ingress_died, watch_seeing(serve_details(["RUNNING"]))))
    asyncio.run(run(answered, watch_seeing(serve_details(["RUNNING"]))))
    assert counted.seen == [("bgserve", "no_ingress"), ("bgserve", "replica_died")]


class Board:
    """Stands in for the drain board's actor handle: ``board.report.remote(node, in_flight)`` records."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int]] = []
        self.report = self

    def remote(self, node: str, in_flight: int) -> None:
        self.reports.append((node, in_flight))


def test_a_stopping_service_refuses_new_requests_with_a_retriable_503_that_closes_the_connection() -> None:
    """Once the runner asked for a drain, a new request gets 503 shutting_down (Retry-After; Connection: close, so
    that a keep-alive client reconnects, to another instance behind a load balancer) and never reaches Serve's
    proxy; Serve's own /-/healthz still answers for the proxy. Counted as the guard's own answer."""
    counted, drain, reached = Counted(), proxy_guard.Drain(), []
    drain.draining = True

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await JSONResponse({"ok": True})(scope, receive, send)

    def run(path: str) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"x"}

        async def send(message: Message) -> None:
            sent.append(message)

        asyncio.run(
            ProxyGuard(proxy, watch_seeing(serve_details(["RUNNING"])), counted, drain)(
                http_scope([], path), receive, send
            )
        )
        return sent

    status, headers, body = status_and_body(run("/v1/remove"))
    assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down"
    assert headers[b"retry-after"] == b"5" and headers[b"connection"] == b"close"
    assert status_and_body(run("/-/healthz"))[0] == 200
    assert reached == ["/-/healthz"] and counted.seen == [("bgserve", "shutting_down")]
    assert drain.in_flight == 0


def test_the_guard_counts_its_requests_in_flight_for_the_drain() -> None:
    drain = proxy_guard.Drain()
    seen_inside: list[int] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        seen_inside.append(drain.in_flight)
        await JSONResponse({"ok": True})(scope, receive, send)

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        seen_inside.append(drain.in_flight)
        raise RuntimeError("the proxy's own error")

    async def run(inner: Any) -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"x"}

        async def send(message: Message) -> None:
            pass

        await ProxyGuard(inner, drain=drain)(http_scope([]), receive, send)

    asyncio.run(run(proxy))
    asyncio.run(run(failing))  # answered 503 by the guard: still counted out
    assert seen_inside == [1, 1] and drain.in_flight == 0


def test_the_drain_watch_finds_the_board_then_refuses_and_reports_its_count() -> None:
    """Each proxy's thread looks for the board until the runner creates it, then reports its count to it; the runner
    waits for every proxy's report (deployments/drain.py)."""
    board, looks = Board(), []

    def find() -> Board | None:
        looks.append(1)
        return board if len(looks) >= 3 else None

    drain = proxy_guard.Drain(find=find, node_id=lambda: "node-a", look_s=0.01, report_s=0.01)
    assert drain.enter()  # a request in flight before the stop
    threading.Thread(target=drain.watch, daemon=True).start()
    deadline = time.monotonic() + 5
    while len(board.reports) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert drain.draining and len(looks) == 3
    assert board.reports[0] == ("node-a", 1)
    assert not drain.enter() and drain.in_flight == 1  # a new one is refused, not counted
    drain.leave()
    while board.reports[-1] != ("node-a", 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert board.reports[-1] == ("node-a", 0)


def test_outside_a_proxy_no_drain_watch_starts() -> None:
    """middlewares() is Serve's to call, in a proxy where Ray is up; elsewhere (here) there is nothing to watch."""
    assert not proxy_guard.Drain().start()


def test_the_last_part_of_an_answer_is_sent_in_two_so_the_drain_waits_for_a_slow_reader() -> None:
    """uvicorn writes a body part without waiting and waits for its buffer only before the next part: an answer's
    single last part returned at once, with megabytes still unsent to a slow client, and the request was counted
    out of the drain. An empty end after it is what waits."""

    async def ingress_answer(scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"big": "x" * 1000})(scope, receive, send)

    sent = drive(ingress_answer)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert [(len(m["body"]) > 1000, m["more_body"]) for m in bodies] == [(True, True), (False, False)]
    assert json.loads(bodies[0]["body"]) == {"big": "x" * 1000}
