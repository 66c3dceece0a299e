"""API keys, off unless configured: the keys a request may present, from an environment variable and/or a file,
and the constant-time check. The file is read again whenever it changes, so keys rotate without a restart."""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)
UTF8_BOM = b"\xef\xbb\xbf"  # Windows editors start a UTF-8 file with it
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def stripped(key: bytes) -> bytes:
    """A key without the whitespace around it, Unicode's too (a no-break space pasted from a web page), whatever
    its bytes: ones that are not UTF-8 are kept as they are."""
    return key.decode("utf-8", "surrogateescape").strip().encode("utf-8", "surrogateescape")


def keys_in(text: bytes) -> list[bytes]:
    """The keys of a key file: one a line, blank lines and # comments skipped, a leading BOM dropped. A file saved
    as UTF-16 (Notepad's "Unicode", told by its BOM) is read as the text it holds, its keys in UTF-8 as sent."""
    if text.startswith(UTF16_BOMS):
        text = text.decode("utf-16", "surrogatepass").encode("utf-8", "surrogateescape")
    lines = (stripped(line) for line in text.removeprefix(UTF8_BOM).splitlines())
    return [line for line in lines if line and not line.startswith(b"#")]


class ApiKeys:
    def __init__(self, env_var: str | None = None, file: Path | None = None) -> None:
        self.env_var = env_var
        self.file = file
        self._file_state: tuple[int, int, int] | None = None
        self._file_keys: list[bytes] = []
        self._failed_state: object = None

    @property
    def enabled(self) -> bool:
        return self.env_var is not None or self.file is not None

    def keys(self) -> list[bytes]:
        """The keys in force now: the variable's (comma-separated) and the file's (one a line; # comments).

        Both are taken as bytes, as they are: a key that is not valid UTF-8 is compared as sent, never a 500."""
        variable = os.environb.get(os.fsencode(self.env_var or ""), b"")
        found = [key for key in map(stripped, variable.split(b",")) if key]
        if self.file is not None:
            try:
                stat = self.file.stat()
                # The inode too: a rotation by rename (cp -p, rsync -t) may keep the size and the time.
                state = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                if state != self._file_state:
                    self._file_keys = keys_in(self.file.read_bytes())
                    self._file_state = state
            except OSError as exc:  # a file being replaced: keep the last keys read rather than lock everyone out
                if self._failed_state != (type(exc), exc.errno):
                    logger.warning(
                        "API key file %s unreadable (%s); keeping the %d keys last read from it",
                        self.file,
                        exc,
                        len(self._file_keys),
                    )
                    self._failed_state = (type(exc), exc.errno)
            else:
                self._failed_state = None
            found += self._file_keys
        return found

    def accepts(self, presented: str) -> bool:
        """Compared with every key in constant time (no early exit): how long it takes says nothing of how
        close a guess came, or which key matched. ``presented`` is the header value as Starlette decodes it (Latin-1),
        so the bytes the client sent are compared with the key's bytes as the file or variable holds them: a
        non-ASCII key matches too."""
        candidate = presented.encode("latin-1", "replace")
        matched = False
        for key in self.keys():
            matched |= hmac.compare_digest(candidate, key)
        return matched and bool(presented)
