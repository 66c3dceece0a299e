"""A stand-in HTTP service for the client and CLI tests that need answers the real one gives only in faults (a
wrong key, a service that stays down, a slow one): a real server on a free port, answering each request as
``answer(method, path)`` says, counting requests and how many were in flight at once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Answer:
    status: int
    code: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    body: bytes | None = None  # else the service's JSON error body for ``code``...
    message: str | None = None  # ...with this message (default: "fake <code>")


@dataclass
class Seen:
    requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@contextmanager
def fake_service(answer: Callable[[str, str], Answer]) -> Iterator[tuple[str, Seen]]:
    seen = Seen()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle_one(self) -> None:
            length = int(self.headers.get("content-length", 0) or 0)
            self.rfile.read(length)
            with seen.lock:
                seen.requests += 1
                seen.in_flight += 1
                seen.most_in_flight = max(seen.most_in_flight, seen.in_flight)
            try:
                reply = answer(self.command, self.path)
                time.sleep(reply.delay_s)
                body = reply.body
                if body is None:
                    message = reply.message or f"fake {reply.code}"
                    body = json.dumps({"error": {"code": reply.code, "message": message}}).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "image/png" if reply.body is not None else "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            finally:
                with seen.lock:
                    seen.in_flight -= 1

        do_GET = do_POST = handle_one

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
