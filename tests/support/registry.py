"""Read collector output the way a scrape does, in a fresh registry per test (STYLE.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from ollama_watchdog.collectors import Collector

Source = Collector | Callable[[], Sequence[Metric]] | Sequence[Metric]


class _Families:
    """Registry adapter; ``describe()`` is empty so registering never collects."""

    def __init__(self, families: Callable[[], Sequence[Metric]]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families()

    def describe(self) -> list[Metric]:
        return []


def registry_of(source: Source) -> CollectorRegistry:
    """A fresh registry over ``source``.

    A collector is collected once, now (reading the registry never runs it again); a callable
    returning families is called at every read (live counters); families are served as given.
    """
    if isinstance(source, Collector):
        families = source.collect()
        read: Callable[[], Sequence[Metric]] = lambda: families  # noqa: E731
    elif callable(source):
        read = source
    else:
        fixed = source
        read = lambda: fixed  # noqa: E731
    registry = CollectorRegistry()
    registry.register(_Families(read))  # type: ignore[arg-type]
    return registry
