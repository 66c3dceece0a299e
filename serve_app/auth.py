"""API keys, off unless configured: the keys a request may present, from an environment variable and/or a file,
and the constant-time check. The file is read again whenever it changes, so keys rotate without a restart."""

from __future__ import annotations

import hmac
import os
from pathlib import Path


class ApiKeys:
    def __init__(self, env_var: str | None = None, file: Path | None = None) -> None:
        self.env_var = env_var
        self.file = file
        self._file_state: tuple[float, int] | None = None
        self._file_keys: list[bytes] = []

    @property
    def enabled(self) -> bool:
        return self.env_var is not None or self.file is not None

    def keys(self) -> list[bytes]:
        """The keys in force now: the variable's (comma-separated) and the file's (one a line; # comments)."""
        found = [k.strip().encode() for k in os.environ.get(self.env_var or "", "").split(",") if k.strip()]
        if self.file is not None:
            try:
                stat = self.file.stat()
                state = (stat.st_mtime, stat.st_size)
                if state != self._file_state:
                    lines = self.file.read_text().splitlines()
                    stripped = (ln.strip() for ln in lines)
                    self._file_keys = [ln.encode() for ln in stripped if ln and not ln.startswith("#")]
                    self._file_state = state
            except OSError:  # a file being replaced: keep the last keys read rather than lock everyone out
                pass
            found += self._file_keys
        return found

    def accepts(self, presented: str) -> bool:
        """Compared with every key in constant time (no early exit): how long it takes says nothing of how
        close a guess came, or which key matched. ``presented`` is the header value as Starlette decodes it (Latin-1),
        so the bytes the client sent are compared with the key's UTF-8 bytes: a non-ASCII key matches too."""
        candidate = presented.encode("latin-1", "replace")
        matched = False
        for key in self.keys():
            matched |= hmac.compare_digest(candidate, key)
        return matched and bool(presented)
