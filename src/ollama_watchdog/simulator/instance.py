"""One running simulator: its settings and the state every request thread shares.

:class:`Simulator` only holds the parts together; each part owns its state and its lock: the
installed models (``catalog.Catalog``), the loaded ones and their runners
(``scheduler.Scheduler``), the fault in force (``faults.FaultState``), the log streams
(``logsink.LogSink``). ``serve.py`` builds it; the router hands it to every endpoint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ollama_watchdog.simulator.catalog import Catalog
from ollama_watchdog.simulator.faults import FaultState
from ollama_watchdog.simulator.logsink import LogSink
from ollama_watchdog.simulator.scheduler import Scheduler


@dataclass(frozen=True)
class SimSettings:
    """Behaviour knobs of one simulator instance."""

    version: str
    era: str
    timing_form: str  # "line" | "block"
    token_delay: float  # seconds per generated token
    default_tokens: int
    keep_alive: float  # default keep_alive seconds (OLLAMA_KEEP_ALIVE)
    loopback_only: bool  # bound to loopback: the allowed-hosts check applies

    @property
    def version_tuple(self) -> tuple[int, ...]:
        parts: list[int] = []
        for piece in self.version.split("-")[0].split("."):
            parts.append(int(piece) if piece.isdigit() else 0)
        return tuple(parts)


class Simulator:
    """State shared by all request threads: models, scheduler, faults, log sink."""

    def __init__(self, settings: SimSettings, models_dir: Path, catalog: Catalog,
                 scheduler: Scheduler, faults: FaultState, sink: LogSink) -> None:
        self.settings = settings
        self.models_dir = models_dir  # the store blob uploads and creates write into
        self.catalog = catalog
        self.scheduler = scheduler
        self.faults = faults
        self.sink = sink
        self.stopping = threading.Event()
