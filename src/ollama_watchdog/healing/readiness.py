"""Readiness for load balancers: may this host take new requests now?

``/ready`` on the exporter and the HAProxy agent-check responder answer from one
:class:`Readiness` value, which the daemon's main loop computes after every turn from the latest
liveness probe and the watchdog's state (:func:`readiness`) and swaps in atomically; a reader on
another thread never sees half of it and never waits on Ollama.

The rule (healing-interface, issue 17): ready iff the latest liveness probe passed and the state
is none of ``maintenance``, ``draining``, ``remediating``, ``restarting``. The mapping is keyed on
the state *names* of ``ollama_watchdog_state{state}``, so a state added to the policy later needs
a row in :data:`NOT_READY_STATES` (or none, if it keeps the host in rotation) and nothing else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


class Reason(enum.StrEnum):
    """The one word of a ``/ready`` answer (the body of a 503, or ``ready`` with a 200)."""

    READY = "ready"
    #: no liveness probe has finished since the daemon started
    STARTING = "starting"
    #: the latest liveness probe failed (or is too old to trust)
    DOWN = "down"
    DRAINING = "draining"
    MAINTENANCE = "maintenance"
    REMEDIATING = "remediating"
    RESTARTING = "restarting"


class AgentWord(enum.StrEnum):
    """HAProxy agent-check answers (HAProxy configuration manual, ``agent-check``).

    ``ready`` cancels a DRAIN or MAINT the agent set; ``drain`` takes no new connections but
    lets persistent ones in; ``maint`` takes none at all. Only these three are sent: they are
    administrative states the agent itself reverts. ``down`` would need a later ``up`` and could
    stick if the agent were stopped while down (the manual warns about exactly that).
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


#: watchdog states that take the host out of rotation, and the word /ready answers for each
NOT_READY_STATES: Final = MappingProxyType(
    {
        "maintenance": Reason.MAINTENANCE,
        "draining": Reason.DRAINING,
        "remediating": Reason.REMEDIATING,
        "restarting": Reason.RESTARTING,
    }
)


@dataclass(frozen=True, slots=True)
class Readiness:
    """One answer: ready or not, and the word that says why."""

    ready: bool
    reason: Reason

    @property
    def agent_word(self) -> AgentWord:
        """What the HAProxy agent answers: the same decision as ``/ready``.

        Draining maps to ``drain`` (requests in flight finish, nothing new arrives); every other
        not-ready reason to ``maint``: an Ollama that is down, starting, restarting, in
        remediation or in maintenance must get no request at all.
        """
        if self.ready:
            return AgentWord.READY
        if self.reason is Reason.DRAINING:
            return AgentWord.DRAIN
        return AgentWord.MAINT

    def as_tuple(self) -> tuple[bool, str]:
        return self.ready, str(self.reason)


#: before the first liveness probe has finished
STARTING: Final = Readiness(False, Reason.STARTING)


def readiness(state: str, live: bool | None) -> Readiness:
    """The readiness of a host whose watchdog is in ``state`` and whose latest liveness probe
    passed (``True``), failed (``False``) or has not run yet / is stale (``None`` / ``False``).

    A state that takes the host out wins over the probe: "restarting" says more than "down"
    while a restart is in flight, and a host in maintenance stays out even if Ollama answers.
    """
    reason = NOT_READY_STATES.get(state)
    if reason is not None:
        return Readiness(False, reason)
    if live is None:
        return STARTING
    if not live:
        return Readiness(False, Reason.DOWN)
    return Readiness(True, Reason.READY)


__all__ = ["NOT_READY_STATES", "STARTING", "AgentWord", "Readiness", "Reason", "readiness"]
