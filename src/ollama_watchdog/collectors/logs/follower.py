"""The part both log followers share: a thread, restart with backoff, the current problem.

A follower runs ``_follow()`` on its own thread and hands lines to a sink (the counters). When
``_follow()`` fails it is restarted with exponential backoff; while it is down :attr:`problem`
says why, and the collector's ``collect()`` raises :class:`LogSourceError` with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class LogSourceError(RuntimeError):
    """The log source is not being followed right now (the message says why)."""


Sink = Callable[[list[str]], None]


class Follower:
    """A thread that runs ``_follow()`` and restarts it with backoff when it fails."""

    kind = "follower"

    def __init__(self, sink: Sink, backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self._sink = sink
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


__all__ = ["Follower", "LogSourceError", "Sink"]
