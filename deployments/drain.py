"""Draining a stopping service: new requests are refused, and the ones already taken are answered, before Serve
shuts down. Serve's own shutdown kills its HTTP proxies at once, and every request in flight with them (its client
gets a reset connection, not an answer); ``deployments/run.py`` calls ``drain`` first.

The runner creates the drain board, a named actor in Serve's namespace. The proxy guard in each proxy
(``proxy_guard.Drain``) looks for it every second: once it is there, new requests get 503 ``shutting_down``, and
the guard reports its requests in flight to the board until the runner has seen every proxy's reach 0."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from deployments import INGRESS_DEPLOYMENT
from deployments.proxy_guard import DRAIN_BOARD, SERVE_NAMESPACE

DEFAULT_DRAIN_S = 30.0  # when the config's ingress says nothing (Serve's default graceful_shutdown_timeout_s is 20)
SILENT_PROXY_S = 10.0  # a proxy not heard from by then has no guard: it is not waited for
POLL_S = 0.25
PROGRESS_S = 5.0


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
    """How long the requests taken may need: the longest ingress ``graceful_shutdown_timeout_s`` (the builder sets
    the longest tier deadline plus 10 s, the time Serve gives a stopping ingress replica for the same requests)."""
    found = [
        app["deployments"][INGRESS_DEPLOYMENT].get("deployment_config", {}).get("graceful_shutdown_timeout_s")
        for app in details.get("applications", {}).values()
        if INGRESS_DEPLOYMENT in app.get("deployments", {})
    ]
    timeouts = [float(t) for t in found if t is not None]
    return max(timeouts, default=DEFAULT_DRAIN_S)


def left_in_flight(reports: Mapping[str, int], proxies: set[str], waited_s: float) -> int | None:
    """Requests still in flight by the proxies' reports, or None while a proxy has not reported yet (a guard finds
    the board within a second; one not heard from in ``SILENT_PROXY_S`` has none, and is not waited for)."""
    if waited_s < SILENT_PROXY_S and not proxies <= reports.keys():
        return None
    return sum(reports.values())


def drain(
    timeout_s: float | None = None,
    stop_now: Callable[[], bool] = lambda: False,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> bool:
    """Drain the Serve instance this process is connected to; True once nothing is in flight, False when
    ``timeout_s`` (default: ``default_drain_s``) passed or ``stop_now()`` said so first."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    details = client.get_serve_details() if client is not None else {}
    proxies = proxy_nodes(details)
    if not proxies:
        return True
    timeout_s = default_drain_s(details) if timeout_s is None else timeout_s
    say(f"Stopping: new requests get 503; waiting up to {timeout_s:g} s for those in flight (Ctrl-C again: stop now)")
    board = DrainBoard.options(name=DRAIN_BOARD, namespace=SERVE_NAMESPACE).remote()  # type: ignore[attr-defined]

    def read() -> dict[str, int]:
        try:
            return dict(ray.get(board.reports.remote(), timeout=5))
        except ray.exceptions.GetTimeoutError:  # the board is still starting
            return {}

    return wait_for_proxies(read, proxies, timeout_s, stop_now, say)


def wait_for_proxies(
    read: Callable[[], Mapping[str, int]],
    proxies: set[str],
    timeout_s: float,
    stop_now: Callable[[], bool],
    say: Callable[[str], None],
    poll_s: float = POLL_S,
) -> bool:
    """Poll the proxies' reports (``read``) until none has a request in flight (True), or until ``timeout_s`` or
    ``stop_now()`` (False), saying how many are left every ``PROGRESS_S``."""
    started = said_at = time.monotonic()
    while True:
        reports = read()
        waited = time.monotonic() - started
        left = left_in_flight(reports, proxies, waited)
        if left == 0:
            silent = sorted(proxies - reports.keys())
            if silent:
                say(f"No proxy guard answered on node(s) {', '.join(silent)}: their requests were not waited for")
            say(f"Drained in {waited:.1f} s")
            return True
        if waited >= timeout_s or stop_now():
            what = "requests in flight" if left is None else f"{left} request(s) in flight"
            say(f"Stopping without waiting further ({waited:.0f} s): {what} will get no answer")
            return False
        if time.monotonic() - said_at >= PROGRESS_S:
            say(f"  {'requests' if left is None else left} still in flight after {waited:.0f} s")
            said_at = time.monotonic()
        time.sleep(poll_s)
