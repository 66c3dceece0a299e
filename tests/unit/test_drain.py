"""Draining a stopping service (deployments/drain.py): what the runner reads from Serve's details and the proxies'
reports. tests/e2e/test_stop.py drains a real service."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from deployments import drain as drain_module
from deployments.drain import (
    DEFAULT_DRAIN_S,
    SILENT_PROXY_S,
    default_drain_s,
    left_in_flight,
    proxy_nodes,
    wait_for_proxies,
)
from deployments.run import StopSignals
from deployments.run import main as run_main


def details(*ingress_timeouts: float | None) -> dict[str, Any]:
    """The part of Serve's instance details the drain reads: its proxies and each application's ingress."""
    apps = {}
    for i, timeout in enumerate(ingress_timeouts):
        config = {} if timeout is None else {"graceful_shutdown_timeout_s": timeout}
        apps[f"app{i}"] = {
            "deployments": {
                "ingress": {"deployment_config": config},
                "fast": {"deployment_config": {"graceful_shutdown_timeout_s": 999}},
            }
        }
    return {
        "proxies": {"head": {"status": "HEALTHY"}, "worker": {"status": "DRAINING"}, "gone": {"status": "DRAINED"}},
        "applications": apps,
    }


def test_the_drain_waits_as_long_as_a_request_may_live() -> None:
    # The proxy answers 408 past request_timeout_s: no request outlives it.
    assert default_drain_s({**details(70), "http_options": {"request_timeout_s": 600}}) == 600
    # Without it, the longest ingress's; the tiers' own timeouts are theirs, not the requests'.
    assert default_drain_s(details(70, 40)) == 70
    assert default_drain_s(details(None)) == DEFAULT_DRAIN_S == default_drain_s({})


def test_every_proxy_that_takes_requests_is_waited_for() -> None:
    assert proxy_nodes(details()) == {"head", "worker"}


def test_requests_are_left_in_flight_until_every_proxy_has_reported_none() -> None:
    proxies = {"head", "worker"}
    assert left_in_flight({"head": 0}, proxies, heard_for_s=1) is None  # the worker's guard has not answered yet
    assert left_in_flight({"head": 0, "worker": 2}, proxies, heard_for_s=1) == 2
    assert left_in_flight({"head": 0, "worker": 0}, proxies, heard_for_s=1) == 0
    # A proxy that never answers has no guard (started without it): not waited for past SILENT_PROXY_S.
    assert left_in_flight({"head": 0}, proxies, heard_for_s=SILENT_PROXY_S) == 0
    assert left_in_flight({"head": 3}, proxies, heard_for_s=SILENT_PROXY_S) == 3


def test_the_wait_ends_when_every_proxy_has_none_in_flight() -> None:
    reports = iter([{}, {"head": 2}, {"head": 1}, {"head": 0}])
    said: list[str] = []
    assert wait_for_proxies(lambda: next(reports), {"head"}, 10, lambda: False, said.append, poll_s=0)
    assert said[-1].startswith("Drained in")


def test_a_second_ctrl_c_or_the_timeout_stops_the_wait_and_says_what_is_lost() -> None:
    said: list[str] = []
    asked = iter([False, False, True])
    assert not wait_for_proxies(lambda: {"head": 1}, {"head"}, 10, lambda: next(asked), said.append, poll_s=0)
    assert said == ["Stopping without waiting further (0 s): 1 request(s) in flight will get no answer"]
    assert not wait_for_proxies(lambda: {"head": 1}, {"head"}, 0.05, lambda: False, said.append, poll_s=0.01)


def test_a_board_that_does_not_answer_is_never_read_as_none_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A look at the board that timed out counted as no report at all, and after SILENT_PROXY_S as 0: the drain
    ended with requests in flight. The last reports stand, and silence alone never ends the wait."""
    monkeypatch.setattr(drain_module, "SILENT_PROXY_S", 0.05)
    said: list[str] = []
    looks = iter([{"head": 1}, None, None, None])
    assert not wait_for_proxies(lambda: next(looks, None), {"head"}, 0.2, lambda: False, said.append, poll_s=0.01)
    assert said[-1].endswith("1 request(s) in flight will get no answer")
    assert not wait_for_proxies(lambda: None, {"head"}, 0.2, lambda: False, said.append, poll_s=0.01)


def test_the_silent_proxy_clock_starts_when_the_board_first_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A board slow to start (a busy box) is not a proxy without a guard: the wait for the proxies' reports counts
    from the board's first answer."""
    monkeypatch.setattr(drain_module, "SILENT_PROXY_S", 0.2)
    looks = iter([None] * 30 + [{"head": 0}] * 3)  # ~0.3 s of no answer, then the head alone reports
    said: list[str] = []
    assert not wait_for_proxies(
        lambda: next(looks, {"head": 0}), {"head", "worker"}, 0.4, lambda: False, said.append, poll_s=0.01
    )
    assert wait_for_proxies(lambda: {"head": 0}, {"head", "worker"}, 5, lambda: False, said.append, poll_s=0.01)
    assert said[-2] == "No proxy guard answered on node(s) worker: their requests were not waited for"


def test_a_runner_option_that_would_keep_it_from_draining_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--blocking` or `--reload` would have `serve run` block in itself: the drain would never run."""
    for option in ("--blocking", "--reload"):
        with pytest.raises(SystemExit) as exited:
            run_main([option, "no/such/config.yaml"])  # were it let through, serve run fails at once: no Ray
        assert exited.value.code == 2 and f"{option} is not for the runner" in capsys.readouterr().err


def test_the_drain_answers_503_for_at_least_min_drain_s_for_a_load_balancer() -> None:
    said: list[str] = []
    started = time.monotonic()
    assert wait_for_proxies(lambda: {"head": 0}, {"head"}, 5, lambda: False, said.append, poll_s=0.01, min_drain_s=0.3)
    assert time.monotonic() - started >= 0.3


def test_stop_signals_ask_for_a_drain_then_cut_it_short_then_interrupt() -> None:
    """What deployments/run.py does with Ctrl-C and SIGTERM, with real signals to this process."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignals()
    try:
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        stop.wait()  # returns: a stop was asked
        assert not stop.again()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.again()
        stop.install()  # as the runner does once `serve run` returns: two came already, so the system's stay
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        with pytest.raises(KeyboardInterrupt):  # the third is Python's own Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
