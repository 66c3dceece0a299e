"""`serve run` that stops without losing requests: ``python -m deployments.run CONFIG [serve run's options]``.

It is Serve's own `serve run` (its options, its config checks, its start on a fresh local Ray or the one running),
with one difference: on Ctrl-C or SIGTERM (``docker stop``, systemd, Kubernetes) `serve run` shuts Serve down at
once, and Serve kills its HTTP proxies first, so every request in flight is lost. This drains first
(``deployments/drain.py``): new requests get 503 ``shutting_down`` and the ones taken are answered, up to the
config's ``http_options.request_timeout_s`` (no request outlives it) or ``--drain-timeout-s``; then Serve shuts
down. A second Ctrl-C stops without waiting further (exit status 1, as for a drain that timed out); a third exits at
once.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from types import FrameType

from deployments.proxy_guard import PROXY_CALLBACK, PROXY_CALLBACK_VARIABLE


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM, counted rather than raised: the first asks for a drain, the second cuts it short,
    and from then on Ctrl-C is Python's own KeyboardInterrupt and SIGTERM ends the process at once."""

    def __init__(self) -> None:
        self.count = 0
        self.asked = threading.Event()

    def install(self) -> None:
        if self.again():  # two came already: the next one is the system's
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            return
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.asked.set()
        if self.again():
            self.install()

    def wait(self) -> None:
        while not self.asked.wait(1.0):  # a timeout, so that the handler runs promptly on the main thread
            pass

    def again(self) -> bool:
        return self.count >= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.run",
        description="`serve run CONFIG` that drains on Ctrl-C or SIGTERM: new requests get 503, those in flight "
        "are answered, then Serve shuts down. Any other option is serve run's (serve run --help).",
    )
    parser.add_argument(
        "--drain-timeout-s",
        type=float,
        default=None,
        help="the longest wait for requests in flight (default: http_options.request_timeout_s, which no request "
        "outlives; else the ingress's graceful_shutdown_timeout_s)",
    )
    parser.add_argument(
        "--min-drain-s",
        type=float,
        default=0.0,
        help="answer 503 for at least this long after the signal, even with nothing in flight: the time a load "
        "balancer needs to see /readyz fail and stop sending (its check interval times its unhealthy threshold)",
    )
    ours, serve_args = parser.parse_known_args(argv)
    for option in ("--blocking", "--reload", "-r"):
        if option in serve_args:  # serve run would block in itself, and the drain would never run
            parser.error(f"{option} is not for the runner: it blocks and drains itself")
    # The proxy guard (it drains the proxies, among its other duties) in the Ray started here: the one place that
    # sets it for scripts/serve.sh and the tests' services. A Ray already running has it from where it started.
    os.environ.setdefault(PROXY_CALLBACK_VARIABLE, PROXY_CALLBACK)
    stop = StopSignals()
    stop.install()  # a Ctrl-C while Serve starts is a stop asked, not a traceback

    import click
    from ray import serve
    from ray.serve.scripts import cli

    from deployments.drain import drain

    try:
        # Serve starts, and the config is submitted; Serve deploys it in the background, as in `serve run`.
        cli.main(["run", "--non-blocking", *serve_args], prog_name="serve", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    stop.install()  # again: ray.init, inside serve run, set its own SIGTERM handler (it exits the process)
    stop.wait()
    try:
        drained = drain(ours.drain_timeout_s, stop_now=stop.again, min_drain_s=ours.min_drain_s)
    finally:
        serve.shutdown()
    return 0 if drained else 1  # 1: requests in flight were cut off (the drain said how many)


if __name__ == "__main__":
    raise SystemExit(main())
