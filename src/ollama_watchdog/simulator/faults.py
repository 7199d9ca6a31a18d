"""The fault in force: which one is injected, its parameters, and the lock around them.

One :class:`FaultState` per simulator, shared by the API's request threads (which read it
and, for ``hang``, wait on it) and the control endpoint (which swaps it). What each fault
*does* to an answer is decided where the answer is made (``router.py``, ``inference.py``);
the effects that happen at once (``crash``, ``runner_crash``) are wired in ``serve.py``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

FAULTS = ("none", "hang", "slow", "error500", "malformed", "crash", "runner_crash", "oom", "busy")


@dataclass(frozen=True)
class Fault:
    """The fault in force; ``delay`` is used by ``slow``."""

    name: str = "none"
    delay: float = 5.0

    def as_json(self) -> dict[str, object]:
        return {"fault": self.name, "delay": self.delay}


class FaultState:
    """The current fault, swapped atomically; hung requests wait on the condition."""

    def __init__(self, initial: Fault) -> None:
        self._fault = initial
        self.changed = threading.Condition()

    @property
    def current(self) -> Fault:
        return self._fault

    def set(self, fault: Fault) -> None:
        with self.changed:
            self._fault = fault
            self.changed.notify_all()

    def wait_while_hung(self, stopping: threading.Event) -> None:
        """``hang``: block while it is in force (or until ``stopping`` is set)."""
        with self.changed:
            while self._fault.name == "hang" and not stopping.is_set():
                self.changed.wait(0.5)
