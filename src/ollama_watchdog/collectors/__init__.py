"""Collectors: one module per source, each a small class with a name and ``collect()``.

The daemon's scheduler calls ``collect()`` on its own thread at the collector's interval, with a
deadline. A scrape never calls a collector: it reads the families of the latest finished run
(see ``ollama_watchdog.exporter.http``). ``collect()`` may raise; the scheduler records the run as
failed (``ollama_watchdog_collector_success{collector} 0``), logs it once and carries on.

A collector that follows a source continuously (the log follower) also implements
``start()``/``stop()``; the daemon starts it once and stops it on shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from prometheus_client.metrics_core import Metric


@runtime_checkable
class Collector(Protocol):
    """One source of metrics."""

    #: label value of ``ollama_watchdog_collector_success{collector=...}``
    name: str

    def collect(self) -> Sequence[Metric]:
        """Measure now and return complete metric families (called off the scrape path)."""
        ...


@runtime_checkable
class BackgroundCollector(Collector, Protocol):
    """A collector with a thread of its own (e.g. a log follower)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


__all__ = ["BackgroundCollector", "Collector"]
