"""The one typed channel from collectors to the healing side: what a signal is.

A collector that has evidence about Ollama's health (the liveness probe, the deep probe) emits a
:class:`Signal` through the callable the registry hands it; the daemon queues it and its main
loop feeds it to the healing policy's one ``observe(signal)``. The failure reason stays a typed
value (``ProbeReason``) until the event is logged: the text is made once, by :meth:`error_text`.

Two families of kinds. **Probe kinds** (rows of :data:`KINDS`: liveness, deep probe) are
counted: consecutive failures per kind lead to a remediation. **Evidence kinds**
(:data:`EVIDENCE`) describe what Ollama is doing and are never counted as failures themselves:
progress seen in the log (so a slow deep probe on a busy server is ``busy``, not hung), the
requests in flight (so a planned action waits for a quiet moment), each runner's activity, orphan
runners, a silent CPU fallback, GPU memory held with no model loaded, and the unit stopped on
purpose by an operator. Each carries what the healing side needs (a model name, processes) as
typed fields, never model output.

Adding a probe kind means adding a :class:`SignalKind` member, its row in :data:`KINDS`, and
its producer; the policy counts consecutive failures per kind from that table alone. Adding an
evidence kind means a member, an entry in :data:`EVIDENCE`, its producer, and its rule in the
policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ollama_watchdog.ollama.api import ProbeReason


class SignalKind(enum.StrEnum):
    """What a signal is evidence of; also the ``reason`` label of a restart it leads to."""

    LIVENESS = "liveness"
    DEEP_PROBE = "deep_probe"
    #: evidence: a request completed or a runner reported progress (``model`` when known)
    PROGRESS = "progress"
    #: evidence: requests in flight now (``count``; None: the log cannot tell)
    IN_FLIGHT = "in_flight"
    #: evidence: one runner's activity in the last round (``ok``: it advanced; ``model``)
    RUNNER = "runner"
    #: evidence: runners whose parent is not the current server (``procs``; ok: none)
    ORPHANS = "orphans"
    #: evidence: GPUs present, yet a loaded model runs on CPU (ok: no fallback)
    CPU_FALLBACK = "cpu_fallback"
    #: evidence: Ollama holds GPU memory with no model loaded (``count``: bytes; ok: it does not)
    VRAM_HELD = "vram_held"
    #: evidence: the Ollama unit's state (ok: not stopped on purpose; ``detail``: the state,
    #: ``ActiveState/SubState, result Result``)
    UNIT = "unit"


#: how the ``detail`` of a UNIT signal begins while the unit is stopping
UNIT_DEACTIVATING: Final = "deactivating/"


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How the policy treats one kind of signal (one row of :data:`KINDS`)."""

    #: the noun of ``STATUS=`` ("3 of 3 failed probes")
    noun: str
    #: prefix of ``last_error`` for a failure of this kind
    error_prefix: str
    #: ``last_error`` when the failure carries no text
    fallback: str
    #: a failure of this kind is ignored while that kind fails (it already counts the outage)
    requires: SignalKind | None
    #: key of the consecutive count in decision log events
    log_field: str
    #: the gauge of the consecutive count, and its help text
    metric: str
    metric_help: str


KINDS: Final = MappingProxyType(
    {
        SignalKind.LIVENESS: KindSpec(
            noun="probes",
            error_prefix="",
            fallback="liveness probe failed",
            requires=None,
            log_field="consecutive_failures",
            metric="ollama_watchdog_consecutive_failures",
            metric_help=(
                "Consecutive failed liveness probes counted towards a restart (not during grace)."
            ),
        ),
        SignalKind.DEEP_PROBE: KindSpec(
            noun="deep probes",
            error_prefix="deep probe: ",
            fallback="failed",
            # a deep failure while liveness fails is that same outage; a stale one must not keep
            # the watchdog from calling Ollama healthy once liveness is back
            requires=SignalKind.LIVENESS,
            log_field="deep_consecutive_failures",
            metric="ollama_watchdog_deep_probe_consecutive_failures",
            metric_help=(
                "Consecutive failed deep probes, while liveness passed, counted towards a restart."
            ),
        ),
    }
)


#: kinds that are evidence, not probes: never counted towards a remediation by themselves
EVIDENCE: Final = frozenset(
    {
        SignalKind.PROGRESS,
        SignalKind.IN_FLIGHT,
        SignalKind.RUNNER,
        SignalKind.ORPHANS,
        SignalKind.CPU_FALLBACK,
        SignalKind.VRAM_HELD,
        SignalKind.UNIT,
    }
)


@dataclass(frozen=True, slots=True)
class Proc:
    """A process named by pid and start time, so a reused pid is never mistaken for it."""

    pid: int
    #: ``psutil.Process.create_time()`` (seconds since the epoch)
    started: float


@dataclass(frozen=True, slots=True)
class Signal:
    """One piece of evidence: a probe of ``kind`` passed or failed, and why."""

    kind: SignalKind
    ok: bool
    #: the failure class, from the boundary where it was classified (None when ok or unknown)
    reason: ProbeReason | None = None
    #: a short human detail (Ollama's own error message), never model output
    detail: str = ""
    #: the model the signal is about ("" when none or unknown)
    model: str = ""
    #: a number the kind defines (requests in flight, bytes held); None when unknown
    count: float | None = None
    #: processes the signal is about (orphan runners, a runner)
    procs: tuple[Proc, ...] = ()

    @classmethod
    def passed(cls, kind: SignalKind) -> Signal:
        return cls(kind, True)

    @classmethod
    def failed(
        cls, kind: SignalKind, reason: ProbeReason | None, detail: str = "", model: str = ""
    ) -> Signal:
        return cls(kind, False, reason, detail, model)

    def error_text(self) -> str | None:
        """``reason: detail`` for a log line or ``STATUS=``; None when it passed."""
        if self.ok:
            return None
        if self.reason is None:
            return self.detail or None
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)


__all__ = ["EVIDENCE", "KINDS", "KindSpec", "Proc", "Signal", "SignalKind"]
