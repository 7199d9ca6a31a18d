"""Binds the policy and the actions to the daemon: logging, metrics, one worker thread.

:class:`Watchdog` is what the daemon's main loop feeds: every :class:`~ollama_watchdog.signals.
Signal` goes to :meth:`Watchdog.observe`, which asks ``healing.policy`` for a decision, logs it
as one structured event, and runs the action ``healing.actions`` provides on a worker thread.
Each turn it also reads the maintenance mark (``healing.maintenance``), so ``ollama-watchdog
maintenance on`` takes effect within a second without a restart. It is also the collector named
``watchdog``: :meth:`Watchdog.collect` returns the "Watchdog itself" families of DESIGN.md.

``--dry-run``: every decision is made, logged and followed by the policy as if carried out, but
nothing is done; such decisions are counted in ``ollama_watchdog_remediations_skipped_total``,
never in ``restarts_total`` / ``remediations_total`` (which count what was done), and
``ollama_watchdog_dry_run`` is 1.

The fleet budget (issue 17, ``[fleet]``): with a :class:`~ollama_watchdog.healing.fleet.
FleetView`, the action's worker thread first asks Prometheus how many OTHER hosts are out. At
``max_unavailable`` or more nothing is done: the policy is told (``action_deferred``, state
``deferred``, nothing spent), ``remediation_deferred`` is logged with the hosts out, and it is
asked again after a random delay of ``retry_delay`` (5-15 s: two hosts that deferred each other
do not retry in step). Before each question it waits ``settle`` (``[fleet] settle``) plus a
random ``ask_jitter`` (0-2 s) while already showing itself out (``restarting``/
``remediating``): with ``settle`` at least a scrape interval plus an evaluation, two hosts that
decided in the same instant see each other and both defer, then retry apart (mark, then
check); with a shorter one they may both act. Prometheus not answering
within ``query_timeout``: the host acts alone (``fleet_unreachable_acting_alone``), availability
of healing over strictness.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.config import HealingConfig, WatchdogConfig
from ollama_watchdog.healing.actions import RemedyActions, RestartAction
from ollama_watchdog.healing.fleet import FleetView
from ollama_watchdog.healing.maintenance import Mark, MarkError, read_mark
from ollama_watchdog.healing.policy import (
    DRAIN_FINISHED,
    EVENT_DEFERRED,
    EVENT_GAVE_UP,
    EVENT_REMEDIATION_DECIDED,
    EVENT_RESTART_DECIDED,
    Action,
    Cause,
    Decision,
    PolicySnapshot,
    State,
    WatchdogPolicy,
)
from ollama_watchdog.signals import KINDS, Signal

#: the (action, reason) pairs the policy can decide: the series of the remediation counters
REMEDIATION_SERIES: Final = (
    (Action.UNLOAD_MODEL, Cause.DEEP_PROBE),
    (Action.KILL_RUNNER, Cause.DEEP_PROBE),
    (Action.RESTART, Cause.LIVENESS),
    (Action.RESTART, Cause.DEEP_PROBE),
    (Action.RESTART, Cause.CPU_FALLBACK),
    (Action.RESTART, Cause.VRAM_NOT_RELEASED),
    (Action.KILL_ORPHANS, Cause.ORPHAN_RUNNER),
)
#: the maintenance mark is read at most this often (seconds)
_MARK_EVERY: Final = 1.0
#: a deferred action is asked about again after a random delay in this range (seconds)
RETRY_DELAY: Final = (5.0, 15.0)
#: before asking, the worker waits a random delay in this range (seconds): meanwhile this host
#: already shows itself out, so of two hosts that decided in the same instant the later asker
#: is likely to see the earlier one
ASK_JITTER: Final = (0.0, 2.0)


def policy_metrics(
    snapshot: PolicySnapshot,
    last_restart_timestamp: float | None,
    *,
    dry_run: bool = False,
    maintenance_until: float = 0.0,
    last_progress_timestamp: float = 0.0,
    fleet_unreachable: int = 0,
) -> list[Metric]:
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
    done = {} if dry_run else snapshot.remediations_total
    skipped = snapshot.remediations_total if dry_run else {}
    restarts = CounterMetricFamily(
        "ollama_watchdog_restarts",
        "Server restarts of Ollama the watchdog carried out, by reason (dry runs: see "
        "ollama_watchdog_remediations_skipped_total).",
        labels=["reason"],
    )
    for action, cause in REMEDIATION_SERIES:
        if action is Action.RESTART:
            restarts.add_metric([cause.value], float(done.get((action, cause), 0)))
    remediations = CounterMetricFamily(
        "ollama_watchdog_remediations",
        "Remediations carried out, by action and reason.",
        labels=["action", "reason"],
    )
    skipped_family = CounterMetricFamily(
        "ollama_watchdog_remediations_skipped",
        "Remediations decided but not carried out because --dry-run is on.",
        labels=["action", "reason"],
    )
    for action, cause in REMEDIATION_SERIES:
        key = (action, cause)
        remediations.add_metric([action.value, cause.value], float(done.get(key, 0)))
        skipped_family.add_metric([action.value, cause.value], float(skipped.get(key, 0)))
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
    consecutive = [
        GaugeMetricFamily(spec.metric, spec.metric_help, value=float(snapshot.consecutive[kind]))
        for kind, spec in KINDS.items()
    ]
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
    busy = CounterMetricFamily(
        "ollama_watchdog_busy_probes",
        "Deep probes that timed out while Ollama kept completing requests (busy, not hung).",
        value=float(snapshot.busy_total),
    )
    dry = GaugeMetricFamily(
        "ollama_watchdog_dry_run", "1 while --dry-run is on: nothing is carried out.",
        value=1.0 if dry_run else 0.0,
    )  # fmt: skip
    maintenance = GaugeMetricFamily(
        "ollama_watchdog_maintenance_until_timestamp_seconds",
        "Unix time the maintenance mark expires; 0 when none is set.",
        value=maintenance_until,
    )
    progress = GaugeMetricFamily(
        "ollama_watchdog_last_progress_timestamp_seconds",
        "Unix time Ollama last made progress in its log (an inference request or a runner "
        "timing line); 0 if not seen (or no log source).",
        value=last_progress_timestamp,
    )
    deferrals = CounterMetricFamily(
        "ollama_watchdog_deferrals",
        "Actions decided but deferred because max_unavailable other hosts of the fleet were "
        "out, by action and reason.",
        labels=["action", "reason"],
    )
    for action, cause in REMEDIATION_SERIES:
        deferrals.add_metric(
            [action.value, cause.value], float(snapshot.deferrals_total.get((action, cause), 0))
        )
    unreachable = CounterMetricFamily(
        "ollama_watchdog_fleet_unreachable",
        "Fleet budget questions Prometheus did not answer in time (the host acted alone).",
        value=float(fleet_unreachable),
    )
    return [
        state, restarts, remediations, skipped_family, failures, last, *consecutive, budget,
        backoff, busy, dry, maintenance, progress, deferrals, unreachable,
    ]  # fmt: skip


class Watchdog:
    """Policy + actions + logging + metrics: what the daemon's main loop feeds.

    Actions run on a thread of their own, so a ``systemctl restart`` that takes
    ``restart_timeout`` (90 s by default) never stalls the loop past systemd's ``WatchdogSec``.
    The outcome is reported to the policy by the next call made on the owner's thread; the
    policy stays ``restarting``/``remediating`` until then. All methods are meant for one owner
    thread. ``on_finished`` is called (owner thread) after an action's outcome is in: the daemon
    uses it to probe again at once rather than a probe interval later.
    """

    name = "watchdog"

    def __init__(
        self,
        config: WatchdogConfig,
        action: RestartAction | None = None,
        *,
        healing: HealingConfig | None = None,
        remedies: RemedyActions | None = None,
        dry_run: bool = False,
        state_dir: Path | None = None,
        unit_stopped: Callable[[], str | None] | None = None,
        progress_known: bool = False,
        busy_lookback: float = 60.0,
        on_finished: Callable[[], None] | None = None,
        fleet: FleetView | None = None,
        max_unavailable: int = 1,
        drain_timeout: float | None = None,
        retry_delay: tuple[float, float] = RETRY_DELAY,
        ask_jitter: tuple[float, float] = ASK_JITTER,
        settle: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.policy = WatchdogPolicy(
            config, clock(), healing, progress_known=progress_known,
            busy_lookback=busy_lookback, drain_timeout=drain_timeout,
        )  # fmt: skip
        self.fleet = fleet
        self._max_unavailable = max_unavailable
        self._retry_delay = retry_delay
        self._ask_jitter = ask_jitter
        self._settle = settle
        self._random = random.Random()
        # written by the worker thread only (an int: read whole by collect)
        self._fleet_unreachable = 0
        #: set by the worker when the last check before a restart found the unit stopped
        self._refused: str | None = None
        self.dry_run = dry_run or (action is not None and action.dry_run)
        self.action = action or RestartAction.from_config(config, dry_run=dry_run)
        self.remedies = remedies
        self._state_dir = state_dir
        self._unit_stopped = unit_stopped
        self._on_finished = on_finished
        self._log = structlog.get_logger(__name__)
        self._last_restart_wall: float | None = None
        self._worker: threading.Thread | None = None
        # written by the worker before it ends, read after join: no lock needed
        self._result: tuple[Action, bool, str | None, float] | None = None
        # the other hosts out when the fleet deferred the action (None: it was not deferred)
        self._deferred_by: tuple[str, ...] | None = None
        self._running: Action = Action.NONE
        self._mark: Mark | None = None
        self._mark_read_at = float("-inf")
        self._mark_problem: str | None = None

    def carry_over(self, old: Watchdog) -> None:
        """Take over from the watchdog this one replaces on a reload (no action running in it):
        its counters and the time of its last restart go on."""
        self.policy.carry_counters(old.policy)
        self._last_restart_wall = old._last_restart_wall
        self._fleet_unreachable = old._fleet_unreachable

    # -- inputs ---------------------------------------------------------------------------

    def observe(self, signal: Signal) -> Decision:
        """One signal from a collector, at the time it is observed."""
        self._report_finished()
        return self._handle(self.policy.observe(signal, self._clock()))

    def tick(self) -> Decision:
        """Call once per loop: the maintenance mark, a finished action, time-driven changes."""
        mark = self._poll_mark()
        if mark is not None:
            return mark
        finished = self._report_finished()
        return finished or self._handle(self.policy.tick(self._clock()))

    def wait_for_restart(self, timeout: float) -> bool:
        """Wait until no action is running; True if none is. For shutdown and tests."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        self.tick()
        return True

    @property
    def busy(self) -> bool:
        """An action is running on the worker thread."""
        return self._worker is not None

    # -- outputs --------------------------------------------------------------------------

    def snapshot(self) -> PolicySnapshot:
        return self.policy.snapshot(self._clock())

    def status(self) -> str:
        """The ``STATUS=`` line for sd_notify."""
        snap = self.snapshot()
        if snap.state is State.MAINTENANCE and self._mark is not None:
            return self._mark.sentence(self._wall_clock())
        return snap.status_sentence()

    def collect(self) -> list[Metric]:
        snap = self.snapshot()
        progress = 0.0
        if snap.last_progress is not None:
            progress = self._wall_clock() - (self._clock() - snap.last_progress)
        return policy_metrics(
            snap,
            self._last_restart_wall,
            dry_run=self.dry_run,
            maintenance_until=self._mark.until if self._mark is not None else 0.0,
            last_progress_timestamp=progress,
            fleet_unreachable=self._fleet_unreachable,
        )

    # -- the maintenance mark -------------------------------------------------------------

    def _poll_mark(self) -> Decision | None:
        if self._state_dir is None:
            return None
        now = self._clock()
        if now - self._mark_read_at < _MARK_EVERY:
            return None
        self._mark_read_at = now
        wall = self._wall_clock()
        try:
            mark = read_mark(self._state_dir, wall)
            self._mark_problem = None
        except MarkError as exc:
            if str(exc) != self._mark_problem:
                self._mark_problem = str(exc)
                self._log.error("maintenance_mark_invalid", error=str(exc))
            mark = None
        before, self._mark = self._mark, mark
        if (before is None) == (mark is None) and (before is None or before == mark):
            return None
        if mark is not None:
            self._log.warning(
                "maintenance_on", reason=mark.reason, by=mark.by, until=round(mark.until, 3)
            )
            reason = mark.sentence(wall)
        else:
            expired = before is not None and before.until <= wall
            self._log.info("maintenance_expired" if expired else "maintenance_off")
            reason = ""
        return self._handle(self.policy.set_maintenance(reason, self._clock()))

    # -- actions --------------------------------------------------------------------------

    def _report_finished(self) -> Decision | None:
        """Feed a finished action to the policy (and log it) before anything else happens."""
        worker = self._worker
        if worker is None or worker.is_alive():
            return None
        worker.join()
        self._worker = None
        result, self._result = self._result, None
        if result is None:  # the worker died without a result: count it as a failed action
            result = (self._running, False, "action worker crashed", self._clock())
        action, success, error, finished = result
        hosts, self._deferred_by = self._deferred_by, None
        refused, self._refused = self._refused, None
        if refused is not None:
            self._log.warning("restart_refused", unit_stopped=refused)
            return self.policy.action_refused(action, finished, refused)
        if hosts is not None:
            retry = self._random.uniform(*self._retry_delay)
            why = f"{len(hosts)} other hosts out ({', '.join(hosts)})"
            decision = self.policy.action_deferred(action, finished, retry, why)
            self._log.warning(
                EVENT_DEFERRED, **decision.log_fields(), deferred_action=str(action),
                hosts_out=list(hosts), max_unavailable=self._max_unavailable,
                retry_in_s=round(retry, 3),
            )  # fmt: skip
            return decision
        decision = self._handle(self.policy.action_finished(action, success, error, finished))
        if self._on_finished is not None and self._worker is None:
            self._on_finished()
        return decision

    def _handle(self, decision: Decision) -> Decision:
        if decision.drain:
            level = "info" if decision.drain == DRAIN_FINISHED else "warning"
            getattr(self._log, level)(
                decision.drain, reason=str(decision.reason),
                drained_s=round(decision.drained_for, 3),
            )  # fmt: skip
        if decision.event:
            level = {
                EVENT_RESTART_DECIDED: "warning",
                EVENT_REMEDIATION_DECIDED: "warning",
                EVENT_GAVE_UP: "error",
            }.get(decision.event, "info")
            getattr(self._log, level)(decision.event, **decision.log_fields())
        if not decision.remediation:
            return decision
        if decision.restart:
            self._last_restart_wall = self._wall_clock()
        self._running = decision.action
        if self.dry_run:
            self._log.warning(
                "remediation_skipped", action=str(decision.action), dry_run=True,
                reason=str(decision.reason),
            )  # fmt: skip
        self._worker = threading.Thread(
            target=self._run_action,
            args=(decision,),
            name=f"ollama-watchdog-{decision.action}",
            daemon=True,
        )
        self._worker.start()
        return decision

    def _run_action(self, decision: Decision) -> None:
        action = decision.action
        hosts = self._fleet_says_wait(decision)
        if hosts is not None:
            self._deferred_by = hosts
            self._result = (action, False, None, self._clock())
            return
        success, error = self._carry_out(decision)
        self._result = (action, success, error, self._clock())

    def _fleet_says_wait(self, decision: Decision) -> tuple[str, ...] | None:
        """On the worker thread: the other hosts out when they fill the fleet's budget, else
        None (act: budget left, no fleet configured, or Prometheus not answering)."""
        fleet = self.fleet
        if fleet is None:
            return None
        time.sleep(self._settle + self._random.uniform(*self._ask_jitter))
        answer = fleet.ask()
        if answer is None:
            self._fleet_unreachable += 1
            self._log.warning(
                "fleet_unreachable_acting_alone", action=str(decision.action),
                reason=str(decision.reason), error=fleet.last_error,
            )  # fmt: skip
            return None
        if answer.count >= self._max_unavailable:
            return answer.others
        return None

    def _carry_out(self, decision: Decision) -> tuple[bool, str | None]:
        action = decision.action
        if action is Action.RESTART:
            if not self.dry_run and self._unit_stopped is not None:
                # the last word before starting anything: never start what an operator stopped
                stopped = self._unit_stopped()
                if stopped:
                    self._refused = stopped
                    return False, f"not restarted: {stopped}"
            outcome = self.action.run()
            return outcome.success, outcome.error
        if self.dry_run:
            return True, None
        remedies = self.remedies
        if remedies is None:
            return False, "no way to carry out this action here (no Ollama client)"
        if action is Action.UNLOAD_MODEL:
            result = remedies.unload_model(decision.model)
        elif action is Action.KILL_RUNNER:
            result = remedies.kill_runner(decision.model)
        else:
            result = remedies.kill_orphans(decision.procs)
        fields: Mapping[str, object] = result.detail
        if result.success:
            self._log.info(
                f"{action}_succeeded", duration_s=round(result.duration, 3), **fields
            )
        else:
            self._log.error(
                f"{action}_failed", error=result.error, duration_s=round(result.duration, 3),
                **fields,
            )  # fmt: skip
        return result.success, result.error


__all__ = ["REMEDIATION_SERIES", "State", "Watchdog", "policy_metrics"]
