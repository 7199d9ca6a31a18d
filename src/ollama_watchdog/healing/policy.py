"""The restart policy: a pure state machine, signals and time in, decisions out.

Why this exists: Ollama hangs (GPU discovery stuck, runner wedged, connections accepted and never
answered) while its process stays alive, so systemd's ``Restart=always`` never fires. The daemon
feeds every :class:`~ollama_watchdog.signals.Signal` to :meth:`WatchdogPolicy.observe`; when a
decision says so, ``healing.actions`` runs the restart and ``healing.watchdog`` binds the two
with logging and metrics. This module does no I/O, starts no thread and reads no clock.

The policy (DESIGN.md "Restart policy") is pure: no I/O, no threads, no global clock. Every input
takes ``now``, monotonic seconds chosen by the caller, and returns a :class:`Decision`. Choices
made here, so that an operator can predict what it does:

* **States** (``ollama_watchdog_state``), first match wins: ``disabled`` (``enabled = false``:
  failures are still counted and reported, nothing is ever restarted); ``restarting`` (the action
  is running, or it finished and Ollama has not answered since, within ``startup_grace``);
  ``gave_up``; ``healthy`` (the latest probes pass); ``backoff`` (enough failures for a restart,
  but the backoff since the previous restart has not run out); ``degraded`` (probes failing, not
  yet enough of them, or inside the start-up grace).
* **What counts**: a failed signal of any kind in ``signals.KINDS``: today a failed liveness
  probe (``/api/version``: timeout, refused, non-2xx, bad body; the producer classifies) and,
  when ``[probe] deep_model`` is set, a failed deep probe while liveness passes (a hung model
  runner). A failure of a kind whose ``requires`` kind is failing is ignored (a deep failure
  while liveness fails: the liveness count already covers that outage, and a stale deep failure
  must not keep the watchdog from calling Ollama healthy once liveness is back). Each kind has
  its own consecutive count; a success of that kind resets it. ``failure_threshold`` applies to
  every kind.
* **Reasons** (``ollama_watchdog_restarts_total{reason}``) are the signal kinds, today two:
  ``liveness`` and ``deep_probe``. The error class (timeout, refused, ...) is in the log event's
  ``last_error`` and in ``ollama_probe_failures_total``; splitting restarts by it would add series
  without adding a decision an operator could take.
* **The watchdog's own exhaustion is not Ollama's failure**: a failed signal whose reason is
  ``local_error`` (too many open files, no memory, no buffers or ports in this process) is not
  counted and changes nothing.
* **A restart is decided only on a failed observation** of the kind that reached the threshold,
  never on a success or on a mere timer tick, so it always rests on fresh evidence.
* **Start-up grace from the policy's creation**: an Ollama that was already down when the watchdog
  started is restarted, but only after ``startup_grace`` plus ``failure_threshold`` failed probes
  (about a minute with the defaults) — not instantly (the operator may be mid-maintenance, or the
  two units may be starting together), and not never.
* **Grace after a restart**: failures are not counted during ``startup_grace`` after the action
  finishes (measured from its end: a slow ``systemctl restart`` must not eat the grace).
* **Backoff**: the first restart needs no wait. Each restart sets the delay before the next one:
  ``backoff_initial``, doubled per restart up to ``backoff_max``, measured from the end of the
  restart. The delay resets to nothing only after health held continuously for
  ``restart_window``; a short recovery between two failures does not reset it (that is a flapping
  Ollama, and restarting it faster would not help).
* **Budget**: at most ``max_restarts`` restart decisions within any ``restart_window``. A restart
  wanted with the budget spent puts the policy in ``gave_up``, which is sticky: the budget freeing
  up later does not leave it, only health returning (a success that leaves no failure counted)
  or a new policy (the watchdog restarted). Health returning does not refill the budget.
* **A failed restart** (the command failed, hung or was missing) counts like a restart that did
  not bring health back: it uses budget, grace and backoff (the command may have half worked,
  e.g. systemd still processing the job), and it is counted in
  ``ollama_watchdog_restart_failures_total``. A dry-run restart is a restart for the policy.
* While the action runs, observations are ignored: the restart decides what happens next.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ollama_watchdog.config import WatchdogConfig, human_duration
from ollama_watchdog.oneline import one_line
from ollama_watchdog.signals import KINDS, Signal, SignalKind


class State(enum.StrEnum):
    """The watchdog's state, the ``state`` label of ``ollama_watchdog_state``."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    GAVE_UP = "gave_up"
    DISABLED = "disabled"


class Action(enum.StrEnum):
    """What the caller must do after an input."""

    NONE = "none"
    RESTART = "restart"


#: log event names a Decision can carry (snake_case verbs, structlog style)
EVENT_RESTART_DECIDED: Final = "restart_decided"
EVENT_GAVE_UP: Final = "restart_gave_up"
EVENT_RESTART_FINISHED: Final = "restart_finished"
EVENT_STATE_CHANGED: Final = "watchdog_state_changed"

#: an error text kept by the policy is cut to this many characters (logs, STATUS=)
_ERROR_LIMIT: Final = 200


def _short(error: str | None, fallback: str) -> str:
    return one_line(error or fallback, _ERROR_LIMIT)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer to one input: what to do, and what to log about it.

    ``event`` is the structlog event name when the input is worth one log line (a restart, giving
    up, a finished restart, or any state change), and ``""`` when nothing changed; the caller
    logs ``log.info(d.event, **d.log_fields())`` and runs the restart when ``d.restart``.
    """

    action: Action
    reason: SignalKind | None
    event: str
    state_before: State
    state_after: State
    #: consecutive failed signals counted towards a restart, per kind (every kind present)
    consecutive: Mapping[SignalKind, int]
    last_error: str | None
    restarts_in_window: int
    #: seconds from this decision until a restart could happen; None: none can (gave up,
    #: disabled, restart running)
    next_restart_allowed_in: float | None
    #: the monotonic time of the input
    at: float

    @property
    def restart(self) -> bool:
        return self.action is Action.RESTART

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
        return fields


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """A read-only copy of the policy at one moment: for metrics and ``STATUS=``."""

    state: State
    #: consecutive failed signals counted towards a restart, per kind (every kind present)
    consecutive: Mapping[SignalKind, int]
    restarts_total: Mapping[SignalKind, int]
    restart_failures_total: int
    restarts_in_window: int
    restart_budget_remaining: int
    #: the delay the next restart must wait after the latest one (0: none, or reset)
    backoff_seconds: float
    next_restart_allowed_in: float | None
    #: seconds left of the start-up (or post-restart) grace; 0 when outside it
    grace_remaining: float
    last_error: str | None
    last_reason: SignalKind | None
    #: restarts in the window when the policy gave up (for the sentence); 0 if it has not
    gave_up_after: int
    failure_threshold: int
    max_restarts: int
    restart_window: float
    #: the monotonic time the snapshot describes
    taken_at: float

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
        if self.state is State.GAVE_UP:
            return f"gave up after {_plural(self.gave_up_after, 'restart')} in {window}{error}"
        if self.state is State.RESTARTING:
            reason = f" ({self.last_reason})" if self.last_reason else ""
            used = f"restart {self.restarts_in_window} of {self.max_restarts} in {window}"
            if self.grace_remaining > 0 and self.next_restart_allowed_in is not None:
                return (
                    f"restarted ollama{reason}, waiting for it to answer "
                    f"({human_duration(self.grace_remaining)} of grace left, {used}){error}"
                )
            return f"restarting ollama{reason}, {used}"
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


class WatchdogPolicy:
    """The restart policy as a pure state machine; see the module docstring for its rules.

    Not thread-safe: one owner (the daemon's main loop) feeds it. Times must not go
    backwards; an earlier ``now`` than the previous input is treated as the previous one.
    """

    def __init__(self, config: WatchdogConfig, now: float) -> None:
        self._cfg = config
        self._now = now
        # failures inside [.., grace_until) are not counted; the first grace is the start-up one
        self._grace_until = now + config.startup_grace
        self._after_restart = False
        self._answered_since_restart = False
        self._in_flight = False
        # per kind: failures counted towards a restart, and whether the latest signal failed
        self._failures = dict.fromkeys(SignalKind, 0)
        self._failing = dict.fromkeys(SignalKind, False)
        self._gave_up = False
        self._gave_up_after = 0
        # decision times of past restarts, pruned to the window: the budget
        self._restart_times: deque[float] = deque()
        self._backoff = 0.0
        self._next_allowed = now
        # start of the current unbroken run of health; None while failing
        self._healthy_since: float | None = None
        self._restarts_total = dict.fromkeys(SignalKind, 0)
        self._restart_failures = 0
        self._last_error: str | None = None
        self._last_reason: SignalKind | None = None
        self._reported = self._state(now)

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, signal: Signal, now: float) -> Decision:
        """One signal (a probe passed or failed); the rules of its kind come from ``KINDS``."""
        now, before = self._advance(now)
        if self._in_flight:
            return self._decide(before, now)
        kind = signal.kind
        spec = KINDS[kind]
        if signal.ok:
            self._failures[kind] = 0
            self._failing[kind] = False
            self._note_health(now)
            return self._decide(before, now)
        if spec.requires is not None and self._failing[spec.requires]:
            # that kind already counts this outage (module docstring)
            return self._decide(before, now)
        if signal.reason == "local_error":
            # the watchdog ran out of its own descriptors or memory: no evidence about Ollama
            return self._decide(before, now)
        self._failing[kind] = True
        self._healthy_since = None
        self._last_error = spec.error_prefix + _short(signal.error_text(), spec.fallback)
        if now >= self._grace_until:
            self._failures[kind] += 1
        if self._failures[kind] >= self._cfg.failure_threshold:
            return self._consider_restart(kind, before, now)
        return self._decide(before, now)

    def restart_finished(self, success: bool, error: str | None, now: float) -> Decision:
        """The restart action reports back; ``error`` says why it failed."""
        now, before = self._advance(now)
        if not self._in_flight:
            return self._decide(before, now)
        self._in_flight = False
        self._after_restart = True
        self._answered_since_restart = False
        self._grace_until = now + self._cfg.startup_grace
        self._next_allowed = now + self._backoff
        if not success:
            self._restart_failures += 1
            self._last_error = "restart failed: " + _short(error, "unknown error")
        return self._decide(before, now, event=EVENT_RESTART_FINISHED)

    def tick(self, now: float) -> Decision:
        """Time passed without an input: report a state change due to time alone (grace or
        backoff running out). Never restarts (a restart needs a fresh failed probe)."""
        now, before = self._advance(now)
        return self._decide(before, now)

    # -- outputs --------------------------------------------------------------------------

    @property
    def config(self) -> WatchdogConfig:
        return self._cfg

    def snapshot(self, now: float) -> PolicySnapshot:
        """The policy as of ``now`` (does not change it)."""
        now = max(now, self._now)
        in_window = self._in_window(now)
        return PolicySnapshot(
            state=self._state(now),
            consecutive=MappingProxyType(dict(self._failures)),
            restarts_total=MappingProxyType(dict(self._restarts_total)),
            restart_failures_total=self._restart_failures,
            restarts_in_window=len(in_window),
            restart_budget_remaining=max(self._cfg.max_restarts - len(in_window), 0),
            backoff_seconds=self._backoff,
            next_restart_allowed_in=self._next_allowed_in(now),
            grace_remaining=max(self._grace_until - now, 0.0),
            last_error=self._last_error,
            last_reason=self._last_reason,
            gave_up_after=self._gave_up_after if self._gave_up else 0,
            failure_threshold=self._cfg.failure_threshold,
            max_restarts=self._cfg.max_restarts,
            restart_window=self._cfg.restart_window,
            taken_at=now,
        )

    def status_sentence(self, now: float) -> str:
        return self.snapshot(now).status_sentence()

    # -- internals ------------------------------------------------------------------------

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
            # health held for a whole window: the next restart starts from backoff_initial
            self._backoff = 0.0

    def _in_window(self, now: float) -> list[float]:
        return [t for t in self._restart_times if now - t < self._cfg.restart_window]

    def _consider_restart(self, reason: SignalKind, before: State, now: float) -> Decision:
        cfg = self._cfg
        # failures are not counted inside the grace, so the last test is a second line of
        # defence for the promise "never a restart during startup_grace"
        if not cfg.enabled or self._gave_up or now < self._grace_until:
            return self._decide(before, now)
        while self._restart_times and now - self._restart_times[0] >= cfg.restart_window:
            self._restart_times.popleft()
        if len(self._restart_times) >= cfg.max_restarts:
            self._gave_up = True
            self._gave_up_after = len(self._restart_times)
            return self._decide(before, now, event=EVENT_GAVE_UP, reason=reason)
        if now < self._next_allowed:
            return self._decide(before, now)
        self._restart_times.append(now)
        self._backoff = (
            cfg.backoff_initial if self._backoff <= 0 else min(self._backoff * 2, cfg.backoff_max)
        )
        self._in_flight = True
        self._restarts_total[reason] += 1
        self._last_reason = reason
        self._failures = dict.fromkeys(SignalKind, 0)
        self._healthy_since = None
        return self._decide(
            before, now, event=EVENT_RESTART_DECIDED, reason=reason, action=Action.RESTART
        )

    def _wanted(self) -> bool:
        threshold = self._cfg.failure_threshold
        return any(n >= threshold for n in self._failures.values())

    def _state(self, now: float) -> State:
        if not self._cfg.enabled:
            return State.DISABLED
        if self._in_flight:
            return State.RESTARTING
        if self._gave_up:
            return State.GAVE_UP
        if self._after_restart and not self._answered_since_restart and now < self._grace_until:
            return State.RESTARTING
        if not any(self._failing.values()):
            return State.HEALTHY
        if self._wanted() and now < self._next_allowed:
            return State.BACKOFF
        return State.DEGRADED

    def _next_allowed_in(self, now: float) -> float | None:
        if not self._cfg.enabled or self._gave_up or self._in_flight:
            return None
        earliest = max(self._grace_until, self._next_allowed)
        in_window = self._in_window(now)
        if self._cfg.max_restarts <= 0:
            return None
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
        reason: SignalKind | None = None,
        action: Action = Action.NONE,
    ) -> Decision:
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
            restarts_in_window=len(self._in_window(now)),
            next_restart_allowed_in=self._next_allowed_in(now),
            at=now,
        )


__all__ = ["Action", "Decision", "PolicySnapshot", "State", "WatchdogPolicy"]
