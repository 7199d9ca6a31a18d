"""Progress on stderr for long store operations, and the readers that report to it.

Hashing or copying a store means reading tens of GiB; the operator sees a one-line bar when
stderr is a terminal and nothing otherwise (logs and pipes stay clean).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import IO, BinaryIO


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    Thread-safe: verify's workers report from several threads. At most ~10 redraws a second,
    so a store of many small blobs does not spend its time writing to the terminal.
    """

    def __init__(self, label: str, total_items: int, total_bytes: int, stream: IO[str]) -> None:
        self._label = label
        self._items = total_items
        self._bytes = max(total_bytes, 1)
        self._stream = stream
        self._enabled = stream.isatty()
        self._done_items = 0
        self._done_bytes = 0
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def advance(self, nbytes: int, item_done: bool = False) -> None:
        if not self._enabled:
            return
        with self._lock:
            self._done_bytes += nbytes
            self._done_items += int(item_done)
            now = time.monotonic()
            if now - self._last_draw < 0.1 and self._done_items < self._items:
                return
            self._last_draw = now
            line = self._render()
        self._stream.write("\r" + line)
        self._stream.flush()

    def _render(self) -> str:
        frac = min(self._done_bytes / self._bytes, 1.0)
        bar = "#" * int(frac * 30)
        return (
            f"{self._label} [{bar:<30}] {frac:6.1%} {self._done_items}/{self._items} blobs "
            f"{human_bytes(self._done_bytes)}/{human_bytes(self._bytes)}"
        )

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def human_bytes(n: int) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 TiB`` (binary units, one decimal)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class ProgressReader:
    """A read-only stream wrapper that reports the bytes read to a :class:`Progress`."""

    def __init__(self, inner: IO[bytes], progress: Progress) -> None:
        self._inner = inner
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._progress.advance(len(data))
        return data


class HashingReader:
    """Feeds tarfile and hashes the bytes on the way, so a corrupt blob never lands in a backup."""

    def __init__(self, inner: BinaryIO, progress: Progress) -> None:
        self._inner = inner
        self._progress = progress
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.sha.update(data)
        self._progress.advance(len(data))
        return data


__all__ = ["HashingReader", "Progress", "ProgressReader", "human_bytes"]
