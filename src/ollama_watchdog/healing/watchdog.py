"""Binds the policy and the actions to the daemon: logging, metrics, one worker thread.

:class:`Watchdog` is what the daemon's main loop feeds: every :class:`~ollama_watchdog.signals.
Signal` goes to :meth:`Watchdog.observe`, which asks ``healing.policy`` for a decision, logs it
as one structured event, and runs the action ``healing.actions`` provides on a worker thread.
It is also the collector named ``watchdog``: :meth:`Watchdog.collect` returns the "Watchdog
itself" families of DESIGN.md, published through the same path as every other collector.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.config import WatchdogConfig
from ollama_watchdog.healing.actions import RestartAction, RestartResult
from ollama_watchdog.healing.policy import (
    EVENT_GAVE_UP,
    EVENT_RESTART_DECIDED,
    Decision,
    PolicySnapshot,
    State,
    WatchdogPolicy,
)
from ollama_watchdog.signals import KINDS, Signal, SignalKind


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
    for r in SignalKind:
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
    return [state, restarts, failures, last, *consecutive, budget, backoff]


class Watchdog:
    """Policy + restart action + logging + metrics: what the daemon's main loop feeds.

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
        self._result: tuple[RestartResult, float] | None = None

    def observe(self, signal: Signal) -> Decision:
        """One signal from a collector, at the time it is observed."""
        self._report_finished_restart()
        return self._handle(self.policy.observe(signal, self._clock()))

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


__all__ = ["State", "Watchdog", "policy_metrics"]
