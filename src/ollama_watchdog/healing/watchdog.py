"""The restart watchdog: a pure policy (state machine, injected clock) and the restart action.

Why this exists: Ollama hangs (GPU discovery stuck, runner wedged, connections accepted and never
answered) while its process stays alive, so systemd's ``Restart=always`` never fires. The daemon
probes Ollama and feeds the results to :class:`WatchdogPolicy`; when the policy says so, a
:class:`RestartAction` runs ``[watchdog] restart_command``. :class:`Watchdog` ties the two
together with logging and metrics, so the daemon only forwards probe results.

The policy (DESIGN.md "Restart policy") is pure: no I/O, no threads, no global clock. Every input
takes ``now``, monotonic seconds chosen by the caller, and returns a :class:`Decision`. Choices
made here, so that an operator can predict what it does:

* **States** (``ollama_watchdog_state``), first match wins: ``disabled`` (``enabled = false``:
  failures are still counted and reported, nothing is ever restarted); ``restarting`` (the action
  is running, or it finished and Ollama has not answered since, within ``startup_grace``);
  ``gave_up``; ``healthy`` (the latest probes pass); ``backoff`` (enough failures for a restart,
  but the backoff since the previous restart has not run out); ``degraded`` (probes failing, not
  yet enough of them, or inside the start-up grace).
* **What counts**: a failed liveness probe (``/api/version``: timeout, refused, non-2xx, bad
  body; the caller classifies) and, when ``[probe] deep_model`` is set, a failed deep probe while
  liveness passes (a hung model runner). A deep failure observed while liveness fails is ignored:
  the liveness count already covers that outage, and a stale deep failure must not keep the
  watchdog from calling Ollama healthy once liveness is back. Each kind has its own consecutive
  count; a success of that kind resets it. ``failure_threshold`` applies to both.
* **Reasons** (``ollama_watchdog_restarts_total{reason}``) are a fixed set of two: ``liveness``
  and ``deep_probe``. The error class (timeout, refused, ...) is in the log event's
  ``last_error`` and in ``ollama_probe_failures_total``; splitting restarts by it would add series
  without adding a decision an operator could take.
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

import contextlib
import enum
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import IO, Final

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.config import WatchdogConfig, format_duration


class State(enum.StrEnum):
    """The watchdog's state, the ``state`` label of ``ollama_watchdog_state``."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    RESTARTING = "restarting"
    BACKOFF = "backoff"
    GAVE_UP = "gave_up"
    DISABLED = "disabled"


class Reason(enum.StrEnum):
    """Why a restart was decided, the ``reason`` label of ``ollama_watchdog_restarts_total``."""

    LIVENESS = "liveness"
    DEEP_PROBE = "deep_probe"


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
    text = (error or fallback).strip().replace("\n", " ")
    return text if len(text) <= _ERROR_LIMIT else text[: _ERROR_LIMIT - 1] + "…"


def _duration(seconds: float) -> str:
    """``format_duration`` at a precision a human reads: whole seconds past ten seconds."""
    if seconds >= 10:
        seconds = float(round(seconds))
    elif seconds >= 1:
        seconds = round(seconds, 1)
    return format_duration(max(seconds, 0.0))


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
    reason: Reason | None
    event: str
    state_before: State
    state_after: State
    consecutive_failures: int
    deep_consecutive_failures: int
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

    def log_fields(self) -> dict[str, object]:
        """Key/values for the structured log event (no event name, no timestamps)."""
        fields: dict[str, object] = {
            "action": str(self.action),
            "state_before": str(self.state_before),
            "state": str(self.state_after),
            "consecutive_failures": self.consecutive_failures,
            "deep_consecutive_failures": self.deep_consecutive_failures,
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
    consecutive_failures: int
    deep_consecutive_failures: int
    restarts_total: Mapping[Reason, int]
    restart_failures_total: int
    restarts_in_window: int
    restart_budget_remaining: int
    #: the delay the next restart must wait after the latest one (0: none, or reset)
    backoff_seconds: float
    next_restart_allowed_in: float | None
    #: seconds left of the start-up (or post-restart) grace; 0 when outside it
    grace_remaining: float
    last_error: str | None
    last_reason: Reason | None
    #: restarts in the window when the policy gave up (for the sentence); 0 if it has not
    gave_up_after: int
    failure_threshold: int
    max_restarts: int
    restart_window: float
    #: the monotonic time the snapshot describes
    taken_at: float

    def status_sentence(self) -> str:
        """One line for systemd's ``STATUS=``: the state, and why, in words."""
        window = _duration(self.restart_window)
        error = f"; last error: {self.last_error}" if self.last_error else ""
        failures = max(self.consecutive_failures, self.deep_consecutive_failures)
        what = (
            "deep probes"
            if self.deep_consecutive_failures > self.consecutive_failures
            else "probes"
        )
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
                    f"({_duration(self.grace_remaining)} of grace left, {used}){error}"
                )
            return f"restarting ollama{reason}, {used}"
        if self.state is State.BACKOFF:
            wait = _duration(self.next_restart_allowed_in or 0.0)
            return (
                f"backoff: {failures} consecutive failed {what}, next restart allowed in {wait} "
                f"({_plural(self.restarts_in_window, 'restart')} in {window}){error}"
            )
        if self.state is State.DEGRADED:
            if self.grace_remaining > 0:
                return (
                    f"degraded: probes failing, not counted during startup grace "
                    f"({_duration(self.grace_remaining)} left){error}"
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

    Not thread-safe: one owner (the daemon's scheduler thread) feeds it. Times must not go
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
        self._live_failures = 0
        self._deep_failures = 0
        self._live_failing = False
        self._deep_failing = False
        self._gave_up = False
        self._gave_up_after = 0
        # decision times of past restarts, pruned to the window: the budget
        self._restart_times: deque[float] = deque()
        self._backoff = 0.0
        self._next_allowed = now
        # start of the current unbroken run of health; None while failing
        self._healthy_since: float | None = None
        self._restarts_total = dict.fromkeys(Reason, 0)
        self._restart_failures = 0
        self._last_error: str | None = None
        self._last_reason: Reason | None = None
        self._reported = self._state(now)

    # -- inputs ---------------------------------------------------------------------------

    def observe_liveness(self, ok: bool, error: str | None, now: float) -> Decision:
        """One liveness probe result (GET /api/version)."""
        now, before = self._advance(now)
        if self._in_flight:
            return self._decide(before, now)
        if ok:
            self._live_failures = 0
            self._live_failing = False
            self._note_health(now)
            return self._decide(before, now)
        self._live_failing = True
        self._healthy_since = None
        self._last_error = _short(error, "liveness probe failed")
        if now >= self._grace_until:
            self._live_failures += 1
        if self._live_failures >= self._cfg.failure_threshold:
            return self._consider_restart(Reason.LIVENESS, before, now)
        return self._decide(before, now)

    def observe_deep(self, ok: bool, error: str | None, now: float) -> Decision:
        """One deep probe result (a tiny generation with ``[probe] deep_model``)."""
        now, before = self._advance(now)
        if self._in_flight:
            return self._decide(before, now)
        if ok:
            self._deep_failures = 0
            self._deep_failing = False
            self._note_health(now)
            return self._decide(before, now)
        if self._live_failing:
            # liveness already counts this outage (module docstring)
            return self._decide(before, now)
        self._deep_failing = True
        self._healthy_since = None
        self._last_error = "deep probe: " + _short(error, "failed")
        if now >= self._grace_until:
            self._deep_failures += 1
        if self._deep_failures >= self._cfg.failure_threshold:
            return self._consider_restart(Reason.DEEP_PROBE, before, now)
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
            consecutive_failures=self._live_failures,
            deep_consecutive_failures=self._deep_failures,
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
        if self._live_failing or self._deep_failing:
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

    def _consider_restart(self, reason: Reason, before: State, now: float) -> Decision:
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
        self._live_failures = 0
        self._deep_failures = 0
        self._healthy_since = None
        return self._decide(
            before, now, event=EVENT_RESTART_DECIDED, reason=reason, action=Action.RESTART
        )

    def _wanted(self) -> bool:
        threshold = self._cfg.failure_threshold
        return self._live_failures >= threshold or self._deep_failures >= threshold

    def _state(self, now: float) -> State:
        if not self._cfg.enabled:
            return State.DISABLED
        if self._in_flight:
            return State.RESTARTING
        if self._gave_up:
            return State.GAVE_UP
        if self._after_restart and not self._answered_since_restart and now < self._grace_until:
            return State.RESTARTING
        if not (self._live_failing or self._deep_failing):
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
        reason: Reason | None = None,
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
            consecutive_failures=self._live_failures,
            deep_consecutive_failures=self._deep_failures,
            last_error=self._last_error,
            restarts_in_window=len(self._in_window(now)),
            next_restart_allowed_in=self._next_allowed_in(now),
            at=now,
        )


# -- metrics ------------------------------------------------------------------------------


def policy_metrics(snapshot: PolicySnapshot, last_restart_timestamp: float | None) -> list[Metric]:
    """The "Watchdog itself" families of DESIGN.md from one snapshot.

    ``last_restart_timestamp`` is the wall-clock time of the latest restart decision (the policy
    only knows monotonic time); 0 is exported when there was none, so the series always exists.
    """
    state = GaugeMetricFamily(
        "ollama_watchdog_state",
        "Watchdog state: exactly one of the states is 1.",
        labels=["state"],
    )
    for s in State:
        state.add_metric([s.value], 1.0 if s is snapshot.state else 0.0)
    restarts = CounterMetricFamily(
        "ollama_watchdog_restarts",
        "Restarts of Ollama decided by the watchdog (dry runs included), by reason.",
        labels=["reason"],
    )
    for r in Reason:
        restarts.add_metric([r.value], float(snapshot.restarts_total.get(r, 0)))
    failures = CounterMetricFamily(
        "ollama_watchdog_restart_failures",
        "Restart commands that failed, hung past restart_timeout or could not be run.",
        value=float(snapshot.restart_failures_total),
    )
    last = GaugeMetricFamily(
        "ollama_watchdog_last_restart_timestamp_seconds",
        "Unix time of the latest restart decision; 0 if none since the watchdog started.",
        value=float(last_restart_timestamp or 0.0),
    )
    consecutive = GaugeMetricFamily(
        "ollama_watchdog_consecutive_failures",
        "Consecutive failed liveness probes counted towards a restart (not during grace).",
        value=float(snapshot.consecutive_failures),
    )
    deep = GaugeMetricFamily(
        "ollama_watchdog_deep_probe_consecutive_failures",
        "Consecutive failed deep probes, while liveness passed, counted towards a restart.",
        value=float(snapshot.deep_consecutive_failures),
    )
    budget = GaugeMetricFamily(
        "ollama_watchdog_restart_budget_remaining",
        "Restarts still allowed inside the current restart_window (max_restarts minus used).",
        value=float(snapshot.restart_budget_remaining),
    )
    backoff = GaugeMetricFamily(
        "ollama_watchdog_backoff_seconds",
        "Delay the next restart must wait after the latest one; 0 once health held a window.",
        value=snapshot.backoff_seconds,
    )
    return [state, restarts, failures, last, consecutive, deep, budget, backoff]


# -- restart action -------------------------------------------------------------------------


class ErrorClass(enum.StrEnum):
    """Why a restart command failed: a small fixed set, logged as ``error_class``."""

    EXIT_STATUS = "exit_status"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    PERMISSION = "permission"
    OS_ERROR = "os_error"


#: bytes of the command's stderr kept (the tail: systemctl's reason is at the end)
STDERR_LIMIT: Final = 2048
#: after killing a timed-out group, how long to wait for the kernel to reap it
_REAP_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class RestartOutcome:
    """What running the restart command came to."""

    success: bool
    exit_code: int | None
    stderr_tail: str
    duration: float
    error_class: ErrorClass | None
    dry_run: bool = False

    @property
    def error(self) -> str | None:
        """A one-line cause for logs and the policy's ``last_error``; None on success."""
        if self.success:
            return None
        if self.error_class is ErrorClass.EXIT_STATUS:
            text = f"exit status {self.exit_code}"
        elif self.error_class is ErrorClass.TIMEOUT:
            text = f"timeout after {_duration(self.duration)}"
        else:
            text = str(self.error_class)
        last_line = self.stderr_tail.strip().splitlines()[-1:] if self.stderr_tail else []
        return f"{text}: {last_line[0]}" if last_line else text


class RestartAction:
    """Runs ``restart_command`` once per call, bounded by ``restart_timeout``; never raises.

    The command runs in a new session (its own process group) with stdin closed (systemctl must
    not wait for a password prompt) and stdout discarded; stderr goes to a temporary file, not a
    pipe, so a command that leaves a background process behind (a demo restarting a simulator)
    is not waited for beyond its own exit. ``subprocess.run(timeout=...)`` would kill only the
    direct child and then wait for the pipes, which a surviving grandchild holds open; here a
    timeout kills the whole group with SIGKILL.
    """

    def __init__(
        self,
        command: Sequence[str],
        timeout: float,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = tuple(command)
        self.timeout = timeout
        self.dry_run = dry_run
        self._clock = clock
        self._log = structlog.get_logger(__name__)

    @classmethod
    def from_config(cls, config: WatchdogConfig, *, dry_run: bool = False) -> RestartAction:
        return cls(config.restart_command, config.restart_timeout, dry_run=dry_run)

    def run(self) -> RestartOutcome:
        if self.dry_run:
            self._log.warning("restart_command_skipped", command=list(self.command), dry_run=True)
            return RestartOutcome(True, None, "", 0.0, None, dry_run=True)
        start = self._clock()
        try:
            outcome = self._run(start)
        except FileNotFoundError as exc:
            outcome = self._failed(ErrorClass.NOT_FOUND, str(exc), start)
        except PermissionError as exc:
            outcome = self._failed(ErrorClass.PERMISSION, str(exc), start)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # ValueError: an argv the OS cannot take (NUL byte); never let it reach the loop
            outcome = self._failed(ErrorClass.OS_ERROR, str(exc), start)
        if outcome.success:
            self._log.info(
                "restart_command_succeeded",
                command=list(self.command),
                duration_s=round(outcome.duration, 3),
            )
        else:
            self._log.error(
                "restart_command_failed",
                command=list(self.command),
                error_class=str(outcome.error_class),
                exit_code=outcome.exit_code,
                stderr=outcome.stderr_tail,
                duration_s=round(outcome.duration, 3),
            )
        return outcome

    def _failed(self, error_class: ErrorClass, message: str, start: float) -> RestartOutcome:
        return RestartOutcome(
            False, None, message[-STDERR_LIMIT:], self._clock() - start, error_class
        )

    def _run(self, start: float) -> RestartOutcome:
        if not self.command:
            raise FileNotFoundError("restart_command is empty")
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                code: int | None = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                code = None
                self._kill_group(proc)
            duration = self._clock() - start
            tail = _tail(stderr)
        if code is None:
            return RestartOutcome(False, None, tail, duration, ErrorClass.TIMEOUT)
        if code != 0:
            return RestartOutcome(False, code, tail, duration, ErrorClass.EXIT_STATUS)
        return RestartOutcome(True, 0, tail, duration, None)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(proc.pid, signal.SIGKILL)
        # a process in uninterruptible sleep outlives SIGKILL for a while; the kernel reaps it
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_REAP_TIMEOUT)


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(size - STDERR_LIMIT, 0))
    data: bytes = f.read()
    return data.decode("utf-8", errors="replace").strip()


# -- the piece the daemon wires in -----------------------------------------------------------


class Watchdog:
    """Policy + restart action + logging + metrics: what the daemon's scheduler thread feeds.

    The restart command runs on a thread of its own, so a ``systemctl restart`` that takes
    ``restart_timeout`` (90 s by default) never stalls the loop past systemd's ``WatchdogSec``.
    Its outcome is reported to the policy by the next call made on the owner's thread; the
    policy stays ``restarting`` until then. All methods are meant for one owner thread.
    It is also a collector (``name = "watchdog"``): ``collect()`` returns :func:`policy_metrics`.
    """

    name = "watchdog"

    def __init__(
        self,
        config: WatchdogConfig,
        action: RestartAction | None = None,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.policy = WatchdogPolicy(config, clock())
        self.action = action or RestartAction.from_config(config, dry_run=dry_run)
        self._log = structlog.get_logger(__name__)
        self._last_restart_wall: float | None = None
        self._worker: threading.Thread | None = None
        # written by the worker before it ends, read after join: no lock needed
        self._result: tuple[RestartOutcome, float] | None = None

    def observe_liveness(self, ok: bool, error: str | None = None) -> Decision:
        self._report_finished_restart()
        return self._handle(self.policy.observe_liveness(ok, error, self._clock()))

    def observe_deep(self, ok: bool, error: str | None = None) -> Decision:
        self._report_finished_restart()
        return self._handle(self.policy.observe_deep(ok, error, self._clock()))

    def tick(self) -> Decision:
        """Call once per loop: reports a finished restart and time-driven state changes."""
        finished = self._report_finished_restart()
        return finished or self._handle(self.policy.tick(self._clock()))

    def wait_for_restart(self, timeout: float) -> bool:
        """Wait until no restart command is running; True if none is. For shutdown and tests."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        self.tick()
        return True

    def snapshot(self) -> PolicySnapshot:
        return self.policy.snapshot(self._clock())

    def status(self) -> str:
        """The ``STATUS=`` line for sd_notify."""
        return self.policy.status_sentence(self._clock())

    def collect(self) -> list[Metric]:
        return policy_metrics(self.snapshot(), self._last_restart_wall)

    def _report_finished_restart(self) -> Decision | None:
        """Feed a finished restart to the policy (and log it) before anything else happens."""
        finished = self._collect_outcome()
        return None if finished is None else self._handle(finished)

    def _collect_outcome(self) -> Decision | None:
        worker = self._worker
        if worker is None or worker.is_alive():
            return None
        worker.join()
        self._worker = None
        result, self._result = self._result, None
        if result is None:  # the worker died without a result: count it as a failed restart
            return self.policy.restart_finished(False, "restart worker crashed", self._clock())
        outcome, finished = result
        return self.policy.restart_finished(outcome.success, outcome.error, finished)

    def _handle(self, decision: Decision) -> Decision:
        if decision.event:
            level = {
                EVENT_RESTART_DECIDED: "warning",
                EVENT_GAVE_UP: "error",
            }.get(decision.event, "info")
            getattr(self._log, level)(decision.event, **decision.log_fields())
        if decision.restart:
            self._last_restart_wall = self._wall_clock()
            self._worker = threading.Thread(
                target=self._run_action, name="ollama-watchdog-restart", daemon=True
            )
            self._worker.start()
        return decision

    def _run_action(self) -> None:
        outcome = self.action.run()
        self._result = (outcome, self._clock())


__all__ = [
    "Action",
    "Decision",
    "ErrorClass",
    "PolicySnapshot",
    "Reason",
    "RestartAction",
    "RestartOutcome",
    "State",
    "Watchdog",
    "WatchdogPolicy",
    "policy_metrics",
]
