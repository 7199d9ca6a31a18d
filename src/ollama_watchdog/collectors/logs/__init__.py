"""Request, error and token metrics from Ollama's own log, followed in the background.

Ollama has no ``/metrics``; its log has a line per request and per runner failure
(:mod:`ollama_watchdog.ollama.logparse`). This collector follows that log without sitting in the
request path, from one of two sources (``[logs] source``):

* ``journald``: ``journalctl -o json --follow`` for the unit. The cursor of the last line
  counted is kept in ``state_dir``, so a restart of the watchdog continues where it stopped
  instead of losing or recounting lines. With no cursor (first start) it begins at the end of
  the journal: history is not replayed into counters.
* ``file``: a regular file followed like ``tail -F``: rename+create rotation and copytruncate
  rotation both keep every line written before the rotation, and a missing file is waited for.
  A line longer than 64 KiB is counted as one unparsed line and skipped.

A follower that fails restarts itself with exponential backoff. While it is down ``collect()``
raises, which the scheduler records as ``ollama_watchdog_collector_success{collector="logs"} 0``.
``collect()`` itself never does I/O: it copies counters under a lock held for microseconds.

The package, one job per module:

* :mod:`.counters`: events -> counters -> metric families (:class:`LogCounters`);
* :mod:`.activity`: progress and requests in flight, as signals for the healing side;
* :mod:`.model_names`: the blob -> model name cache for the ``model`` label;
* :mod:`.follower`: what both followers share (thread, backoff, problem state);
* :mod:`.file`: :class:`FileFollower` (rotation, copytruncate);
* :mod:`.journal`: :class:`JournalFollower`, journald's MESSAGE decoding, the cursor file;
* this module: :class:`LogsCollector`, which picks the follower and feeds the counters.

To count a new kind of log line: teach :mod:`ollama_watchdog.ollama.logparse` to give an event
for it, then count that event and add its family in :mod:`.counters`. The followers only move
lines and never need to change for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from prometheus_client.metrics_core import Metric

from ollama_watchdog.collectors.logs.activity import Activity
from ollama_watchdog.collectors.logs.counters import LogCounters
from ollama_watchdog.collectors.logs.file import FileFollower
from ollama_watchdog.collectors.logs.follower import Follower, LogSourceError
from ollama_watchdog.collectors.logs.journal import JournalFollower
from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.signals import Signal

Source = Literal["journald", "file", "none"]


class LogsCollector:
    """Collector ``logs``: request/error/token metrics from Ollama's log (journald or a file)."""

    name = "logs"

    def __init__(
        self,
        source: Source,
        path: str = "",
        state_dir: Path = Path("/var/lib/ollama-watchdog"),
        models_dir: Path | None = None,
        journalctl: Sequence[str] = ("journalctl",),
        unit: str = "ollama.service",
        poll_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        emit: Callable[[Signal], None] | None = None,
    ) -> None:
        # with a signal channel, progress and requests in flight go to the healing side
        activity = Activity(emit) if emit is not None else None
        self.counters = LogCounters(ModelNames(models_dir), on_batch=activity)
        self.follower: Follower | None
        if source == "journald":
            # one cursor per unit: ollama-watchdog@N instances share the StateDirectory
            cursor = state_dir / f"journal-cursor-{unit}"
            self.follower = JournalFollower(
                self.counters.feed, cursor, unit, journalctl,
                backoff_initial=backoff_initial, backoff_max=backoff_max,
            )  # fmt: skip
        elif source == "file":
            if not path:
                raise ValueError("[logs] source = 'file' needs [logs] path")
            self.follower = FileFollower(
                Path(path), self.counters.feed, poll_interval,
                backoff_initial=backoff_initial, backoff_max=backoff_max,
                overlong=self.counters.count_overlong,
            )  # fmt: skip
        elif source == "none":
            self.follower = None
        else:
            raise ValueError(f"unknown log source {source!r}")

    def start(self) -> None:
        if self.follower is not None:
            self.follower.start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()

    def collect(self) -> Sequence[Metric]:
        if self.follower is not None:
            problem = self.follower.problem
            if problem is not None:
                raise LogSourceError(f"{self.follower.kind}: {problem}")
        return self.counters.families()


__all__ = ["LogSourceError", "LogsCollector", "Source"]
