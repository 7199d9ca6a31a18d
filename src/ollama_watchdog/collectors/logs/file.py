"""Follow Ollama's log file by name, like ``tail -F``: rename and copytruncate rotation."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from ollama_watchdog import boundedread
from ollama_watchdog.collectors.logs.follower import (
    Follower,
    LineSplitter,
    LogSourceError,
    OverlongSink,
    Sink,
)

log = structlog.get_logger(__name__)

_READ: Final = 1 << 16  # bytes read at a time


def open_regular(path: Path) -> int:
    """A read descriptor on ``path`` if it is a regular file (symlinks followed, a FIFO not
    waited on); ``FileNotFoundError``, or :class:`LogSourceError` saying what is wrong."""
    try:
        return boundedread.open_regular(path)
    except FileNotFoundError:
        raise
    except boundedread.FileRefused as exc:
        raise LogSourceError(
            f"{path} {exc}: [logs] path must name the file Ollama's output is appended to "
            "(or use source = journald)"
        ) from None
    except OSError as exc:
        raise LogSourceError(f"cannot open {path}: {exc.strerror or exc}") from None


@dataclass
class _Retiring:
    """A renamed-away file still read for writers that have not reopened yet."""

    fd: int
    last_growth: float
    lines: LineSplitter


@dataclass
class _Candidate:
    """A sibling that appeared since the last look: maybe logrotate's copy, maybe in progress."""

    path: Path
    size: int  # at the last look; -1 before the first
    looks: int = 0


class FileFollower(Follower):
    """Follow a file by name, like ``tail -F``. Only a regular file is followed: a FIFO, a
    device or a directory at the path is a failure that names it (retried with backoff).

    Rotation by rename (``create``): the old file is read to its end, then kept open a little
    longer for writers that have not reopened yet, and the new file is read from its start.

    Rotation by ``copytruncate``: the file keeps its identity (device, inode), so its
    truncation is recognised by position-independent evidence: the file is now shorter than
    our offset, or a *copy* of it appeared next to it (a new sibling file, ``<name>.1``,
    ``<name>-20260101``..., whose first bytes are this file's and which holds at least what we
    read). A fast writer may refill the truncated file past our offset before we look, with
    lines that may all be identical to the old ones: neither its size nor its bytes can tell
    then, the copy can. The lines we had not read yet are taken from the copy (from our offset
    to its end), then the file is read from its start. A candidate copy is waited for until it
    stops growing (logrotate truncates right after copying), the file not read meanwhile. (So
    logrotate's ``copy`` without ``copytruncate``, or a person copying the live file next to
    it, reads as a rotation: the file is read again from its start.)

    Lines are bounded (:class:`LineSplitter`): a longer one counts as one unparsed line. At the
    very first start the file is read from its end: history is not counted.
    """

    kind = "file"
    #: keep a renamed-away file open this long after its last growth
    RETIRE_AFTER_S: Final = 2.0
    #: bytes before our offset re-read each poll: a mismatch means the file was rewritten
    _MATCH_BYTES: Final = 256
    #: first bytes of the file remembered, to recognise its copy
    _HEAD_BYTES: Final = 4096
    #: polls a growing candidate copy is waited for before it is taken for something else
    _CANDIDATE_LOOKS: Final = 25

    def __init__(
        self,
        path: Path,
        sink: Sink,
        poll_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        overlong: OverlongSink | None = None,
    ) -> None:
        super().__init__(sink, backoff_initial, backoff_max, overlong)
        self.path = path
        self._poll = poll_interval
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._lines = LineSplitter(self._overlong)
        self._tail = b""  # the last bytes read, to notice a rewrite before our offset
        self._head = b""  # the file's first bytes, to recognise its copy
        self._retiring: list[_Retiring] = []
        self._first_open = True
        self._dir_mtime: int | None = None
        self._known: set[tuple[int, int]] = set()  # siblings seen (by identity)
        self._candidates: list[_Candidate] = []

    def _follow(self) -> None:
        try:
            while not self._stopping.is_set():
                self.poll()
                self._stopping.wait(self._poll)
        finally:
            self._close_all()

    def poll(self) -> None:
        """One round: open if needed, look for rotation, read what there is.

        Rotation is looked for *before* reading: after a copytruncate a fast writer may refill
        the file past our offset, and reading first would take the new bytes as the
        continuation of the old ones. Then everything there is is read: batches of lines per
        poll keep the CPU cost per line low.
        """
        if self._fd is None and not self._open():
            return
        if self._check_rotation():
            self._drain()
        self._drain_retiring()

    def _open(self) -> bool:
        try:
            fd = open_regular(self.path)
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
        self._known.add(ino)
        self._head = os.pread(fd, min(self._HEAD_BYTES, self._offset), 0)
        os.lseek(fd, self._offset, os.SEEK_SET)
        self._note_siblings(initial=True)
        self._set_problem(None)
        return True

    def _drain(self) -> None:
        assert self._fd is not None
        lines: list[str] = []
        while chunk := os.read(self._fd, _READ):
            self._offset += len(chunk)
            self._tail = (self._tail + chunk)[-self._MATCH_BYTES :]
            lines += self._lines.feed(chunk)
            if len(lines) >= 4096:
                self._sink(lines)
                lines = []
        if lines:
            self._sink(lines)
        if len(self._head) < self._HEAD_BYTES and self._offset > len(self._head):
            self._head = os.pread(self._fd, min(self._HEAD_BYTES, self._offset), 0)

    def _drain_retiring(self) -> None:
        now = time.monotonic()
        keep = []
        for old in self._retiring:
            lines: list[str] = []
            while chunk := os.read(old.fd, _READ):
                old.last_growth = now
                lines += old.lines.feed(chunk)
            if now - old.last_growth >= self.RETIRE_AFTER_S:
                lines += old.lines.flush()
                os.close(old.fd)
            else:
                keep.append(old)
            if lines:
                self._sink(lines)
        self._retiring = keep

    def _check_rotation(self) -> bool:
        """Handle a rotation if there was one; False while a candidate copy is awaited."""
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True  # renamed away, new one not created yet: keep reading the old one
        if (st.st_dev, st.st_ino) != self._ino:
            # rename+create: retire the old file (writers may still append to it) and switch
            self._retiring.append(_Retiring(self._fd, time.monotonic(), self._lines))
            self._fd, self._lines = None, LineSplitter(self._overlong)
            self._candidates = []
            self._open()
            return self._fd is not None
        self._note_siblings()
        shrank = st.st_size < self._offset
        if shrank or not self._tail_still_there():
            # certainly truncated (or rewritten): the copy, if any, is complete by now
            copy = next((c.path for c in self._candidates if self._is_copy(c.path)), None)
            self._truncated(copy)
            return True
        copy, waiting = self._settled_copy()
        if copy is not None:
            self._truncated(copy)
            return True
        return not waiting

    def _tail_still_there(self) -> bool:
        """Do the bytes before our offset still match? (Only a rewrite changes them; identical
        content refilled past our offset does not, which the copy check covers.)"""
        assert self._fd is not None
        n = len(self._tail)
        return n == 0 or os.pread(self._fd, n, self._offset - n) == self._tail

    def _is_sibling(self, name: str) -> bool:
        base = self.path.name
        return name != base and name.startswith(base) and not name.endswith((".gz", ".xz", ".zst"))

    def _note_siblings(self, initial: bool = False) -> None:
        """Siblings that appeared since the last look become candidate copies (one stat of the
        directory per poll; it is listed only when its mtime moved)."""
        parent = self.path.parent
        try:
            mtime = os.stat(parent).st_mtime_ns
            if mtime == self._dir_mtime:
                return
            entries = list(os.scandir(parent))
        except OSError:
            return
        self._dir_mtime = mtime
        for entry in entries:
            if not self._is_sibling(entry.name):
                continue
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            ident = (est.st_dev, est.st_ino)
            if ident in self._known:
                continue
            self._known.add(ident)
            if not initial and stat.S_ISREG(est.st_mode):
                self._candidates.append(_Candidate(Path(entry.path), -1))

    def _settled_copy(self) -> tuple[Path | None, bool]:
        """(a finished copy of our file, whether to wait for a candidate still growing)."""
        waiting = False
        keep: list[_Candidate] = []
        for cand in self._candidates:
            try:
                size = os.stat(cand.path, follow_symlinks=False).st_size
            except OSError:
                continue  # gone: not a copy we need
            cand.looks += 1
            if size != cand.size:
                if cand.looks <= self._CANDIDATE_LOOKS:
                    cand.size = size  # appeared or grew since the last look: still copying?
                    keep.append(cand)
                    waiting = True
                continue  # else it keeps growing: a file written to, not a copy
            if self._is_copy(cand.path):
                self._candidates = []
                return cand.path, False
            # settled and not a copy of ours: forget it
        self._candidates = keep
        return None, waiting

    def _is_copy(self, path: Path) -> bool:
        """Does ``path`` hold at least what we read, starting with our file's first bytes?"""
        try:
            fd = open_regular(path)
        except (OSError, LogSourceError):
            return False
        try:
            if os.fstat(fd).st_size < self._offset:
                return False
            return os.pread(fd, len(self._head), 0) == self._head
        finally:
            os.close(fd)

    def _truncated(self, copy: Path | None) -> None:
        self._recover_from_copy(copy)
        self._lines.reset()
        self._tail = self._head = b""
        self._offset = 0
        self._candidates = []
        assert self._fd is not None
        os.lseek(self._fd, 0, os.SEEK_SET)

    def _recover_from_copy(self, copy: Path | None) -> None:
        """copytruncate: read what we had not read yet from the rotated copy, if we find it."""
        candidates = [copy] if copy is not None else self._older_copies()
        for cand in candidates:
            try:
                fd = open_regular(cand)
            except (OSError, LogSourceError):
                continue
            try:
                if copy is None and not self._tail_matches(fd):
                    continue
                os.lseek(fd, self._offset, os.SEEK_SET)
                got = 0
                lines: list[str] = []
                while chunk := os.read(fd, _READ):
                    got += len(chunk)
                    lines += self._lines.feed(chunk)
                    if len(lines) >= 4096:
                        self._sink(lines)
                        lines = []
                self._sink([*lines, *self._lines.flush()])
            except OSError:
                continue
            finally:
                os.close(fd)
            log.info("log_rotation_recovered", path=str(cand), bytes=got)
            return
        log.warning("log_truncated", path=str(self.path), lost_after_offset=self._offset)

    def _older_copies(self) -> list[Path]:
        """Siblings by age, newest first (the copy of a truncation no candidate caught)."""
        parent = self.path.parent
        found: list[tuple[float, Path]] = []
        try:
            for entry in os.scandir(parent):
                if self._is_sibling(entry.name):
                    try:
                        found.append((entry.stat().st_mtime, Path(entry.path)))
                    except OSError:
                        continue
        except OSError:
            return []
        return [p for _, p in sorted(found, reverse=True)[:4]]

    def _tail_matches(self, fd: int) -> bool:
        want = self._tail
        if self._offset < len(want) or os.fstat(fd).st_size < self._offset:
            return False
        return os.pread(fd, len(want), self._offset - len(want)) == want

    def _close_all(self) -> None:
        for old in self._retiring:
            os.close(old.fd)
        self._retiring = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["FileFollower", "open_regular"]
