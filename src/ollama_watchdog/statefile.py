"""Small state files in ``state_dir`` (the journald cursor, the maintenance mark): never trusted.

A state file outlives the process that wrote it, and anything may have happened to it since: a
crash in the middle of a write on a filesystem without ordered data, a full disk, a person, a
bad sector. So it is read as hostile input and written so that a crash leaves the old or the
new content, never a mix:

* :func:`read_state` opens it without blocking (a FIFO at the path would block ``open``) and
  takes only a regular file of at most ``max_bytes``, valid UTF-8 without NUL bytes, that the
  caller's ``validate`` accepts. Anything else is logged once (``state_file_invalid``, naming
  the path and what was wrong), removed, and read as "no state": the caller starts as if
  fresh and its next write puts a good file back.
* :func:`write_state_atomic` writes a temporary file in the same directory, fsyncs it, renames
  it over the path and fsyncs the directory; it raises ``OSError`` and leaves no temporary file.
* :class:`StateFile` is both for one path, with a failed write counted and logged when it
  starts failing and when it works again (a read-only or full state dir must not stop anything
  that writes state every second). The count is process-wide,
  ``ollama_watchdog_state_write_failures_total``, exported by the daemon (:func:`families`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from ollama_watchdog.boundedread import FileRefused, read_bounded
from ollama_watchdog.oneline import one_line

log = structlog.get_logger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_write_failures = 0


def write_failures() -> int:
    """State writes that failed in this process (all state files together)."""
    with _lock:
        return _write_failures


def _count_failure() -> None:
    global _write_failures
    with _lock:
        _write_failures += 1


def families() -> list[Metric]:
    """The state files' own families, for the daemon's self-metrics."""
    return [
        CounterMetricFamily(
            "ollama_watchdog_state_write_failures",
            "Writes of a state file in state_dir (journald cursor, ...) that failed: the state "
            "dir is read-only, full or not a directory. What was being saved is kept in memory.",
            value=write_failures(),
        )
    ]


class _Invalid(Exception):
    """The state file is unusable; the message says why."""


def _read_bytes(path: Path, max_bytes: int) -> bytes | None:
    """The file's bytes; None when it does not exist; :class:`_Invalid` when unusable."""
    try:
        # a symlink (to /dev/zero, to another file) is not a state file we wrote
        return read_bounded(path, max_bytes, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except FileRefused as exc:
        raise _Invalid(str(exc)) from None
    except OSError as exc:
        raise _Invalid(f"cannot be read ({exc.strerror or exc})") from None


def _drop(path: Path) -> None:
    """Remove an unusable state file so the next write can put a good one there."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)  # state_dir is ours (StateDirectory=); nothing else lives there
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("state_file_drop_failed", path=str(path), error=one_line(str(exc)))


def read_state(path: Path, max_bytes: int, validate: Callable[[str], T | None]) -> T | None:
    """The value a state file holds, or None: absent, or unusable (then logged and removed).

    ``validate`` gets the text (UTF-8, no NUL, surrounding whitespace stripped) and returns the
    value, or None when the text is not one.
    """
    try:
        data = _read_bytes(path, max_bytes)
        if data is None:
            return None
        if b"\x00" in data:
            raise _Invalid("contains NUL bytes")
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise _Invalid(f"is not valid UTF-8 (byte {exc.start})") from None
        value = validate(text)
        if value is None:
            raise _Invalid("does not hold a valid value")
        return value
    except _Invalid as exc:
        log.warning("state_file_invalid", path=str(path), problem=str(exc), action="dropped")
        _drop(path)
        return None


def write_state_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace the file's content atomically and durably; raise ``OSError`` when it cannot.

    ``mode``: the file's permissions (a file another user must read, such as a maintenance
    mark root writes for the daemon's user, passes 0o644)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new content
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


class StateFile(Generic[T]):
    """One state file: :meth:`load` through :func:`read_state`, :meth:`save` never raising.

    A failed save is counted (``ollama_watchdog_state_write_failures_total``) and logged when
    saving starts failing (``state_write_failed``) and when it works again
    (``state_write_recovered``), not once per attempt.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        validate: Callable[[str], T | None],
        encode: Callable[[T], str] = str,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._validate = validate
        self._encode = encode
        self._failing = 0  # failed saves since the last good one

    def load(self) -> T | None:
        return read_state(self.path, self._max_bytes, self._validate)

    def save(self, value: T) -> bool:
        """Write ``value``; False (counted, logged on the first of a run) when it failed."""
        try:
            write_state_atomic(self.path, self._encode(value) + "\n")
        except OSError as exc:
            _count_failure()
            if not self._failing:
                log.warning("state_write_failed", path=str(self.path), error=one_line(str(exc)))
            self._failing += 1
            return False
        if self._failing:
            log.info("state_write_recovered", path=str(self.path), failed_writes=self._failing)
            self._failing = 0
        return True

    def remove(self) -> None:
        """Forget the state (a later :meth:`load` finds none); a failure is only logged."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("state_file_remove_failed", path=str(self.path), error=one_line(str(exc)))


__all__ = ["StateFile", "families", "read_state", "write_failures", "write_state_atomic"]
