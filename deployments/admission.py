"""Admission at the ingress: image requests in flight per replica are counted, and the one over the limit gets
503 at once, before its upload is read. Their decoded pixels are counted too: a request is held from its decode to
its answer (queued behind a slow model call, up to the tier's deadline), so a few dozen large images would fill
the replica's memory within the request limit; the one that would go over the pixel budget gets 503, counted from
its header before it is decoded.

Serve's ``max_ongoing_requests`` caps the ingress as a whole, whatever the route; with it alone, slow uploads
that fill the ingress leave ``/healthz`` waiting in the proxy. So the ingress's Serve cap keeps room above this
limit (``CONTROL_HEADROOM`` in ``serve_app/schemas.py``) that only the light routes can use."""

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from serve_app.errors import OverloadedError

P = ParamSpec("P")
R = TypeVar("R")


class Admission:
    def __init__(self, limit: int, max_pixels_held: int | None = None) -> None:
        self.limit = limit
        self.max_pixels_held = max_pixels_held
        self.in_flight = 0  # touched only on the replica's event loop: no lock needed
        self.pixels_held = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.in_flight >= self.limit:
            raise OverloadedError(
                f"this ingress replica has {self.in_flight} image requests in flight, its limit; retry shortly"
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    @contextmanager
    def holding(self, pixels: int) -> Iterator[None]:
        """Holds ``pixels`` of decoded images until the answer is made. Over the budget: 503, unless nothing else is
        held (one image within max_image_pixels always gets through)."""
        limit = self.max_pixels_held
        if limit is not None and self.pixels_held and self.pixels_held + pixels > limit:
            raise OverloadedError(
                f"this ingress replica holds {self.pixels_held / 1e6:.1f} megapixels of decoded images and this one "
                f"has {pixels / 1e6:.1f}, over its {limit / 1e6:g} (ingress.max_decoded_megapixels); retry shortly"
            )
        self.pixels_held += pixels
        try:
            yield
        finally:
            self.pixels_held -= pixels


async def to_the_end(pool: Executor, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run CPU-bound work on ``pool``, off the event loop, in the caller's context (Serve's request id in log
    lines), as asyncio.to_thread would. If the caller is cancelled (its client left, a deadline passed), work not
    yet started is dropped, and work already running is waited for before the cancellation goes on: a pool's
    thread cannot be stopped, and without the wait the request would give back its slot and pixel budget while its
    decode or encode still ran and held its memory, so admission would let in more than the replica carries."""
    job = pool.submit(functools.partial(contextvars.copy_context().run, work, *args, **kwargs))
    done = asyncio.wrap_future(job)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if not job.cancel():
            while not done.done():  # a second cancellation does not cut the wait short either
                try:
                    await asyncio.wait([done])
                except asyncio.CancelledError:
                    continue
        raise
