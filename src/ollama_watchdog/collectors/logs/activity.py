"""What the log says Ollama is doing, for the healing side: progress and requests in flight.

Two signals (``signals.SignalKind``), emitted from the follower thread after each batch:

* ``progress``: an inference request completed without a server error (a gin line for a
  route in ``routes.INFERENCE_ROUTES`` with a status below 500), or a runner printed a timing
  line (a completion ended normally; its ``model`` when the log can tell). At most one per
  :data:`PROGRESS_EVERY` seconds per model: the policy needs "since when", not every line.
  The watchdog's own liveness probes (``/api/version``, ``/api/tags``, ``/api/ps``) are not
  inference routes, so they never count as progress.
* ``in_flight``: requests running on the runners' slots now, from llama-server's slot lines
  (``processing task`` +1, ``stop processing`` -1, ``all slots are idle`` 0; with several
  runners one's idle line may hide another's request for a moment, which the policy's settle
  time without request lines covers). Emitted when the count changes. Eras without slot lines
  (the Go runner) never emit it, so the policy falls back to a quiet period without request
  lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from ollama_watchdog.collectors.logs.counters import UNKNOWN_MODEL
from ollama_watchdog.ollama.logparse import Event, Request, Timing, slot_change
from ollama_watchdog.ollama.routes import INFERENCE_ROUTES
from ollama_watchdog.signals import Signal, SignalKind

#: seconds between two progress signals for the same model
PROGRESS_EVERY: Final = 1.0


class Activity:
    """Turns batches of log lines and their events into progress / in-flight signals."""

    def __init__(
        self,
        emit: Callable[[Signal], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._clock = clock
        self._last_sent: dict[str, float] = {}
        self._in_flight = 0
        self._reported: int | None = None

    def __call__(
        self, lines: Sequence[str], events: Sequence[Event], model_of: Callable[[], str]
    ) -> None:
        progress: set[str] = set()
        for event in events:
            if isinstance(event, Request):
                if event.route in INFERENCE_ROUTES and event.code < 500:
                    progress.add("")
            elif isinstance(event, Timing):
                model = model_of()
                progress.add("" if model == UNKNOWN_MODEL else model)
        slots_seen = False
        for line in lines:
            change = slot_change(line)
            if change is None:
                continue
            slots_seen = True
            self._in_flight = 0 if change == 0 else max(self._in_flight + change, 0)
        now = self._clock()
        for model in progress:
            if now - self._last_sent.get(model, float("-inf")) >= PROGRESS_EVERY:
                self._last_sent[model] = now
                self._emit(Signal(SignalKind.PROGRESS, True, model=model))
        if slots_seen and self._in_flight != self._reported:
            self._reported = self._in_flight
            self._emit(Signal(SignalKind.IN_FLIGHT, True, count=float(self._in_flight)))


__all__ = ["PROGRESS_EVERY", "Activity"]
