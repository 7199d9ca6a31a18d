"""Follow Ollama's log file by name, like ``tail -F``: rename and copytruncate rotation."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

import structlog

from ollama_watchdog.collectors.logs.follower import Follower, Sink

log = structlog.get_logger(__name__)


class FileFollower(Follower):
    """Follow a file by name, like ``tail -F``.

    Rotation by rename (``create``): the old file is read to its end, then kept open a little
    longer for writers that have not reopened yet, and the new file is read from its start.
    Rotation by ``copytruncate``: lines written before the truncation that were not read yet
    are taken from the rotated copy (the sibling whose bytes before our offset match ours).
    At the very first start the file is read from its end: history is not counted.
    """

    kind = "file"
    #: keep a renamed-away file open this long after its last growth
    RETIRE_AFTER_S: Final = 2.0
    _MATCH_BYTES: Final = 256

    def __init__(
        self,
        path: Path,
        sink: Sink,
        poll_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        super().__init__(sink, backoff_initial, backoff_max)
        self.path = path
        self._poll = poll_interval
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._tail = b""  # the last bytes read, to recognise our file's copy
        self._retiring: list[tuple[int, float, bytes]] = []  # (fd, last growth, partial line)
        self._first_open = True

    def _follow(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._fd is None and not self._open():
                    self._stopping.wait(self._poll)
                    continue
                # Look for rotation *before* reading: after a copytruncate a fast writer may
                # refill the file past our offset, and reading first would take the new bytes
                # as the continuation of the old ones. Then read everything there is and
                # sleep: batches of lines per poll keep the CPU cost per line low.
                self._check_rotation()
                self._drain()
                self._drain_retiring()
                self._stopping.wait(self._poll)
        finally:
            self._close_all()

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # a file that appears later is read from its start: all of it is new
            self._first_open = False
            self._set_problem(f"waiting for {self.path}")
            return False
        st = os.fstat(fd)
        ino = (st.st_dev, st.st_ino)
        if self._first_open:
            # first start: begin at the end, like journald's first start
            self._offset = st.st_size
        elif ino != self._ino:
            self._offset = 0  # a new file: read it all
        elif st.st_size < self._offset:
            self._offset = 0  # same file, truncated while we were away
        if self._offset == 0 or self._first_open:
            self._tail = b""  # nothing read from this file yet: nothing to compare with
        self._first_open = False
        self._fd, self._ino = fd, ino
        os.lseek(fd, self._offset, os.SEEK_SET)
        self._set_problem(None)
        return True

    def _emit(self, data: bytes, partial: bytes) -> bytes:
        """Send the complete lines of ``partial + data``; return the unfinished rest."""
        data = partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            return data
        self._sink(data[:cut].decode("utf-8", "replace").split("\n"))
        return data[cut + 1 :]

    def _drain(self) -> None:
        assert self._fd is not None
        while chunk := os.read(self._fd, 1 << 16):
            self._offset += len(chunk)
            self._tail = (self._tail + chunk)[-self._MATCH_BYTES :]
            self._partial = self._emit(chunk, self._partial)

    def _drain_retiring(self) -> None:
        now = time.monotonic()
        keep = []
        for fd, last, partial in self._retiring:
            while chunk := os.read(fd, 1 << 16):
                last = now
                partial = self._emit(chunk, partial)
            if now - last < self.RETIRE_AFTER_S:
                keep.append((fd, last, partial))
            else:
                if partial:
                    self._sink([partial.decode("utf-8", "replace")])
                os.close(fd)
        self._retiring = keep

    def _check_rotation(self) -> None:
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, new one not created yet: keep reading the old one
        if (st.st_dev, st.st_ino) != self._ino:
            # rename+create: retire the old file (writers may still append to it) and switch
            self._retiring.append((self._fd, time.monotonic(), self._partial))
            self._fd, self._partial = None, b""
            self._open()
        elif st.st_size < self._offset or not self._tail_still_there():
            self._recover_from_copy()
            self._partial = self._tail = b""
            self._offset = 0
            os.lseek(self._fd, 0, os.SEEK_SET)

    def _tail_still_there(self) -> bool:
        """Do the bytes before our offset still match? (A fast writer may refill a truncated
        file past our offset before we look; its size alone would not show the truncation.)"""
        assert self._fd is not None
        n = len(self._tail)
        return n == 0 or os.pread(self._fd, n, self._offset - n) == self._tail

    def _recover_from_copy(self) -> None:
        """copytruncate: read what we had not read yet from the rotated copy, if we find it."""
        parent, base = self.path.parent, self.path.name
        candidates = [
            p
            for p in parent.iterdir()
            if p.name != base and p.name.startswith(base) and not p.name.endswith((".gz", ".xz"))
        ]
        candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        want = self._tail
        for cand in candidates[:4]:
            try:
                with cand.open("rb") as f:
                    if self._offset < len(want) or os.fstat(f.fileno()).st_size < self._offset:
                        continue
                    f.seek(self._offset - len(want))
                    if f.read(len(want)) != want:
                        continue
                    rest = f.read()
            except OSError:
                continue
            self._partial = self._emit(rest, self._partial)
            if self._partial:
                self._sink([self._partial.decode("utf-8", "replace")])
            log.info("log_rotation_recovered", path=str(cand), bytes=len(rest))
            return
        log.warning("log_truncated", path=str(self.path), lost_after_offset=self._offset)

    def _close_all(self) -> None:
        for fd, _, _ in self._retiring:
            os.close(fd)
        self._retiring = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["FileFollower"]
