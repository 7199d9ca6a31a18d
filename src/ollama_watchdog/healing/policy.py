"""The healing policy: a pure state machine, signals and time in, decisions out.

Why this exists: Ollama hangs (GPU discovery stuck, runner wedged, connections accepted and never
answered) while its process stays alive, so systemd's ``Restart=always`` never fires. The daemon
feeds every :class:`~ollama_watchdog.signals.Signal` to :meth:`WatchdogPolicy.observe`; when a
decision names an action, ``healing.actions`` carries it out and ``healing.watchdog`` binds the
two with logging and metrics. This module does no I/O, starts no thread and reads no clock:
every input takes ``now``, monotonic seconds chosen by the caller. Choices made here, so that an
operator can predict what it does:

* **States** (``ollama_watchdog_state``), first match wins: ``disabled`` (``enabled = false``:
  failures are still counted and reported, nothing is ever done); ``maintenance`` (a maintenance
  mark is set, or the Ollama unit was stopped on purpose: nothing is done, whatever the probes
  say); ``remediating`` (an unload, runner kill or orphan kill is running); ``restarting`` (a
  server restart is running, or it finished and Ollama has not answered since, within
  ``startup_grace``); ``gave_up``; ``draining`` (a planned action waits for the requests in
  flight to finish); ``healthy`` (the latest probes pass); ``busy`` (deep probes time out while
  Ollama keeps completing requests: never an action); ``backoff`` (enough failures, but the
  backoff of that cause has not run out); ``degraded`` (probes failing, not yet enough of them,
  or inside a grace).
* **What counts**: a failed signal of a probe kind in ``signals.KINDS`` — a failed liveness probe
  and, when ``[probe] deep_model`` is set, a failed deep probe while liveness passes. A failure
  of a kind whose ``requires`` kind is failing is ignored (that kind already counts the outage).
  Each kind has its own consecutive count; a success of that kind resets it.
  ``failure_threshold`` applies to every kind. Evidence kinds (``signals.EVIDENCE``) are never
  counted; they feed the rules below.
* **Busy is not hung.** With a log source (``progress_known``), a deep probe that *timed out*
  while Ollama made progress (a completed inference request or a runner's timing line, signal
  ``progress``) since ``busy_lookback`` before the first failure of the run is ``busy``: counted
  apart (``busy_total``), shown, never counted towards an action. Unless the deep model's own
  runner is known to have made no progress in that time (signal ``runner`` not ok: stopped, or
  no CPU time spent): then other models' traffic does not hide its wedge. Without a log source
  every failure counts, as before (what is lost: a server saturated by long generations can
  look hung).
* **The ladder for a wedged runner** (deep probe failing ``failure_threshold`` times, liveness
  passing, not busy): ``unload_model`` (``keep_alive: 0``, then the model must leave ``/api/ps``
  and its runner exit), else ``kill_runner`` (the runner process of that model), else
  ``restart_server``. A rung that failed escalates at once to the next one (the action's failure
  is the fresh evidence); a rung that worked starts a grace, and if the deep probe fails again
  past it, the next rung is used. The ladder starts again at ``unload_model`` once the deep
  probe passes. A rung with its budget spent is skipped. Without a deep model name, or with
  ``ladder = false``, the server is restarted as before. Liveness failures always restart the
  server (the server itself is not answering).
* **Other causes**, each on its own evidence and each switchable: orphan runners seen for
  ``orphan_grace`` → ``kill_orphans`` (acts at once: it breaks nothing that works); a CPU
  fallback seen for ``cpu_fallback_grace`` and GPU memory held with no model loaded for
  ``vram_grace`` → a *planned* server restart, at most once per ``cause_cooldown``.
* **Planned versus urgent.** Urgent actions (a hang: nothing flows anyway) act at once. Planned
  ones wait (state ``draining``) until nothing is in flight — no request in flight by the
  runner's slot lines, and no request line for a few seconds; where the log cannot tell
  (``in_flight`` unknown), ``planned_quiet`` without a request line — up to ``planned_max_wait``,
  then act, and the decision says so.
* **Never fight an operator.** While a maintenance mark is set or the unit is stopped on purpose,
  nothing is decided and no failure is counted; when either ends, a ``startup_grace`` starts (as
  when the watchdog starts). Reasons are recorded in ``last_error``/``STATUS=``.
* **Reasons** (``ollama_watchdog_remediations_total{action,reason}``; server restarts also in
  ``ollama_watchdog_restarts_total{reason}``) are :class:`Cause` values.
* **A remediation is decided only on fresh evidence**: a failed probe of the kind that reached
  the threshold, an action's failure (escalation), or for planned causes, evidence that has held
  for its grace (checked on every input, ticks included: a planned action waits for a quiet
  moment, which is the absence of signals).
* **The watchdog's own exhaustion is not Ollama's failure**: a failed signal whose reason is
  ``local_error`` (too many open files, no memory, no buffers or ports in this process) is not
  counted and changes nothing.
* **Start-up grace from the policy's creation**: an Ollama that was already down when the watchdog
  started is restarted, but only after ``startup_grace`` plus ``failure_threshold`` failed probes.
* **Grace after an action**: failures are not counted during ``startup_grace`` after an action
  finishes (measured from its end).
* **Backoff per cause**: the first server restart for a cause needs no wait. Each sets the delay
  before the next one for that cause: ``backoff_initial``, doubled up to ``backoff_max``, from the
  end of the restart. It resets after health held for ``restart_window``.
* **Budget per rung**: at most ``max_restarts`` server restarts, ``max_unloads`` unloads and
  ``max_kills`` kills (runner or orphans) within any ``restart_window``. An urgent restart wanted
  with its budget spent puts the policy in ``gave_up``, which is sticky until health returns; a
  planned cause with its budget spent is skipped.
* **A failed action** counts like one that did not bring health back: it uses budget, grace and
  backoff, and a failed server restart is counted in ``restart_failures_total``. A dry-run action
  is an action for the policy (the caller counts it apart).
* While an action runs, observations are ignored: the action decides what happens next.
* **Deferred by the fleet** (issue 17): the caller may report that a decided action was not
  carried out because too many other hosts of the fleet are out (``action_deferred``). Then
  nothing of the decision is spent (budget, backoff, counters are as before it), the state is
  ``deferred`` while its evidence holds, and nothing is decided before ``retry_after``; after it
  the next fresh evidence decides again (and the caller asks the fleet again). Evidence gone
  (the probes pass, the planned cause's evidence ends) ends the deferral.
* **Drain cap**: ``drain_timeout`` (``[fleet] drain_timeout`` when a fleet is configured) caps
  ``planned_max_wait``; a planned action's decision says whether the drain finished (nothing in
  flight) or timed out (``Decision.drain``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ollama_watchdog.config import HealingConfig, WatchdogConfig, human_duration
from ollama_watchdog.oneline import one_line
from ollama_watchdog.signals import (
    EVIDENCE,
    KINDS,
    UNIT_DEACTIVATING,
    Proc,
    Signal,
    SignalKind,
)


class State(enum.StrEnum):
    """The watchdog's state, the ``state`` label of ``ollama_watchdog_state``."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    BUSY = "busy"
    REMEDIATING = "remediating"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    GAVE_UP = "gave_up"
    DISABLED = "disabled"
    MAINTENANCE = "maintenance"
    DRAINING = "draining"
    DEFERRED = "deferred"


class Action(enum.StrEnum):
    """What the caller must do after an input (the ``action`` label of remediations)."""

    NONE = "none"
    UNLOAD_MODEL = "unload_model"
    KILL_RUNNER = "kill_runner"
    RESTART = "restart_server"
    KILL_ORPHANS = "kill_orphans"


#: the actions that remediate, in metric order
REMEDIES: Final = (Action.UNLOAD_MODEL, Action.KILL_RUNNER, Action.RESTART, Action.KILL_ORPHANS)


class Cause(enum.StrEnum):
    """Why an action was decided: the ``reason`` label of remediations and restarts."""

    LIVENESS = "liveness"
    DEEP_PROBE = "deep_probe"
    ORPHAN_RUNNER = "orphan_runner"
    CPU_FALLBACK = "cpu_fallback"
    VRAM_NOT_RELEASED = "vram_not_released"


#: causes whose action waits for a quiet moment (the rest are urgent)
PLANNED: Final = frozenset({Cause.CPU_FALLBACK, Cause.VRAM_NOT_RELEASED})
#: the rungs tried, in order, for a wedged runner
LADDER: Final = (Action.UNLOAD_MODEL, Action.KILL_RUNNER, Action.RESTART)

#: log event names a Decision can carry (snake_case verbs, structlog style)
EVENT_RESTART_DECIDED: Final = "restart_decided"
EVENT_REMEDIATION_DECIDED: Final = "remediation_decided"
EVENT_GAVE_UP: Final = "restart_gave_up"
EVENT_RESTART_FINISHED: Final = "restart_finished"
EVENT_REMEDIATION_FINISHED: Final = "remediation_finished"
EVENT_STATE_CHANGED: Final = "watchdog_state_changed"
EVENT_DRAIN_STARTED: Final = "drain_started"
EVENT_BUDGET_SPENT: Final = "remediation_budget_spent"
EVENT_DEFERRED: Final = "remediation_deferred"
#: ``Decision.drain`` of a planned action: how its drain ended
DRAIN_FINISHED: Final = "drain_finished"
DRAIN_TIMEOUT: Final = "drain_timeout"

#: an error text kept by the policy is cut to this many characters (logs, STATUS=)
_ERROR_LIMIT: Final = 200
#: with slot lines, "nothing in flight" also needs this long without a completed request line
_SETTLE: Final = 5.0

_PROBE_KINDS: Final = tuple(KINDS)


def _short(error: str | None, fallback: str) -> str:
    return one_line(error or fallback, _ERROR_LIMIT)


def _since(since: float | None, ok: bool, now: float) -> float | None:
    """When a condition began: kept while it holds, None once a signal says it is gone."""
    if ok:
        return None
    return now if since is None else since


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to one input: what to do, and what to log about it.

    ``event`` is the structlog event name when the input is worth one log line (an action,
    giving up, a finished action, a drain, or any state change), and ``""`` when nothing
    changed; the caller logs ``log.info(d.event, **d.log_fields())`` and carries out
    ``d.action`` when it is not ``none``.
    """

    action: Action
    reason: Cause | None
    event: str
    state_before: State
    state_after: State
    #: consecutive failed signals counted towards an action, per probe kind
    consecutive: Mapping[SignalKind, int]
    last_error: str | None
    restarts_in_window: int
    #: seconds from this decision until a restart could happen; None: none can (gave up,
    #: disabled, maintenance, action running)
    next_restart_allowed_in: float | None
    #: the monotonic time of the input
    at: float
    #: the model an unload or runner kill is for
    model: str = ""
    #: the processes a kill is for (orphans)
    procs: tuple[Proc, ...] = ()
    #: False for a planned action (it waited for a quiet moment)
    urgent: bool = True
    #: why now, in words (escalation, waited for idle, acted at the planned-wait cap)
    note: str = ""
    #: a planned action after a drain: DRAIN_FINISHED or DRAIN_TIMEOUT ("" otherwise)
    drain: str = ""
    #: how long that drain lasted, seconds
    drained_for: float = 0.0

    @property
    def restart(self) -> bool:
        return self.action is Action.RESTART

    @property
    def remediation(self) -> bool:
        return self.action is not Action.NONE

    @property
    def consecutive_failures(self) -> int:
        """Consecutive failed liveness probes (``ollama_watchdog_consecutive_failures``)."""
        return self.consecutive[SignalKind.LIVENESS]

    @property
    def deep_consecutive_failures(self) -> int:
        return self.consecutive[SignalKind.DEEP_PROBE]

    def log_fields(self) -> dict[str, object]:
        """Key/values for the structured log event (no event name, no timestamps)."""
        fields: dict[str, object] = {
            "action": str(self.action),
            "state_before": str(self.state_before),
            "state": str(self.state_after),
            **{spec.log_field: self.consecutive[kind] for kind, spec in KINDS.items()},
            "restarts_in_window": self.restarts_in_window,
            "last_error": self.last_error,
            "next_restart_allowed_in_s": (
                None
                if self.next_restart_allowed_in is None
                else round(self.next_restart_allowed_in, 3)
            ),
        }
        if self.reason is not None:
            fields["reason"] = str(self.reason)
        if self.model:
            fields["model"] = self.model
        if self.procs:
            fields["pids"] = [p.pid for p in self.procs]
        if self.remediation:
            fields["urgent"] = self.urgent
        if self.note:
            fields["note"] = self.note
        if self.drain:
            fields["drained_s"] = round(self.drained_for, 3)
        return fields


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A read-only copy of the policy at one moment: for metrics and ``STATUS=``."""

    state: State
    #: consecutive failed signals counted towards an action, per probe kind
    consecutive: Mapping[SignalKind, int]
    #: server restarts decided, by cause
    restarts_total: Mapping[Cause, int]
    #: every remediation decided, by (action, cause)
    remediations_total: Mapping[tuple[Action, Cause], int]
    restart_failures_total: int
    restarts_in_window: int
    restart_budget_remaining: int
    #: the delay the next restart must wait after the latest one (0: none, or reset)
    backoff_seconds: float
    next_restart_allowed_in: float | None
    #: seconds left of the start-up (or post-action) grace; 0 when outside it
    grace_remaining: float
    last_error: str | None
    last_reason: Cause | None
    #: restarts in the window when the policy gave up (for the sentence); 0 if it has not
    gave_up_after: int
    failure_threshold: int
    max_restarts: int
    restart_window: float
    #: the monotonic time the snapshot describes
    taken_at: float
    #: deep probes classified busy (timed out while Ollama made progress)
    busy_total: int = 0
    #: the action running now (``none`` when none)
    running: Action = Action.NONE
    #: why nothing is done now: the maintenance reason, or the unit stopped on purpose
    maintenance_reason: str = ""
    #: the planned action waiting for a quiet moment, and for how long it has waited
    draining_for: Cause | None = None
    drain_waited: float = 0.0
    #: monotonic time of the latest progress seen, None if none
    last_progress: float | None = None
    #: actions deferred by the fleet budget, by (action, cause)
    deferrals_total: Mapping[tuple[Action, Cause], int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: the deferred action and cause, and seconds until it may be decided again
    deferred: tuple[Action, Cause] | None = None
    deferred_retry_in: float = 0.0

    @property
    def consecutive_failures(self) -> int:
        """Consecutive failed liveness probes (``ollama_watchdog_consecutive_failures``)."""
        return self.consecutive[SignalKind.LIVENESS]

    @property
    def deep_consecutive_failures(self) -> int:
        return self.consecutive[SignalKind.DEEP_PROBE]

    def status_sentence(self) -> str:
        """One line for systemd's ``STATUS=``: the state, and why, in words."""
        window = human_duration(self.restart_window)
        error = f"; last error: {self.last_error}" if self.last_error else ""
        # the kind with most failures speaks; on a tie the first in KINDS (liveness)
        worst = max(KINDS, key=lambda kind: self.consecutive[kind])
        failures = self.consecutive[worst]
        what = KINDS[worst].noun
        if self.state is State.DISABLED:
            if failures:
                return (
                    f"watchdog disabled, no restarts; {failures} consecutive failed {what}{error}"
                )
            return "watchdog disabled, no restarts; ollama healthy"
        if self.state is State.MAINTENANCE:
            return f"maintenance: no remediation ({self.maintenance_reason})"
        if self.state is State.GAVE_UP:
            return f"gave up after {_plural(self.gave_up_after, 'restart')} in {window}{error}"
        if self.state is State.REMEDIATING:
            reason = f" ({self.last_reason})" if self.last_reason else ""
            return f"remediating: {str(self.running).replace('_', ' ')}{reason}"
        if self.state is State.RESTARTING:
            reason = f" ({self.last_reason})" if self.last_reason else ""
            used = f"restart {self.restarts_in_window} of {self.max_restarts} in {window}"
            if self.grace_remaining > 0 and self.next_restart_allowed_in is not None:
                return (
                    f"restarted ollama{reason}, waiting for it to answer "
                    f"({human_duration(self.grace_remaining)} of grace left, {used}){error}"
                )
            return f"restarting ollama{reason}, {used}"
        if self.state is State.DRAINING:
            return (
                f"draining: a planned restart ({self.draining_for}) waits for requests in flight "
                f"to finish ({human_duration(self.drain_waited)} so far){error}"
            )
        if self.state is State.DEFERRED and self.deferred is not None:
            action, cause = self.deferred
            return (
                f"deferred: {str(action).replace('_', ' ')} ({cause}) waits for the fleet, "
                f"asking again in {human_duration(self.deferred_retry_in)}{error}"
            )
        if self.state is State.BUSY:
            return (
                f"busy: deep probes time out while requests keep completing, no action "
                f"({_plural(self.busy_total, 'busy probe')} so far)"
            )
        if self.state is State.BACKOFF:
            wait = human_duration(self.next_restart_allowed_in or 0.0)
            return (
                f"backoff: {failures} consecutive failed {what}, next restart allowed in {wait} "
                f"({_plural(self.restarts_in_window, 'restart')} in {window}){error}"
            )
        if self.state is State.DEGRADED:
            if self.grace_remaining > 0:
                return (
                    f"degraded: probes failing, not counted during startup grace "
                    f"({human_duration(self.grace_remaining)} left){error}"
                )
            return (
                f"degraded: {failures} of {self.failure_threshold} failed {what} before a "
                f"restart{error}"
            )
        return (
            f"healthy; {_plural(self.restarts_in_window, 'restart')} in the last {window} "
            f"(budget {self.max_restarts})"
        )


@dataclass
class _Evidence:
    """What the evidence signals said last (see the module docstring for the rules)."""

    last_progress: float | None = None
    #: requests in flight by the runner's slot lines; None: the log cannot tell
    in_flight: int | None = None
    #: per model: (made progress, when) from the latest ``runner`` signal
    runners: dict[str, tuple[bool, float]] = field(default_factory=dict)
    #: orphan runner -> first seen
    orphans: dict[Proc, float] = field(default_factory=dict)
    cpu_fallback_since: float | None = None
    cpu_fallback_detail: str = ""
    vram_held_since: float | None = None
    vram_held_detail: str = ""
    unit_stopped: str = ""


@dataclass(frozen=True, slots=True)
class _Undo:
    """What one action's decision changed, as it was before (for a deferral)."""

    failures: dict[SignalKind, int]
    healthy_since: float | None
    backoff: float
    next_allowed: float
    drain: tuple[Cause, float] | None
    last_reason: Cause | None


class WatchdogPolicy:
    """The healing policy as a pure state machine; see the module docstring for its rules.

    Not thread-safe: one owner (the daemon's main loop) feeds it. Times must not go
    backwards; an earlier ``now`` than the previous input is treated as the previous one.
    ``progress_known``: a log source feeds ``progress`` signals (busy detection is on);
    ``busy_lookback``: how far before the first failed deep probe progress counts (the deep
    probe's timeout: the failed probe started that long before it was observed).
    """

    def __init__(
        self,
        config: WatchdogConfig,
        now: float,
        healing: HealingConfig | None = None,
        *,
        progress_known: bool = False,
        busy_lookback: float = 60.0,
        drain_timeout: float | None = None,
    ) -> None:
        self._cfg = config
        self._heal = healing if healing is not None else HealingConfig()
        self._max_wait = self._heal.planned_max_wait
        if drain_timeout is not None:
            self._max_wait = min(self._max_wait, drain_timeout)
        self._progress_known = progress_known
        self._busy_lookback = busy_lookback
        self._now = now
        # failures inside [.., grace_until) are not counted; the first grace is the start-up one
        self._grace_until = now + config.startup_grace
        self._after_restart = False
        self._answered_since_restart = False
        self._running = Action.NONE
        self._running_for: Cause | None = None
        self._running_model = ""
        # per probe kind: failures counted towards an action, whether the latest signal failed
        self._failures = dict.fromkeys(_PROBE_KINDS, 0)
        self._failing = dict.fromkeys(_PROBE_KINDS, False)
        self._deep_failing_since: float | None = None
        self._deep_model = ""
        self._busy = False
        self._busy_total = 0
        self._ladder = 0  # index into LADDER of the next rung for a wedged runner
        self._gave_up = False
        self._gave_up_after = 0
        # decision times of past actions per rung, pruned to the window: the budgets
        self._spent: dict[Action, deque[float]] = {a: deque() for a in REMEDIES}
        # per cause: the current backoff and when the next action for it may happen
        self._backoff = dict.fromkeys(Cause, 0.0)
        self._next_allowed = dict.fromkeys(Cause, now)
        # start of the current unbroken run of health; None while failing
        self._healthy_since: float | None = None
        self._restarts_total = dict.fromkeys(Cause, 0)
        self._remediations: dict[tuple[Action, Cause], int] = {}
        self._restart_failures = 0
        self._last_error: str | None = None
        self._last_reason: Cause | None = None
        self._ev = _Evidence()
        self._maintenance = ""
        self._drain: tuple[Cause, float] | None = None  # planned cause waiting, since
        self._budget_noted: set[Cause] = set()
        # what the running action's decision changed, to give back if the fleet defers it
        self._undo: _Undo | None = None
        self._deferrals: dict[tuple[Action, Cause], int] = {}
        self._deferred: tuple[Action, Cause] | None = None
        self._deferred_until = float("-inf")
        self._reported = self._state(now)

    def carry_counters(self, old: WatchdogPolicy) -> None:
        """Continue the cumulative counts of the policy this one replaces (a reload): they are
        Prometheus counters and never go back. Budgets, backoff and ``gave_up`` start afresh."""
        self._restarts_total = dict(old._restarts_total)
        self._remediations = dict(old._remediations)
        self._restart_failures = old._restart_failures
        self._busy_total = old._busy_total
        self._deferrals = dict(old._deferrals)

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, signal: Signal, now: float) -> Decision:
        """One signal; probe kinds are counted (rules from ``KINDS``), evidence is recorded."""
        now, before = self._advance(now)
        if signal.kind in EVIDENCE:
            self._record(signal, now)
            return self._planned_or_nothing(before, now)
        if self._running is not Action.NONE or self._held():
            return self._decide(before, now)
        kind = signal.kind
        spec = KINDS[kind]
        if signal.ok:
            self._failures[kind] = 0
            self._failing[kind] = False
            if kind is SignalKind.DEEP_PROBE:
                self._deep_failing_since = None
                self._busy = False
                self._ladder = 0
            self._note_health(now)
            return self._planned_or_nothing(before, now)
        if spec.requires is not None and self._failing[spec.requires]:
            # that kind already counts this outage (module docstring)
            return self._decide(before, now)
        if signal.reason == "local_error":
            # the watchdog ran out of its own descriptors or memory: no evidence about Ollama
            return self._decide(before, now)
        self._failing[kind] = True
        self._healthy_since = None
        self._last_error = spec.error_prefix + _short(signal.error_text(), spec.fallback)
        if kind is SignalKind.DEEP_PROBE:
            self._deep_model = signal.model
            if self._deep_failing_since is None:
                self._deep_failing_since = now
            if self._is_busy(signal):
                self._busy = True
                self._busy_total += 1
                return self._decide(before, now)
            self._busy = False
        if now >= self._grace_until:
            self._failures[kind] += 1
        if self._failures[kind] >= self._cfg.failure_threshold:
            if kind is SignalKind.LIVENESS:
                return self._urgent_restart(Cause.LIVENESS, before, now)
            return self._climb(before, now)
        return self._decide(before, now)

    def set_maintenance(self, reason: str, now: float) -> Decision:
        """A maintenance mark is set (``reason`` non-empty) or cleared (``""``)."""
        now, before = self._advance(now)
        was = self._held()
        self._maintenance = reason
        self._hold_changed(was, now)
        return self._decide(before, now)

    def action_finished(
        self, action: Action, success: bool, error: str | None, now: float
    ) -> Decision:
        """The running action reports back; ``error`` says why it failed."""
        now, before = self._advance(now)
        if self._running is Action.NONE:
            return self._decide(before, now)
        cause = self._running_for or Cause.LIVENESS
        model = self._running_model
        self._undo = None
        self._running = Action.NONE
        self._running_for = None
        # counted once carried out (not when decided: a deferred or refused action never ran,
        # and a counter must never be taken back)
        if action is Action.RESTART:
            self._restarts_total[cause] += 1
        self._remediations[(action, cause)] = self._remediations.get((action, cause), 0) + 1
        event = EVENT_RESTART_FINISHED if action is Action.RESTART else EVENT_REMEDIATION_FINISHED
        what = "restart" if action is Action.RESTART else str(action).replace("_", " ")
        if not success:
            self._last_error = f"{what} failed: " + _short(error, "unknown error")
        if not success and action in LADDER[:-1] and cause is Cause.DEEP_PROBE:
            # the runner survived this rung: escalate now, the failure is the fresh evidence
            self._ladder = LADDER.index(action) + 1
            self._deep_model = model
            return self._climb(before, now, note=f"{what} failed, escalating")
        self._grace_until = now + self._cfg.startup_grace
        if action is Action.RESTART:
            self._after_restart = True
            self._answered_since_restart = False
            self._next_allowed[cause] = now + self._backoff[cause]
            self._ladder = 0
            if not success:
                self._restart_failures += 1
        elif success and action in LADDER:
            self._ladder = LADDER.index(action) + 1
        return self._decide(before, now, event=event, reason=cause)

    def action_deferred(
        self, action: Action, now: float, retry_after: float, why: str = ""
    ) -> Decision:
        """The running action was not carried out: the fleet's budget is at its limit.

        Nothing of its decision is spent; the state is ``deferred`` and nothing is decided
        for ``retry_after`` seconds (module docstring). ``why`` says which hosts are out.
        """
        now, before = self._advance(now)
        key = self._take_back(action)
        if key is None:
            return self._decide(before, now)
        self._deferrals[key] = self._deferrals.get(key, 0) + 1
        self._deferred = key
        self._deferred_until = now + max(retry_after, 0.0)
        self._last_error = f"{str(action).replace('_', ' ')} deferred: " + _short(
            why, "the fleet budget is at its limit"
        )
        return self._decide(before, now, event=EVENT_DEFERRED, reason=key[1], action=Action.NONE)

    def action_refused(self, action: Action, now: float, why: str) -> Decision:
        """The running action was not carried out: the last check before it found the unit
        stopped on purpose (an operator's stop that began after the decision). Nothing of the
        decision is spent or counted; the unit's evidence then holds everything."""
        now, before = self._advance(now)
        if self._take_back(action) is not None:
            self._last_error = f"{str(action).replace('_', ' ')} not carried out: " + _short(
                why, "the unit was stopped on purpose"
            )
        return self._decide(before, now)

    def _take_back(self, action: Action) -> tuple[Action, Cause] | None:
        """Undo the decision of the running action that was not carried out: its budget,
        backoff, failure counts and drain as they were. None when nothing was running."""
        if self._running is Action.NONE or self._undo is None:
            return None
        cause = self._running_for or Cause.LIVENESS
        undo, self._undo = self._undo, None
        spent = self._spent[action]
        if spent:
            spent.pop()
        self._failures = dict(undo.failures)
        self._healthy_since = undo.healthy_since
        self._backoff[cause] = undo.backoff
        self._next_allowed[cause] = undo.next_allowed
        self._drain = undo.drain
        self._last_reason = undo.last_reason
        self._running = Action.NONE
        self._running_for = None
        return (action, cause)

    def restart_finished(self, success: bool, error: str | None, now: float) -> Decision:
        """The restart action reports back (``action_finished`` for a server restart)."""
        return self.action_finished(Action.RESTART, success, error, now)

    def tick(self, now: float) -> Decision:
        """Time passed without an input: report a state change due to time alone (grace or
        backoff running out), and start a planned action whose quiet moment has come."""
        now, before = self._advance(now)
        return self._planned_or_nothing(before, now)

    # -- outputs --------------------------------------------------------------------------

    @property
    def config(self) -> WatchdogConfig:
        return self._cfg

    @property
    def healing(self) -> HealingConfig:
        return self._heal

    def snapshot(self, now: float) -> PolicySnapshot:
        """The policy as of ``now`` (does not change it)."""
        now = max(now, self._now)
        in_window = self._in_window(Action.RESTART, now)
        return PolicySnapshot(
            state=self._state(now),
            consecutive=MappingProxyType(dict(self._failures)),
            restarts_total=MappingProxyType(dict(self._restarts_total)),
            remediations_total=MappingProxyType(dict(self._remediations)),
            restart_failures_total=self._restart_failures,
            restarts_in_window=len(in_window),
            restart_budget_remaining=max(self._cfg.max_restarts - len(in_window), 0),
            backoff_seconds=max(self._backoff[Cause.LIVENESS], self._backoff[Cause.DEEP_PROBE]),
            next_restart_allowed_in=self._next_allowed_in(now),
            grace_remaining=max(self._grace_until - now, 0.0),
            last_error=self._last_error,
            last_reason=self._last_reason,
            gave_up_after=self._gave_up_after if self._gave_up else 0,
            failure_threshold=self._cfg.failure_threshold,
            max_restarts=self._cfg.max_restarts,
            restart_window=self._cfg.restart_window,
            taken_at=now,
            busy_total=self._busy_total,
            running=self._running,
            maintenance_reason=self._held(),
            draining_for=self._drain[0] if self._drain else None,
            drain_waited=now - self._drain[1] if self._drain else 0.0,
            last_progress=self._ev.last_progress,
            deferrals_total=MappingProxyType(dict(self._deferrals)),
            deferred=self._deferred if self._deferral_holds() else None,
            deferred_retry_in=max(self._deferred_until - now, 0.0),
        )

    def status_sentence(self, now: float) -> str:
        return self.snapshot(now).status_sentence()

    # -- evidence -------------------------------------------------------------------------

    def _record(self, signal: Signal, now: float) -> None:
        ev, kind = self._ev, signal.kind
        if kind is SignalKind.PROGRESS:
            ev.last_progress = now
            if signal.model:
                ev.runners[signal.model] = (True, now)
        elif kind is SignalKind.IN_FLIGHT:
            ev.in_flight = None if signal.count is None else int(signal.count)
        elif kind is SignalKind.RUNNER:
            if signal.model:
                ev.runners[signal.model] = (signal.ok, now)
        elif kind is SignalKind.ORPHANS:
            ev.orphans = {p: ev.orphans.get(p, now) for p in signal.procs}
        elif kind is SignalKind.CPU_FALLBACK:
            ev.cpu_fallback_since = _since(ev.cpu_fallback_since, signal.ok, now)
            ev.cpu_fallback_detail = signal.detail
        elif kind is SignalKind.VRAM_HELD:
            ev.vram_held_since = _since(ev.vram_held_since, signal.ok, now)
            ev.vram_held_detail = signal.detail
        elif kind is SignalKind.UNIT:
            if not signal.ok and self._own_restart_stopping(signal.detail):
                return
            was = self._held()
            ev.unit_stopped = "" if signal.ok else (signal.detail or "stopped")
            self._hold_changed(was, now)

    def _own_restart_stopping(self, detail: str) -> bool:
        """The unit is ``deactivating`` because of our own restart (``systemctl restart``
        stops before it starts), while it runs or until the new server first answers: no
        operator's stop. An ``inactive`` unit then is one (a stop replaced our job)."""
        ours = self._running is Action.RESTART or (
            self._after_restart and not self._answered_since_restart
        )
        return ours and detail.startswith(UNIT_DEACTIVATING)

    def _hold_changed(self, was: str, now: float) -> None:
        """A hold (maintenance, operator stop) began or ended: a planned wait is dropped, and
        when the last hold ends the policy starts afresh."""
        if was and not self._held():
            self._resume(now)
        elif self._held():
            self._drain = None

    def _is_busy(self, signal: Signal) -> bool:
        if not self._progress_known or signal.reason != "timeout":
            return False
        since = (self._deep_failing_since or self._now) - self._busy_lookback
        progress = self._ev.last_progress
        if progress is None or progress < since:
            return False
        runner = self._ev.runners.get(signal.model) if signal.model else None
        # the deep model's own runner made no progress lately: other traffic hides a wedge
        return not (runner is not None and not runner[0] and runner[1] >= since)

    def _held(self) -> str:
        """Why nothing may be done now ("" when something may)."""
        if self._maintenance:
            return self._maintenance
        if self._ev.unit_stopped:
            return f"ollama unit stopped on purpose ({self._ev.unit_stopped})"
        return ""

    def _resume(self, now: float) -> None:
        """Maintenance or an operator's stop ended: start afresh, as at start-up."""
        self._grace_until = now + self._cfg.startup_grace
        self._failures = dict.fromkeys(_PROBE_KINDS, 0)
        self._failing = dict.fromkeys(_PROBE_KINDS, False)
        self._deep_failing_since = None
        self._busy = False
        self._ladder = 0
        self._gave_up = False

    # -- deciding -------------------------------------------------------------------------

    def _advance(self, now: float) -> tuple[float, State]:
        self._now = max(now, self._now)
        return self._now, self._reported

    def _note_health(self, now: float) -> None:
        if any(self._failing.values()):
            return
        self._gave_up = False
        self._answered_since_restart = True
        if self._healthy_since is None:
            self._healthy_since = now
        elif now - self._healthy_since >= self._cfg.restart_window:
            # health held for a whole window: the next action starts from backoff_initial
            self._backoff = dict.fromkeys(Cause, 0.0)

    def _in_window(self, action: Action, now: float) -> list[float]:
        return [t for t in self._spent[action] if now - t < self._cfg.restart_window]

    def _limit(self, action: Action) -> int:
        if action is Action.RESTART:
            return self._cfg.max_restarts
        if action is Action.UNLOAD_MODEL:
            return self._heal.max_unloads
        return self._heal.max_kills

    def _budget_left(self, action: Action, now: float) -> bool:
        spent = self._spent[action]
        while spent and now - spent[0] >= self._cfg.restart_window:
            spent.popleft()
        return len(spent) < self._limit(action)

    def _deferral_holds(self) -> bool:
        """A deferral lasts while the evidence of its cause does."""
        if self._deferred is None:
            return False
        cause, ev = self._deferred[1], self._ev
        if cause is Cause.ORPHAN_RUNNER:
            return bool(ev.orphans)
        if cause is Cause.CPU_FALLBACK:
            return ev.cpu_fallback_since is not None
        if cause is Cause.VRAM_NOT_RELEASED:
            return ev.vram_held_since is not None
        return any(self._failing.values())

    def _may_act(self, now: float) -> bool:
        # failures are not counted inside the grace, so the grace test is a second line of
        # defence for the promise "never an action during startup_grace"
        return (
            self._cfg.enabled
            and not self._gave_up
            and not self._held()
            and self._running is Action.NONE
            and now >= self._grace_until
            and not (self._deferral_holds() and now < self._deferred_until)
        )

    def _climb(self, before: State, now: float, note: str = "") -> Decision:
        """A wedged runner: the first rung from the current one that can be tried."""
        if not self._may_act(now):
            return self._decide(before, now)
        model = self._deep_model
        for rung in LADDER[self._ladder :]:
            if rung is Action.RESTART:
                return self._urgent_restart(Cause.DEEP_PROBE, before, now, note=note)
            if not (self._heal.ladder and model) or not self._budget_left(rung, now):
                continue
            return self._start(rung, Cause.DEEP_PROBE, before, now, model=model, note=note)
        return self._urgent_restart(Cause.DEEP_PROBE, before, now, note=note)

    def _urgent_restart(
        self, cause: Cause, before: State, now: float, note: str = ""
    ) -> Decision:
        if not self._may_act(now):
            return self._decide(before, now)
        if not self._budget_left(Action.RESTART, now):
            self._gave_up = True
            self._gave_up_after = len(self._spent[Action.RESTART])
            return self._decide(before, now, event=EVENT_GAVE_UP, reason=cause)
        if now < self._next_allowed[cause]:
            return self._decide(before, now)
        return self._start(Action.RESTART, cause, before, now, note=note)

    def _start(
        self,
        action: Action,
        cause: Cause,
        before: State,
        now: float,
        *,
        model: str = "",
        procs: tuple[Proc, ...] = (),
        urgent: bool = True,
        note: str = "",
        drain: str = "",
        drained_for: float = 0.0,
    ) -> Decision:
        self._undo = _Undo(
            failures=dict(self._failures),
            healthy_since=self._healthy_since,
            backoff=self._backoff[cause],
            next_allowed=self._next_allowed[cause],
            drain=self._drain,
            last_reason=self._last_reason,
        )
        self._deferred = None
        self._spent[action].append(now)
        if action is Action.RESTART:
            initial, ceiling = self._cfg.backoff_initial, self._cfg.backoff_max
            current = self._backoff[cause]
            self._backoff[cause] = initial if current <= 0 else min(current * 2, ceiling)
            self._failures = dict.fromkeys(_PROBE_KINDS, 0)
            self._healthy_since = None
        elif action is not Action.KILL_ORPHANS:
            self._failures[SignalKind.DEEP_PROBE] = 0
        if cause in PLANNED:
            self._next_allowed[cause] = now + self._heal.cause_cooldown
        self._running = action
        self._running_for = cause
        self._running_model = model
        self._last_reason = cause
        self._drain = None
        event = EVENT_RESTART_DECIDED if action is Action.RESTART else EVENT_REMEDIATION_DECIDED
        return self._decide(
            before,
            now,
            event=event,
            reason=cause,
            action=action,
            model=model,
            procs=procs,
            urgent=urgent,
            note=note,
            drain=drain,
            drained_for=drained_for,
        )

    def _planned_or_nothing(self, before: State, now: float) -> Decision:
        """Evidence-driven causes: orphans (at once), then planned restarts (when quiet)."""
        if not self._may_act(now):
            return self._decide(before, now)
        heal, ev = self._heal, self._ev
        if heal.orphan_runners and ev.orphans:
            due = tuple(p for p, seen in ev.orphans.items() if now - seen >= heal.orphan_grace)
            if due and self._budget_left(Action.KILL_ORPHANS, now):
                return self._start(
                    Action.KILL_ORPHANS, Cause.ORPHAN_RUNNER, before, now, procs=due
                )
        wanted = self._wanted_planned(now)
        if wanted is None:
            self._drain = None
            return self._decide(before, now)
        cause, detail = wanted
        if not self._budget_left(Action.RESTART, now):
            self._drain = None
            if cause not in self._budget_noted:
                self._budget_noted.add(cause)
                self._last_error = f"{cause}: {detail}; restart budget spent, skipped"
                return self._decide(before, now, event=EVENT_BUDGET_SPENT, reason=cause)
            return self._decide(before, now)
        self._budget_noted.discard(cause)
        if self._drain is None or self._drain[0] is not cause:
            self._drain = (cause, now)
            self._last_error = f"{cause}: {detail}"
            if not self._idle(now):
                return self._decide(before, now, event=EVENT_DRAIN_STARTED, reason=cause)
        waited = now - self._drain[1]
        if self._idle(now):
            note = f"nothing in flight after {human_duration(waited)}"
            drain = DRAIN_FINISHED
        elif waited >= self._max_wait:
            note = f"requests still in flight after {human_duration(waited)}: acting at the cap"
            drain = DRAIN_TIMEOUT
        else:
            return self._decide(before, now)
        return self._start(
            Action.RESTART, cause, before, now, urgent=False, note=note, drain=drain,
            drained_for=waited,
        )  # fmt: skip

    def _wanted_planned(self, now: float) -> tuple[Cause, str] | None:
        heal, ev = self._heal, self._ev
        if any(self._failing.values()):
            return None  # a failing probe is the urgent path's business
        candidates = (
            (heal.cpu_fallback, ev.cpu_fallback_since, heal.cpu_fallback_grace,
             Cause.CPU_FALLBACK, ev.cpu_fallback_detail),
            (heal.vram_not_released, ev.vram_held_since, heal.vram_grace,
             Cause.VRAM_NOT_RELEASED, ev.vram_held_detail),
        )  # fmt: skip
        for enabled, since, grace, cause, detail in candidates:
            due = enabled and since is not None and now - since >= grace
            if due and now >= self._next_allowed[cause]:
                return cause, detail or str(cause)
        return None

    def _idle(self, now: float) -> bool:
        ev = self._ev
        quiet = now - ev.last_progress if ev.last_progress is not None else float("inf")
        if ev.in_flight is not None:
            return ev.in_flight <= 0 and quiet >= _SETTLE
        return quiet >= self._heal.planned_quiet

    def _wanted(self) -> bool:
        threshold = self._cfg.failure_threshold
        return any(n >= threshold for n in self._failures.values())

    def _state(self, now: float) -> State:
        if not self._cfg.enabled:
            return State.DISABLED
        if self._held():
            return State.MAINTENANCE
        if self._running is Action.RESTART:
            return State.RESTARTING
        if self._running is not Action.NONE:
            return State.REMEDIATING
        if self._gave_up:
            return State.GAVE_UP
        if self._after_restart and not self._answered_since_restart and now < self._grace_until:
            return State.RESTARTING
        if self._deferral_holds():
            return State.DEFERRED
        if self._drain is not None:
            return State.DRAINING
        if not any(self._failing.values()):
            return State.HEALTHY
        if self._busy and not self._failing[SignalKind.LIVENESS]:
            return State.BUSY
        cause = Cause.LIVENESS if self._failing[SignalKind.LIVENESS] else Cause.DEEP_PROBE
        if self._wanted() and now < self._next_allowed[cause]:
            return State.BACKOFF
        return State.DEGRADED

    def _next_allowed_in(self, now: float) -> float | None:
        if not self._cfg.enabled or self._gave_up or self._running is not Action.NONE:
            return None
        if self._held() or self._cfg.max_restarts <= 0:
            return None
        cause = Cause.DEEP_PROBE if self._failing[SignalKind.DEEP_PROBE] else Cause.LIVENESS
        if self._failing[SignalKind.LIVENESS]:
            cause = Cause.LIVENESS
        earliest = max(self._grace_until, self._next_allowed[cause])
        if self._deferral_holds():
            earliest = max(earliest, self._deferred_until)
        in_window = self._in_window(Action.RESTART, now)
        if len(in_window) >= self._cfg.max_restarts:
            # the budget frees up when enough old restarts leave the window
            earliest = max(earliest, in_window[-self._cfg.max_restarts] + self._cfg.restart_window)
        return max(earliest - now, 0.0)

    def _decide(
        self,
        before: State,
        now: float,
        *,
        event: str = "",
        reason: Cause | None = None,
        action: Action = Action.NONE,
        model: str = "",
        procs: tuple[Proc, ...] = (),
        urgent: bool = True,
        note: str = "",
        drain: str = "",
        drained_for: float = 0.0,
    ) -> Decision:
        if self._deferred is not None and not self._deferral_holds():
            self._deferred = None  # its evidence is gone
        after = self._state(now)
        self._reported = after
        if not event and after is not before:
            event = EVENT_STATE_CHANGED
        return Decision(
            action=action,
            reason=reason,
            event=event,
            state_before=before,
            state_after=after,
            consecutive=MappingProxyType(dict(self._failures)),
            last_error=self._last_error,
            restarts_in_window=len(self._in_window(Action.RESTART, now)),
            next_restart_allowed_in=self._next_allowed_in(now),
            at=now,
            model=model,
            procs=procs,
            urgent=urgent,
            note=note,
            drain=drain,
            drained_for=drained_for,
        )


__all__ = [
    "DRAIN_FINISHED",
    "DRAIN_TIMEOUT",
    "EVENT_DEFERRED",
    "LADDER",
    "PLANNED",
    "REMEDIES",
    "Action",
    "Cause",
    "Decision",
    "PolicySnapshot",
    "State",
    "WatchdogPolicy",
]
