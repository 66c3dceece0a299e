"""Files runtimes make at a replica's start (a quantised or converted model): one lock per folder, so replicas
starting together make each file once."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def directory_lock(directory: Path, name: str) -> Iterator[None]:
    """An exclusive lock on ``directory/name`` (made if missing), released on leaving."""
    with open(directory / name, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
