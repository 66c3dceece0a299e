"""Admission at the ingress: image requests in flight per replica are counted, and the one over the limit gets
503 at once, before its upload is read.

Serve's ``max_ongoing_requests`` caps the ingress as a whole, whatever the route; with it alone, slow uploads
that fill the ingress leave ``/healthz`` waiting in the proxy. So the ingress's Serve cap keeps room above this
limit (``CONTROL_HEADROOM`` in ``serve_app/schemas.py``) that only the light routes can use."""

from collections.abc import Iterator
from contextlib import contextmanager

from serve_app.errors import OverloadedError


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0  # touched only on the replica's event loop: no lock needed

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
