import asyncio
import contextvars
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from deployments.admission import Admission, to_the_end
from deployments.preflight import check
from serve_app.errors import OverloadedError


def test_admission_refuses_the_request_over_the_limit_and_frees_slots() -> None:
    admission = Admission(limit=2)
    with admission.slot(), admission.slot():
        with pytest.raises(OverloadedError, match="2 image requests in flight"), admission.slot():
            pass
        assert admission.in_flight == 2
    assert admission.in_flight == 0
    with pytest.raises(ValueError), admission.slot():  # a failing request gives its slot back too
        raise ValueError("decode failed")
    assert admission.in_flight == 0


def test_decoded_pixels_over_the_budget_are_refused_but_one_image_always_fits() -> None:
    """A request holds its decoded image from decode to answer: within the request limit, dozens of large ones
    queued behind a slow model would fill the replica's memory (76 of 49 MP on configs/cpu.yaml: 11 GB)."""
    admission = Admission(limit=100, max_pixels_held=10_000_000)
    with admission.holding(6_000_000):
        over = r"holds 6\.0 megapixels .* this one has 5\.0, over its 10 "
        with pytest.raises(OverloadedError, match=over), admission.holding(5_000_000):
            pass
        with admission.holding(4_000_000):
            assert admission.pixels_held == 10_000_000
    assert admission.pixels_held == 0
    with admission.holding(40_000_000):  # larger than the budget, but alone: served
        assert admission.pixels_held == 40_000_000
    with pytest.raises(ValueError), admission.holding(1):  # a failing request lets go of its pixels too
        raise ValueError("the model failed")
    assert admission.pixels_held == 0


def test_preflight_names_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as Serve's proxy binds it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "mine.yaml"
        config.write_text(yaml.safe_dump({"http_options": {"host": "127.0.0.1", "port": port}}))
        problem = check(config, yaml.safe_load(config.read_text()))
        assert problem is not None and f"port {port}" in problem and "http_options.port" in problem
        assert "RAY_AUTH_MODE=token" in problem and "cpu.env" not in problem
        cpu_config = tmp_path / "cpu.yaml"  # a copy of it would lose configs/cpu.env's settings: the hint says so
        cpu_config.write_text(config.read_text())
        assert ". configs/cpu.env" in (check(cpu_config, yaml.safe_load(cpu_config.read_text())) or "")
    assert check(config, yaml.safe_load(config.read_text())) is None  # free again


def test_a_cancelled_request_holds_its_admission_until_its_running_cpu_work_ends() -> None:
    """A pool's thread cannot be stopped: a request cancelled mid-decode (its client gone, its deadline passed)
    gave back its slot and pixels while the decode ran on, and the next requests were let in on top of it."""
    admission = Admission(limit=4, max_pixels_held=100)
    pool = ThreadPoolExecutor(1)
    running, release = threading.Event(), threading.Event()

    def decode(name: str) -> str:
        running.set()
        release.wait(10)
        return name

    async def request() -> str:
        with admission.slot(), admission.holding(60):
            return await to_the_end(pool, decode, "done")

    async def scenario() -> None:
        task = asyncio.create_task(request())
        await asyncio.to_thread(running.wait, 10)
        task.cancel()
        await asyncio.sleep(0.1)
        assert not task.done()  # waits for its decode
        assert (admission.in_flight, admission.pixels_held) == (1, 60)
        with pytest.raises(OverloadedError):  # so the next large one is still counted against it
            admission.holding(60).__enter__()
        task.cancel()  # cancelled again: it still waits
        await asyncio.sleep(0.1)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (admission.in_flight, admission.pixels_held) == (0, 0)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()


def test_cpu_work_not_yet_started_is_dropped_with_its_cancelled_request() -> None:
    """As run_in_executor dropped it: the wait for running work must not keep queued work alive too."""
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
    pool = ThreadPoolExecutor(1)
    release = threading.Event()
    ran: list[str] = []

    async def scenario() -> None:
        first = asyncio.create_task(to_the_end(pool, release.wait, 10))
        queued = asyncio.create_task(to_the_end(pool, ran.append, "queued"))
        await asyncio.sleep(0.1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued  # at once: its work had not started
        release.set()
        assert await first is True
        request_id.set("abc")  # Serve's request id, which log lines read from the context
        assert await to_the_end(pool, request_id.get) == "abc"

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert ran == []
