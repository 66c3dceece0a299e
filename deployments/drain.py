"""Draining a stopping service: new requests are refused, and the ones already taken are answered, before Serve
shuts down. Serve's own shutdown kills its HTTP proxies at once, and every request in flight with them (its client
gets a reset connection, not an answer); ``deployments/run.py`` calls ``drain`` first.

The runner creates the drain board, a named actor in Serve's namespace. The proxy guard in each proxy
(``proxy_guard.Drain``) looks for it every second: once it is there, new requests get 503 ``shutting_down``, and
the guard reports its requests in flight to the board until the runner has seen every proxy's reach 0."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from deployments import INGRESS_DEPLOYMENT
from deployments.proxy_guard import DRAIN_BOARD, SERVE_NAMESPACE

DEFAULT_DRAIN_S = 30.0  # when the config bounds nothing (Serve's default graceful_shutdown_timeout_s is 20)
SILENT_PROXY_S = 10.0  # a proxy not heard from this long after the board first answered has no guard
POLL_S = 0.25
PROGRESS_S = 5.0
DETAILS_TIMEOUT_S = 10.0
# After the last request is counted out, the proxy may still hold the end of its answer (up to asyncio's low-water
# mark, 16 KiB, for a client that reads slowly): a moment to write it before Serve kills the proxy.
FLUSH_S = 1.0


@ray.remote(num_cpus=0)  # no CPU: the replicas hold the box's, and the board must start while they run
class DrainBoard:
    """Each proxy's last count of requests in flight, by node id."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    def report(self, node_id: str, in_flight: int) -> None:
        self.in_flight[node_id] = in_flight

    def reports(self) -> dict[str, int]:
        return dict(self.in_flight)


def proxy_nodes(details: Mapping[str, Any]) -> set[str]:
    """The nodes whose proxy takes requests now, from Serve's instance details."""
    return {node for node, proxy in details.get("proxies", {}).items() if proxy.get("status") != "DRAINED"}


def default_drain_s(details: Mapping[str, Any]) -> float:
    """How long the requests taken may need: ``http_options.request_timeout_s`` where set (the proxy answers 408
    to a request whose answer has not started by then); else the longest ingress ``graceful_shutdown_timeout_s``
    (the builder sets the longest tier deadline plus 10 s), which leaves out a slow upload's own time. Neither
    covers a slow client's download of an answer begun in time: ``--drain-timeout-s`` for those."""
    request_timeout = (details.get("http_options") or {}).get("request_timeout_s")
    if request_timeout:
        return float(request_timeout)
    found = [
        app["deployments"][INGRESS_DEPLOYMENT].get("deployment_config", {}).get("graceful_shutdown_timeout_s")
        for app in details.get("applications", {}).values()
        if INGRESS_DEPLOYMENT in app.get("deployments", {})
    ]
    timeouts = [float(t) for t in found if t is not None]
    return max(timeouts, default=DEFAULT_DRAIN_S)


def left_in_flight(reports: Mapping[str, int], proxies: set[str], heard_for_s: float) -> int | None:
    """Requests still in flight by the proxies' reports, or None while a proxy has not reported yet. A guard finds
    the board within a second of its start; a proxy not heard from ``SILENT_PROXY_S`` after the board first
    answered (``heard_for_s``) has none, and is not waited for."""
    if heard_for_s < SILENT_PROXY_S and not proxies <= reports.keys():
        return None
    return sum(reports.values())


class BoardLost(Exception):
    """The drain board stopped answering for good (its actor died)."""


def drain(
    timeout_s: float | None = None,
    stop_now: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    min_drain_s: float = 0.0,
) -> bool:
    """Drain the Serve instance this process is connected to; True once nothing is in flight (and ``min_drain_s``
    has passed), False when ``timeout_s`` (default: ``default_drain_s``) passed, ``stop_now()`` said so first, or
    Serve or the board stopped answering."""
    details = read_details(stop_now)
    if details is None:
        say("Serve's controller did not answer: stopping without a drain")
        return False
    proxies = proxy_nodes(details)
    if not proxies:
        return True
    timeout_s = max(default_drain_s(details) if timeout_s is None else timeout_s, min_drain_s)
    say(f"Stopping: new requests get 503; waiting up to {timeout_s:g} s for those in flight (Ctrl-C again: stop now)")
    # get_if_exists: a board already there (a drain asked twice) is the same signal
    board = DrainBoard.options(name=DRAIN_BOARD, namespace=SERVE_NAMESPACE, get_if_exists=True).remote()  # type: ignore[attr-defined]

    def read() -> dict[str, int] | None:
        try:
            return dict(ray.get(board.reports.remote(), timeout=1))
        except ray.exceptions.GetTimeoutError:  # starting, or busy: this look is skipped, not read as "none"
            return None
        except ray.exceptions.RayActorError as exc:
            raise BoardLost(exc.__class__.__name__) from exc

    try:
        drained = wait_for_proxies(read, proxies, timeout_s, stop_now, say, min_drain_s=min_drain_s)
    except BoardLost as exc:
        say(f"The drain board stopped answering ({exc}): stopping without waiting further")
        return False
    if drained:
        time.sleep(FLUSH_S)
    return drained


def read_details(stop_now: Callable[[], bool]) -> dict[str, Any] | None:
    """Serve's instance details, or None if the controller does not answer within ``DETAILS_TIMEOUT_S`` (or a
    second Ctrl-C comes first): Serve's client waits on it without a limit, so it is asked from a daemon thread."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return {}
    answer: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: answer.append(dict(client.get_serve_details())), daemon=True)
    asking.start()
    deadline = time.monotonic() + DETAILS_TIMEOUT_S
    while asking.is_alive() and time.monotonic() < deadline and not stop_now():
        asking.join(POLL_S)
    return answer[0] if answer else None


def wait_for_proxies(
    read: Callable[[], Mapping[str, int] | None],
    proxies: set[str],
    timeout_s: float,
    stop_now: Callable[[], bool],
    say: Callable[[str], None],
    poll_s: float = POLL_S,
    min_drain_s: float = 0.0,
) -> bool:
    """Poll the proxies' reports (``read``; None: no answer this time) until none has a request in flight and
    ``min_drain_s`` has passed (True), or until ``timeout_s`` or ``stop_now()`` (False), saying how many are left
    every ``PROGRESS_S``. The last reports read stand while the board does not answer: silence is never "none"."""
    started = said_at = time.monotonic()
    reports: Mapping[str, int] = {}
    first_heard: float | None = None
    while True:
        read_now = read()
        now = time.monotonic()
        waited = now - started
        if read_now is not None:
            reports = read_now
            first_heard = now if first_heard is None else first_heard
        left = None if first_heard is None else left_in_flight(reports, proxies, now - first_heard)
        if left == 0 and waited >= min_drain_s:
            silent = sorted(proxies - reports.keys())
            if silent:
                say(f"No proxy guard answered on node(s) {', '.join(silent)}: their requests were not waited for")
            say(f"Drained in {waited:.1f} s")
            return True
        if waited >= timeout_s or stop_now():
            what = "requests in flight" if left is None else f"{left} request(s) in flight"
            say(f"Stopping without waiting further ({waited:.0f} s): {what} will get no answer")
            return False
        if now - said_at >= PROGRESS_S and left != 0:
            say(f"  {'requests' if left is None else left} still in flight after {waited:.0f} s")
            said_at = now
        time.sleep(poll_s)
