"""What a collector is: the protocols every collector module implements.

A collector is a small class with a ``name`` (the ``collector`` label of
``ollama_watchdog_collector_success``) and ``collect()``, which measures and returns complete
metric families. The daemon's collector runner calls ``collect()`` on its own thread at the
collector's interval, with a deadline; a scrape never calls it (it reads the families of the
latest finished run, ``ollama_watchdog.exporter.http``). ``collect()`` may raise: the runner
records the run as failed, logs it once and carries on.

Optional parts, each a protocol the daemon checks by type, never by identity:

* :class:`BackgroundCollector`: follows a source continuously on a thread of its own (the log
  follower); started once, stopped on shutdown or reload.
* :class:`Closable`: holds a resource (an HTTP session) to release when it is retired.
* :class:`StatusSource`: contributes the head of systemd's ``STATUS=`` sentence.
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


@runtime_checkable
class Closable(Protocol):
    """A collector holding a resource that must be released when it is retired."""

    def close(self) -> None: ...


@runtime_checkable
class StatusSource(Protocol):
    """A collector whose latest view heads systemd's ``STATUS=`` line (one short clause)."""

    def status(self) -> str: ...


__all__ = ["BackgroundCollector", "Closable", "Collector", "StatusSource"]
