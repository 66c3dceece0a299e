"""Middleware for Serve's HTTP proxy, which runs it before the request reaches any replica. Serve installs it from
the environment Ray was started with:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy_guard:middlewares

(``scripts/serve.sh`` sets it; on a cluster, set it where ``ray start`` runs: docs/operations.md). It does four
things Serve's options cannot:

1. It drops ``x-request-timeout-seconds`` and ``x-request-disconnect-disabled`` from every request. Serve's proxy
   honours them from any client: the first lifts ``http_options.request_timeout_s`` (0 turns it off), the second
   keeps work running after the client has gone. The server's limits stay the server's.
2. When the ingress replica dies with a request in flight, the proxy ends that request without an answer, which
   uvicorn turns into a plain-text 500. Here it becomes a 503 with ``Retry-After``: nothing was returned, and
   inference is idempotent, so the client may send it again.
3. The proxy's own refusals (503 when the ingress's queue is full, 408 past ``request_timeout_s``) get the
   service's JSON error body instead of plain text, keeping their status and headers. Its plain-text 404 for a
   path no application serves is a JSON 404 too, unless the application is only not there yet: in the proxy's
   first minute with no application seen, while an application is being built (it has no route until then), or
   for a path under a known application's route that the proxy has not learned yet, it is a 503 with
   ``Retry-After``, as for an ingress that is starting. (An application's own plain-text 404 passes as it is.)
4. When an application has no ingress replica that can take a request (its node was lost, or it is starting), the
   proxy would hold each request until a replica appears or ``request_timeout_s`` passes. Here the request gets a
   503 with ``Retry-After`` at once, and requests already waiting get it as soon as that is known
   (``IngressWatch``), unless an ingress replica is stopping: an update stops the old one gracefully, and it may
   be working on them. It finishes what it can within Serve's ``graceful_shutdown_timeout_s`` (the longest tier
   deadline plus 10 s unless set under ``ingress.deployment``); a request it could not finish is lost with it,
   and answered as in 2.
5. When the service is stopping (``deployments/run.py`` got Ctrl-C or SIGTERM and created the drain board), new
   requests get a 503 ``shutting_down`` (``Retry-After``, ``Connection: close``), and the requests this proxy has in
   flight are counted to the board until none is left: Serve's shutdown kills its proxies at once, so the runner
   shuts it down only then (``Drain``).

Only light imports here: this module is loaded into every proxy process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deployments import route_path
from serve_app.errors import error_body, summary

logger = logging.getLogger("ray.serve")

SERVE_OWN_PATHS = frozenset({"/-/healthz", "/-/routes"})  # the proxy answers these itself, exactly these
CLIENT_OVERRIDES = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")
# The proxy's plain-text answers, as our codes (429: an ingress whose backpressure_config asks for it).
PROXY_REFUSALS = {408: "request_timeout", 429: "overloaded", 503: "overloaded"}
RETRY_AFTER_S = "2"  # a replacement ingress replica starts in seconds
NO_INGRESS_RETRY_AFTER_S = "5"  # a lost node's replicas come back when a node has room for them: seconds at best
# How Serve's proxy words its own 404 (no application has the path's route); an application's plain-text 404 is
# its own answer, passed as it is.
SERVE_NOT_FOUND = re.compile(r"Path '.*' not found\. Ping http://\.\.\./-/routes for available routes\.", re.S)
BUILDING = frozenset({"NOT_STARTED", "DEPLOYING"})  # an application's statuses before it has a route
PROXY_STARTUP_S = 60.0  # a proxy that has seen no application this long after it started is not starting any more
WATCH_REFRESH_S = 1.0
BLIND_LOOK_S = 2.0
WATCH_STALE_S = 10.0  # an older view (the controller stopped answering) is not acted on: requests pass as in Serve
WAITING_CHECK_S = 0.5  # how often a request the proxy holds looks whether its application lost its ingress
# A stopping service's runner (deployments/run.py) creates this named actor in Serve's namespace; its being there is
# the signal, and each proxy's guard reports its requests in flight to it.
DRAIN_BOARD = "bgserve_drain"
SERVE_NAMESPACE = "serve"  # Serve's actors' namespace (ray.serve._private.constants.SERVE_NAMESPACE)
PROXY_ACTOR_PREFIX = "SERVE_PROXY_ACTOR"  # Serve names each proxy actor SERVE_PROXY_ACTOR-<node id>
DRAIN_LOOK_S = 1.0  # how often a guard looks for the board: a stop starts draining within a second
DRAIN_REPORT_S = 0.25
# Replica states that hold a loaded model and take requests: RUNNING, and UPDATING (a live user_config change,
# i.e. new batching) and RECOVERING (a restarted controller re-attaching), which return to RUNNING as they are.
# Defined here, the light module loaded into every proxy; deployments/readiness.py counts tiers by it too.
SERVING_STATES = frozenset({"RUNNING", "UPDATING", "RECOVERING"})


@dataclass(frozen=True)
class Unserved:
    """An application whose ingress deployment has no replica that can take a request."""

    app: str
    status: str  # the ingress deployment's status, e.g. UNHEALTHY or UPDATING
    message: str
    draining: bool = False  # a replica is stopping (an update stops the old one gracefully): it may finish requests


def unserved_routes(details: dict[str, Any]) -> dict[str, Unserved]:
    """Route prefix → application, for each application (in Serve's instance details) whose ingress has no serving
    replica. An ingress that may scale to zero is left out: a request is what scales it up again."""
    unserved = {}
    for app_name, app in details.get("applications", {}).items():
        route = app.get("route_prefix")
        deployments = app.get("deployments", {})
        ingress_name = (app.get("deployment_topology") or {}).get("ingress_deployment")
        ingress = deployments.get(ingress_name) if ingress_name else None
        if route is None or ingress is None:
            continue
        autoscaling = (ingress.get("deployment_config") or {}).get("autoscaling_config") or {}
        if autoscaling and autoscaling.get("min_replicas", 1) == 0:
            continue
        states = [replica.get("state") for replica in ingress.get("replicas", [])]
        if not any(state in SERVING_STATES for state in states):
            status = ingress.get("status", "")
            message = summary(str(ingress.get("message", "")))  # a client's answer: no traceback
            unserved[route] = Unserved(app_name, str(getattr(status, "value", status)), message, "STOPPING" in states)
    return unserved


def route_of(path: str, routes: Any) -> str | None:
    """The route prefix Serve's proxy matches ``path`` to: the longest one that equals it or is a folder of it."""
    matches = [r for r in routes if r == "/" or path == r or path.startswith(r.rstrip("/") + "/")]
    return max(matches, key=len, default=None)


def read_serve_details() -> dict[str, Any]:
    # The controller's instance details: what `serve status` and serve.status() read. Only they name each
    # application's route prefix and ingress deployment.
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():  # not inside a proxy (it would start or join a Ray): nothing to watch
        return {}
    client = _get_global_client(raise_if_no_controller_running=False)
    return client.get_serve_details() if client is not None else {}


class IngressWatch:
    """Which applications have no serving ingress replica, as a snapshot a daemon thread refreshes every second
    from Serve's controller. Requests only read it: a slow or stopped controller delays the next look, never a
    request, and a view older than ``WATCH_STALE_S`` is ignored (requests pass, as without the guard)."""

    def __init__(
        self,
        read: Callable[[], dict[str, Any]] = read_serve_details,
        refresh_s: float = WATCH_REFRESH_S,
        refreshing: bool = True,
    ):
        self.read = read
        self.refreshing = refreshing
        self.refresh_s = refresh_s
        self.apps: dict[str, str] = {}  # route prefix -> application
        self.unserved: dict[str, Unserved] = {}
        self.building = False  # an application is deploying and has no route yet
        self.taken_at = float("-inf")
        self.created_at = time.monotonic()  # with the proxy: Serve makes the guard as it starts the proxy
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the refresh thread once (on the first request: only a proxy's process needs one)."""
        with self._lock:
            if self._started or not self.refreshing:
                return
            self._started = True
        threading.Thread(target=self._refresh_forever, name="ingress-watch", daemon=True).start()

    def refresh(self) -> None:
        details = self.read()
        apps = {
            app["route_prefix"]: name
            for name, app in details.get("applications", {}).items()
            if app.get("route_prefix") is not None
        }
        # Serve gives a config's application its route only once its build task is done, which may take minutes.
        building = any(
            app.get("route_prefix") is None and str(getattr(app.get("status"), "value", app.get("status"))) in BUILDING
            for app in details.get("applications", {}).values()
        )
        self.apps, self.building = apps, building
        self.unserved, self.taken_at = unserved_routes(details), time.monotonic()

    def _refresh_forever(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception as exc:  # the controller is restarting or busy: the last view stands until stale
                logger.debug("the proxy guard could not read Serve's status: %s", exc)
            time.sleep(self.refresh_s)

    def unserved_for(self, path: str) -> Unserved | None:
        """The application behind ``path`` if it has no serving ingress replica now; None if it has, or if unknown."""
        if time.monotonic() - self.taken_at > WATCH_STALE_S:
            return None
        route = route_of(path, self.apps)
        return self.unserved.get(route) if route is not None else None

    async def look_if_blind(self) -> None:
        """Take a first view now if there is none (the refresh thread starts on the first request), waiting at most
        ``BLIND_LOOK_S``: a proxy's 404 is answered by what Serve says, not by a view not yet taken."""
        if self.taken_at != float("-inf"):
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self.refresh), BLIND_LOOK_S)
        except Exception as exc:  # a controller that does not answer: decided without a view
            logger.debug("the proxy guard could not read Serve's status: %s", exc)

    def may_come(self, path: str) -> bool:
        """Whether an application may soon serve ``path``: in the proxy's first ``PROXY_STARTUP_S``, none is known
        or seen yet (Serve is starting); or, by a fresh view, an application is still being built (it has no route
        yet), or the path is under a known application's route that the proxy has not learned yet."""
        starting = time.monotonic() - self.created_at < PROXY_STARTUP_S
        if time.monotonic() - self.taken_at > WATCH_STALE_S:  # no view, or an old one
            return starting
        if route_of(path, self.apps) is not None or self.building:
            return True
        return starting and not self.apps

    def app_for(self, path: str) -> str:
        """The application Serve routes ``path`` to, as last seen ("" if none is known)."""
        route = route_of(path, self.apps)
        return self.apps.get(route, "") if route is not None else ""


def find_drain_board() -> Any:
    """The drain board of a service that is stopping; None while it runs (or outside a proxy: no Ray here)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        return ray.get_actor(DRAIN_BOARD, namespace=SERVE_NAMESPACE)
    except ValueError:  # no such actor: the service is not stopping
        return None


def in_a_proxy() -> bool:
    import ray

    try:
        return (ray.get_runtime_context().get_actor_name() or "").startswith(PROXY_ACTOR_PREFIX)
    except Exception:  # no actor here (a driver)
        return False


def current_node_id() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


class Drain:
    """This proxy's HTTP requests in flight, and whether the service is stopping. A daemon thread looks for the
    drain board every second; once it is there, new requests are refused (``enter`` is False) and the count goes
    to the board until the runner, which sees every proxy's, has seen them all reach 0."""

    def __init__(
        self,
        find: Callable[[], Any] = find_drain_board,
        node_id: Callable[[], str] = current_node_id,
        look_s: float = DRAIN_LOOK_S,
        report_s: float = DRAIN_REPORT_S,
    ) -> None:
        self.find, self.node_id, self.look_s, self.report_s = find, node_id, look_s, report_s
        self.in_flight = 0  # changed only on the proxy's event loop; the thread reads it
        self.draining = False
        self._started = False
        self._lock = threading.Lock()

    def enter(self) -> bool:
        """Count a request in; False (not counted) once the service is stopping. It counts before it reads the flag,
        and the thread sets the flag before it reads the count: a request is either in a count the board gets or
        refused, never neither."""
        self.in_flight += 1
        if self.draining:
            self.in_flight -= 1
            return False
        return True

    def leave(self) -> None:
        self.in_flight -= 1

    def start(self) -> bool:
        """Start the thread once, in a proxy actor (Serve builds the guard as it starts the proxy). Not elsewhere:
        Serve's direct ingress (RAY_SERVE_ENABLE_DIRECT_INGRESS) builds it in ingress replicas too, whose 0 under
        the same node id would hide the proxy's count."""
        import ray

        with self._lock:
            if self._started or not ray.is_initialized() or not in_a_proxy():
                return False
            self._started = True
        threading.Thread(target=self.watch, name="drain-watch", daemon=True).start()
        return True

    def watch(self) -> None:
        board = None
        while board is None:
            try:
                board = self.find()
            except Exception as exc:  # the GCS is busy or restarting: look again
                logger.debug("the proxy guard could not look for the drain board: %s", exc)
            if board is None:
                time.sleep(self.look_s)
        self.draining = True  # before the count is read (see enter)
        logger.warning("the service is stopping: new requests get 503; %d in flight here", self.in_flight)
        node = self.node_id()
        while True:
            try:
                board.report.remote(node, self.in_flight)
            except Exception as exc:  # the runner has gone: Serve is shutting down
                logger.debug("could not report to the drain board: %s", exc)
            time.sleep(self.report_s)


class Refusals:
    """Counts the answers the guard gives itself (``ray_bgserve_proxy_refusals_total{application, reason}``): no
    ingress replica sees those requests, and Serve's proxy counts only what its own app answers, so neither
    ``ray_bgserve_requests_total`` nor ``ray_serve_num_http_requests_total`` has them. Created on first use, in
    the proxy's process (where Ray is up); counting never fails a request."""

    def __init__(self) -> None:
        self.counter: Any = None

    def count(self, application: str, reason: str) -> None:
        try:
            if self.counter is None:
                from ray.util.metrics import Counter

                self.counter = Counter(
                    "bgserve_proxy_refusals",
                    description="Requests the proxy guard answered itself (503 ingress_unavailable or "
                    "shutting_down), by application and reason: no_ingress (none serving: answered at once), "
                    "ingress_lost (lost while the request waited), replica_died (the replica holding it died), "
                    "shutting_down (the service is stopping).",
                    tag_keys=("application", "reason"),
                )
            self.counter.inc(tags={"application": application, "reason": reason})
        except Exception as exc:
            logger.debug("could not count a refusal: %s", exc)


def not_found_messages(watch: IngressWatch, path: str, text: str) -> list[Message]:
    """For the proxy's plain-text 404: the service's JSON 404, or a 503 to send again while the application that
    will serve ``path`` is starting (``serve run``'s first seconds answered every path 404, and clients gave up)."""
    if watch.may_come(path):
        return json_messages(
            503,
            "ingress_unavailable",
            "no application serves this path yet (Serve is starting or deploying it); nothing was done for this "
            "request: send it again",
            [(b"retry-after", NO_INGRESS_RETRY_AFTER_S.encode())],
        )
    return json_messages(404, "not_found", text, [])


def no_ingress_messages(unserved: Unserved) -> list[Message]:
    detail = f" ({unserved.status}: {unserved.message})" if unserved.message else f" ({unserved.status})"
    return json_messages(
        503,
        "ingress_unavailable",
        f"application {unserved.app!r} has no running ingress replica{detail}; nothing was done for this request: "
        "send it again",
        [(b"retry-after", NO_INGRESS_RETRY_AFTER_S.encode())],
    )


def stopping_messages() -> list[Message]:
    return json_messages(
        503,
        "shutting_down",
        "the service is stopping; nothing was done for this request: send it again (to another instance, or once "
        "this one is back)",
        [(b"retry-after", NO_INGRESS_RETRY_AFTER_S.encode()), (b"connection", b"close")],
    )


def middlewares() -> list[Middleware]:
    """What ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names: Serve calls it once per proxy."""
    drain = Drain()
    drain.start()  # a request is not needed to learn of a stop: a proxy that had none must still report its 0
    return [Middleware(ProxyGuard, watch=IngressWatch(), drain=drain)]


def json_messages(status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    body = json.dumps(error_body(code, message)).encode()
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    start_headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return [
        {"type": "http.response.start", "status": status, "headers": start_headers},
        {"type": "http.response.body", "body": body},
    ]


class ProxyGuard:
    def __init__(
        self,
        app: ASGIApp,
        watch: IngressWatch | None = None,
        refusals: Refusals | None = None,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        # Knowing nothing, it lets every request pass (the proxy's own 404 in its first minute excepted).
        self.watch = watch or IngressWatch(refreshing=False)
        self.refusals = refusals or Refusals()
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Serve's own endpoints (/-/healthz, /-/routes) answer for the proxy, not for an app: KubeRay's readiness
        # probe reads /-/healthz, and our 503 for an app without an ingress would take every pod out of service.
        if scope["type"] != "http" or route_path(scope) in SERVE_OWN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.drain.enter():
            self.refusals.count(self.watch.app_for(scope["path"]), "shutting_down")
            for part in stopping_messages():
                await send(part)
            return
        try:
            await self._guard(scope, receive, send)
        finally:
            self.drain.leave()

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.watch.start()  # on the first request: by then Ray is up in the proxy's process
        unserved = self.watch.unserved_for(scope["path"])
        if unserved is not None:
            logger.warning(
                "%s %r: %r has no running ingress replica; 503", scope["method"], scope["path"], unserved.app
            )
            self.refusals.count(unserved.app, "no_ingress")
            for part in no_ingress_messages(unserved):
                await send(part)
            return
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() not in CLIENT_OVERRIDES]}
        started = disconnected = False
        refusal: dict[str, Any] | None = None  # a plain-text refusal of the proxy's, held to be sent as JSON

        async def guarded_send(message: Message) -> None:
            nonlocal started, refusal
            if message["type"] == "http.response.start":
                started = True
                headers = message.get("headers", [])
                plain = any(k.lower() == b"content-type" and v.startswith(b"text/plain") for k, v in headers)
                if message["status"] == 404 and plain:  # the proxy's own, if its words say so: held to see
                    refusal = {"status": 404, "headers": headers, "text": b"", "start": message}
                    return
                if message["status"] in PROXY_REFUSALS and plain:
                    if message["status"] != 408 and not any(k.lower() == b"retry-after" for k, _ in headers):
                        # a backpressure_config without retry_after_s, or Serve's own 503 for an unavailable app
                        headers = [*headers, (b"retry-after", RETRY_AFTER_S.encode())]
                    refusal = {"status": message["status"], "headers": headers, "text": b""}
                    return
            elif message["type"] == "http.response.body" and refusal is not None:
                refusal["text"] += message.get("body", b"")
                if not message.get("more_body", False):
                    status = refusal["status"]
                    text = refusal["text"].decode(errors="replace").strip()
                    if status == 404 and not SERVE_NOT_FOUND.fullmatch(text):  # an application's: as it was
                        answer = [refusal["start"], {"type": "http.response.body", "body": refusal["text"]}]
                    elif status == 404:
                        await self.watch.look_if_blind()
                        answer = not_found_messages(self.watch, scope["path"], text)
                        if answer[0]["status"] == 503:
                            self.refusals.count(self.watch.app_for(scope["path"]), "no_ingress")
                    else:
                        answer = json_messages(status, PROXY_REFUSALS[status], text, refusal["headers"])
                    for part in answer:
                        await send(part)
                return
            if message["type"] == "http.response.body" and message.get("body") and not message.get("more_body"):
                # The last part in two: uvicorn writes a part without waiting and waits only before the next one
                # while its buffer is full, so the empty end returns once a slow client has taken all but the
                # last few kB; only then is the request counted out of the drain (Serve's shutdown would cut the
                # rest, megabytes of a large image, when the proxy is killed).
                await send({**message, "more_body": True})
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        async def watched_receive() -> Message:
            nonlocal disconnected
            message = await receive()
            disconnected = disconnected or message["type"] == "http.disconnect"
            return message

        try:
            lost = await self._forward(scope, watched_receive, guarded_send, lambda: started)
        except Exception:
            if started:
                raise
            logger.warning("the proxy failed a request before answering it; answering 503", exc_info=True)
            lost = None
        if lost is not None:
            logger.warning("%s %r: %r lost its last ingress replica; 503", scope["method"], scope["path"], lost.app)
            self.refusals.count(lost.app, "ingress_lost")
            for part in no_ingress_messages(lost):
                await send(part)
            return
        if not started and not disconnected:
            # The proxy gives up without an answer when the replica it sent the request to died (or on an error
            # of its own). A client that has gone needs no answer: the proxy cancelled its request.
            logger.warning("%s %r: the ingress replica died before answering; 503", scope["method"], scope["path"])
            self.refusals.count(self.watch.app_for(scope["path"]), "replica_died")
            for part in json_messages(
                503,
                "ingress_unavailable",
                "the service lost this request (an ingress replica stopped); nothing was done for it: send it again",
                [(b"retry-after", RETRY_AFTER_S.encode())],
            ):
                await send(part)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, started: Callable[[], bool]
    ) -> Unserved | None:
        """Pass the request to Serve's proxy. If its application loses its last ingress replica before an answer has
        started, stop waiting (Serve would hold the request until a replica appears) and return that application."""
        proxied = asyncio.ensure_future(self.app(scope, receive, send))
        try:
            while True:
                done, _ = await asyncio.wait({proxied}, timeout=WAITING_CHECK_S)
                if done:
                    proxied.result()  # what the proxy raised, raised here
                    return None
                lost = None if started() else self.watch.unserved_for(scope["path"])
                if lost is not None and not lost.draining:  # a draining replica may be working on this one
                    proxied.cancel()  # Serve's proxy cancels the call it holds, as for a client that left
                    await asyncio.wait({proxied})
                    return lost
        finally:
            proxied.cancel()  # only if still running: we were cancelled ourselves (the client left)


# How Ray is told to load the guard into its proxies: set in the environment Ray starts with.
PROXY_CALLBACK_VARIABLE = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = f"{__name__}:middlewares"
