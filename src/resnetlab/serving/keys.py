"""The service's API keys (a file re-read when it changes)."""
from __future__ import annotations

import hmac
import os

from typing import Callable


class KeyRing:
    """A set of keys (the API's, or the management API's), re-read when their file changes (so keys rotate
    without a restart)."""

    def __init__(self, file: str | None, read: Callable[[], list[str]]) -> None:
        self.file, self.read = file, read
        self._stamp = self._file_stamp()
        self._keys = [k.encode() for k in read()]

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.file)
            return st.st_mtime_ns, st.st_size
        except (OSError, TypeError):
            return None  # no key file, or it went away: keep the keys last read

    def keys(self) -> list[bytes]:
        if self.file:
            stamp = self._file_stamp()
            if stamp is not None and stamp != self._stamp:
                try:
                    self._keys = [k.encode() for k in self.read()]
                    self._stamp = stamp
                except Exception:  # a half-written key file: keep the keys last read
                    pass
        return self._keys

    def accepts(self, given: bytes) -> bool:
        ok = False
        for key in self.keys():  # every key compared, in constant time each
            ok |= hmac.compare_digest(given, key)
        return ok
