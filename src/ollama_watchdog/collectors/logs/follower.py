"""The part both log followers share: a thread, restart with backoff, the current problem.

A follower runs ``_follow()`` on its own thread and hands lines to a sink (the counters). When
``_follow()`` fails it is restarted with exponential backoff; while it is down :attr:`problem`
says why, and the collector's ``collect()`` raises :class:`LogSourceError` with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger(__name__)


class LogSourceError(RuntimeError):
    """The log source is not being followed right now (the message says why)."""


Sink = Callable[[list[str]], None]
#: told how many over-long lines were dropped (the counters count each as one unparsed line)
OverlongSink = Callable[[int], None]

#: the longest line passed on. Ollama's request and error lines are a few hundred bytes; a
#: longer one (a runner dumping a prompt, a binary written to the log) is dropped, counted as
#: one unparsed line, and its remainder skipped as it arrives, never held in memory.
MAX_LINE_BYTES: Final = 64 * 1024


class LineSplitter:
    """Bytes as they are read in, complete lines out; a line is never longer than ``max_line``.

    The unfinished line is kept as a list of pieces and joined once, when its newline
    arrives: appending to one bytes object per read would copy the whole partial line each
    time (quadratic in its length). A line that grows past ``max_line`` is reported to
    ``overlong`` once and everything up to its newline is skipped.
    """

    def __init__(self, overlong: OverlongSink, max_line: int = MAX_LINE_BYTES) -> None:
        self._overlong = overlong
        self._max = max_line
        self._pieces: list[bytes] = []
        self._size = 0
        self._skipping = False

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes (decoded, without their newline)."""
        cut = data.rfind(b"\n")
        if cut < 0:
            self._keep(data)
            return []
        first = data.find(b"\n")
        head, body = data[:first], data[first + 1 : cut]
        dropped = 0
        lines: list[str] = []
        if self._skipping:
            self._skipping = False  # the rest of the over-long line ends here
        elif self._size + len(head) > self._max:
            dropped += 1
        else:
            self._pieces.append(head)
            lines.append(b"".join(self._pieces).decode("utf-8", "replace"))
        self._pieces, self._size = [], 0
        if first < cut:
            block = body.decode("utf-8", "replace").split("\n")
            if len(body) > self._max:  # only a block this long can hold an over-long line
                kept = [line for line in block if len(line) <= self._max]
                dropped += len(block) - len(kept)
                block = kept
            lines += block
        self._keep(data[cut + 1 :])
        if dropped:
            self._overlong(dropped)
        return lines

    def _keep(self, rest: bytes) -> None:
        if self._skipping or not rest:
            return
        self._size += len(rest)
        if self._size > self._max:
            self._overlong(1)  # counted now: its newline may never come
            self._pieces, self._size, self._skipping = [], 0, True
        else:
            self._pieces.append(rest)

    def flush(self) -> list[str]:
        """The unfinished line as a line of its own (its file ended), and start afresh."""
        line = b"".join(self._pieces)
        self.reset()
        return [line.decode("utf-8", "replace")] if line else []

    def reset(self) -> None:
        self._pieces, self._size, self._skipping = [], 0, False


class Follower:
    """A thread that runs ``_follow()`` and restarts it with backoff when it fails."""

    kind = "follower"

    def __init__(
        self,
        sink: Sink,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        overlong: OverlongSink | None = None,
    ) -> None:
        self._sink = sink
        self._overlong: OverlongSink = overlong or (lambda n: None)
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._problem: str | None = "not started"
        self.restarts = 0

    @property
    def problem(self) -> str | None:
        """Why the source is not being followed now, or None while it is."""
        with self._lock:
            return self._problem

    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            self._problem = problem

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"logs-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _interrupt(self) -> None:
        """Unblock ``_follow()`` (override where it blocks on something other than the event)."""

    def _follow(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        delay = self._backoff_initial
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._follow()
            except Exception as exc:  # classify at the boundary: any failure means "restart"
                if self._stopping.is_set():
                    break
                reason = f"{type(exc).__name__}: {exc}"[:300]
                self._set_problem(reason)
                self.restarts += 1
                # a run that lasted a while was healthy: start the backoff over
                if time.monotonic() - started > 4 * delay:
                    delay = self._backoff_initial
                log.warning("log_follower_failed", source=self.kind, error=reason, retry_in=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max)
            else:
                if not self._stopping.is_set():
                    self._set_problem("follower ended")
                    self._stopping.wait(delay)
                    delay = min(delay * 2, self._backoff_max)
        self._set_problem("stopped")


__all__ = [
    "MAX_LINE_BYTES",
    "Follower",
    "LineSplitter",
    "LogSourceError",
    "OverlongSink",
    "Sink",
]
