"""A repeat of the same image does no inference: the model's masks, kept in memory by the ingress (LRU, bounded in
bytes), keyed by what decides a mask (the upload's content hash, the tier, its runtime and its weights). Another
effect, colour, background or crop of a cached image is computed from the cached mask.

Each ingress replica has its own cache: a repeat that Serve routes to another replica is a miss there.

``etag`` names a response by everything that decides its bytes, so ``If-None-Match`` can be answered 304 before
any work is done."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from serve_app.schemas import MaskResult, RemoveParams

# What a client sends to have the model run even for an image the cache holds (load tests and benchmarks do).
RUN_THE_MODEL = {"Cache-Control": "no-cache"}


@dataclass(frozen=True)
class MaskKey:
    content: str  # sha256 of the upload's bytes
    tier: str
    runtime: str
    weights: str
    caller: str = ""  # with API keys on, a hash of the caller's: X-Cache: hit never says what another caller sent


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def etag(key: MaskKey, params: RemoveParams, background: bytes | None, served: str = "") -> str:
    """A weak ETag for the response to ``params`` on the image of ``key``, as ``served`` (the code's version and
    the tier's settings) makes it. Weak: the same picture, not always the same bytes (a mask made in a batch may
    differ from one made alone by 1e-5, which can move a level)."""
    output = params.model_dump(mode="json", exclude={"tier"})
    parts = [key.content, key.tier, key.runtime, key.weights, repr(sorted(output.items())), served]
    if background is not None:
        parts.append(content_hash(background))
    return 'W/"' + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, tag: str) -> bool:
    """Whether an If-None-Match header names ``tag``; weak tags compare by their value. ``*`` names no result: it
    asks whether the resource exists, which says nothing of whether the client holds this answer's bytes."""
    if not if_none_match:
        return False
    return tag.removeprefix("W/") in {t.strip().removeprefix("W/") for t in if_none_match.split(",")}


class MaskCache:
    """Least recently used masks, up to ``max_bytes`` of mask data (0: keep nothing). Thread-safe: the ingress's
    requests run on one event loop, but tests and tools may call it from threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[MaskKey, MaskResult] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: MaskKey) -> MaskResult | None:
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
            return result

    def put(self, key: MaskKey, result: MaskResult) -> None:
        size = result.mask.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.used_bytes -= previous.mask.nbytes
            self._entries[key] = result
            self.used_bytes += size
            while self.used_bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.used_bytes -= evicted.mask.nbytes
