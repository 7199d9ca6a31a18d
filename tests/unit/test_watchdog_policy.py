"""The restart policy: every transition by example, then its invariants under random inputs.

The policy is pure, so time is just a number here: each test walks a clock by hand. Properties
check the promises of DESIGN.md "Restart policy" against a record of what was fed in, with
hypothesis choosing configurations, probe sequences and gaps between them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.clock import FakeClock
from support.registry import registry_of

from ollama_watchdog.config import WatchdogConfig
from ollama_watchdog.healing.policy import (
    EVENT_GAVE_UP,
    EVENT_RESTART_DECIDED,
    EVENT_RESTART_FINISHED,
    EVENT_STATE_CHANGED,
    Cause,
    Decision,
    PolicySnapshot,
    State,
    WatchdogPolicy,
)
from ollama_watchdog.healing.watchdog import policy_metrics
from ollama_watchdog.signals import Signal, SignalKind

ERR = "timeout after 5s"


def live(ok: bool, error: str | None = None) -> Signal:
    """A liveness probe result as the API collector emits it (the text as its detail)."""
    return Signal(SignalKind.LIVENESS, ok, None, error or "")


def deep(ok: bool, error: str | None = None) -> Signal:
    """A deep probe result as the deep-probe collector emits it."""
    return Signal(SignalKind.DEEP_PROBE, ok, None, error or "")


def cfg(**overrides: object) -> WatchdogConfig:
    return WatchdogConfig(**overrides)  # type: ignore[arg-type]



def fail_until_restart(
    p: WatchdogPolicy, clock: FakeClock, every: float = 10.0, limit: int = 1000
) -> Decision:
    for _ in range(limit):
        d = p.observe(live(False, ERR), clock(every))
        if d.restart:
            return d
    raise AssertionError("no restart decided")


# -- start-up and thresholds ---------------------------------------------------------------


def test_new_policy_is_healthy_and_says_so() -> None:
    p = WatchdogPolicy(cfg(), 0.0)
    snap = p.snapshot(0.0)
    assert snap.state is State.HEALTHY
    assert snap.consecutive_failures == 0
    assert p.status_sentence(0.0) == "healthy; 0 restarts in the last 30m (budget 5)"


def test_failures_inside_startup_grace_are_not_counted() -> None:
    p = WatchdogPolicy(cfg(startup_grace=30.0, failure_threshold=3), 0.0)
    for t in (5.0, 10.0, 15.0, 20.0, 25.0):
        d = p.observe(live(False, ERR), t)
        assert not d.restart
        assert d.consecutive_failures == 0
    assert d.state_after is State.DEGRADED
    assert p.status_sentence(25.0) == (
        "degraded: probes failing, not counted during startup grace (5s left); "
        "last error: timeout after 5s"
    )


def test_ollama_down_at_start_is_restarted_after_grace_plus_threshold() -> None:
    # an Ollama that was down before the watchdog started: not restarted at once, not never
    p = WatchdogPolicy(cfg(startup_grace=30.0, failure_threshold=3), 0.0)
    times = [t * 10.0 for t in range(1, 10)]
    restarts = [t for t in times if p.observe(live(False, ERR), t).restart]
    # 30 is the first counted failure (grace is [0, 30)), 50 the third
    assert restarts == [50.0]


def test_threshold_minus_one_failures_only_degrade() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=3), 0.0)
    d1 = p.observe(live(False, "refused"), 1.0)
    d2 = p.observe(live(False, "refused"), 2.0)
    assert (d1.action, d2.action) == ("none", "none")
    assert d2.state_after is State.DEGRADED
    assert d2.consecutive_failures == 2
    assert p.status_sentence(2.0) == (
        "degraded: 2 of 3 failed probes before a restart; last error: refused"
    )
    d3 = p.observe(live(False, "refused"), 3.0)
    assert d3.restart
    assert d3.reason == Cause.LIVENESS
    assert d3.event == EVENT_RESTART_DECIDED
    assert (d3.state_before, d3.state_after) == (State.DEGRADED, State.RESTARTING)


def test_a_success_resets_the_consecutive_count() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=3), 0.0)
    decisions = [
        p.observe(live(False, ERR), 1.0),
        p.observe(live(False, ERR), 2.0),
        p.observe(live(True, None), 3.0),
        p.observe(live(False, ERR), 4.0),
        p.observe(live(False, ERR), 5.0),
    ]
    assert not any(d.restart for d in decisions)
    assert decisions[2].state_after is State.HEALTHY
    assert decisions[-1].consecutive_failures == 2


def test_threshold_one_restarts_on_the_first_counted_failure() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1), 0.0)
    assert p.observe(live(True, None), 1.0).state_after is State.HEALTHY
    d = p.observe(live(False, ERR), 2.0)
    assert d.restart
    assert d.state_before is State.HEALTHY


@pytest.mark.parametrize("kind", [SignalKind.LIVENESS, SignalKind.DEEP_PROBE])
def test_the_watchdogs_own_exhaustion_is_never_counted(kind: SignalKind) -> None:
    # issue 18: "too many open files" in the watchdog must not restart a healthy Ollama
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1), 0.0)
    p.observe(live(True), 1.0)
    for t in range(2, 50):
        d = p.observe(
            Signal.failed(kind, "local_error", "watchdog out of resources: EMFILE"), float(t)
        )
        assert not d.restart
        assert d.consecutive[kind] == 0
        assert d.state_after is State.HEALTHY
    # a real failure afterwards still counts at once
    assert p.observe(Signal.failed(kind, "timeout", "timeout after 5s"), 60.0).restart


# -- restarting and the grace after it ---------------------------------------------------------


def test_observations_while_the_restart_runs_are_ignored() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1), 0.0)
    assert p.observe(live(False, ERR), 1.0).restart
    for t in range(2, 50):
        d = p.observe(live(False, ERR), float(t))
        assert not d.restart
        assert d.state_after is State.RESTARTING
    assert p.status_sentence(50.0) == "restarting ollama (liveness), restart 1 of 5 in 30m"


def test_after_restart_failures_wait_for_grace_and_success_ends_it() -> None:
    p = WatchdogPolicy(cfg(startup_grace=30.0, failure_threshold=2, backoff_initial=0.0), 0.0)
    clock = FakeClock(0.0)
    fail_until_restart(p, clock)
    finished = p.restart_finished(True, None, clock(5.0))
    assert finished.event == EVENT_RESTART_FINISHED
    assert finished.state_after is State.RESTARTING
    # still down during grace: not counted, still "restarting"
    d = p.observe(live(False, ERR), clock(10.0))
    assert (d.consecutive_failures, d.state_after) == (0, State.RESTARTING)
    assert "waiting for it to answer (20s of grace left, restart 1 of 5 in 30m)" in (
        p.status_sentence(clock.t)
    )
    d = p.observe(live(True, None), clock(10.0))
    assert d.state_after is State.HEALTHY
    assert d.event == EVENT_STATE_CHANGED


def test_grace_running_out_while_still_down_is_reported_by_tick() -> None:
    p = WatchdogPolicy(cfg(startup_grace=30.0, failure_threshold=1, backoff_initial=0.0), 0.0)
    clock = FakeClock(0.0)
    fail_until_restart(p, clock)
    p.restart_finished(True, None, clock(1.0))
    assert p.tick(clock(29.0)).state_after is State.RESTARTING
    d = p.tick(clock(1.0))
    assert not d.restart  # a tick never restarts
    assert (d.event, d.state_before, d.state_after) == (
        EVENT_STATE_CHANGED,
        State.RESTARTING,
        State.DEGRADED,
    )


def test_restart_finished_without_a_restart_running_changes_nothing() -> None:
    p = WatchdogPolicy(cfg(), 0.0)
    d = p.restart_finished(False, "exit status 1", 5.0)
    assert d.event == ""
    assert p.snapshot(5.0).restart_failures_total == 0


def test_failed_restart_is_counted_and_uses_budget_and_backoff() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1, backoff_initial=10.0), 0.0)
    clock = FakeClock(0.0)
    fail_until_restart(p, clock, every=1.0)
    d = p.restart_finished(False, "exit status 1: Access denied", clock(1.0))
    snap = p.snapshot(clock.t)
    assert snap.restart_failures_total == 1
    assert snap.restarts_in_window == 1
    assert snap.last_error == "restart failed: exit status 1: Access denied"
    assert d.last_error == snap.last_error
    # the next restart still waits out the backoff
    assert not p.observe(live(False, ERR), clock(5.0)).restart
    assert p.snapshot(clock.t).state is State.BACKOFF
    assert p.observe(live(False, ERR), clock(5.0)).restart


# -- backoff ----------------------------------------------------------------------------------


def restart_gaps(config: WatchdogConfig, restarts: int) -> list[float]:
    """Keep Ollama failing every second; return the waits from each finished restart to the
    next restart decision."""
    p = WatchdogPolicy(config, 0.0)
    clock = FakeClock(0.0)
    fail_until_restart(p, clock, every=1.0)
    gaps = []
    for _ in range(restarts):
        finished = clock(0.0)
        p.restart_finished(True, None, finished)
        fail_until_restart(p, clock, every=1.0)
        gaps.append(clock.t - finished)
    return gaps


def test_backoff_doubles_from_initial_to_max() -> None:
    config = cfg(
        startup_grace=0.0,
        failure_threshold=1,
        backoff_initial=10.0,
        backoff_max=40.0,
        max_restarts=100,
        restart_window=3600.0,
    )
    assert restart_gaps(config, 5) == [10.0, 20.0, 40.0, 40.0, 40.0]


def test_backoff_state_and_sentence() -> None:
    p = WatchdogPolicy(
        cfg(startup_grace=0.0, failure_threshold=2, backoff_initial=60.0, backoff_max=300.0), 0.0
    )
    clock = FakeClock(0.0)
    fail_until_restart(p, clock)
    p.restart_finished(True, None, clock(0.0))
    p.observe(live(False, ERR), clock(10.0))
    d = p.observe(live(False, ERR), clock(10.0))
    assert not d.restart
    assert d.state_after is State.BACKOFF
    assert d.next_restart_allowed_in == pytest.approx(40.0)
    assert d.log_fields()["next_restart_allowed_in_s"] == pytest.approx(40.0)
    assert p.status_sentence(clock.t) == (
        "backoff: 2 consecutive failed probes, next restart allowed in 40s "
        "(1 restart in 30m); last error: timeout after 5s"
    )
    # the backoff running out alone does not restart; the next failed probe does
    assert p.tick(clock(40.0)).state_after is State.DEGRADED
    assert p.observe(live(False, ERR), clock(1.0)).restart


def test_backoff_resets_only_after_health_holds_a_whole_window() -> None:
    window = 600.0
    p = WatchdogPolicy(
        cfg(
            startup_grace=0.0,
            failure_threshold=1,
            backoff_initial=10.0,
            backoff_max=300.0,
            max_restarts=100,
            restart_window=window,
        ),
        0.0,
    )
    clock = FakeClock(0.0)
    for _ in range(3):
        fail_until_restart(p, clock, every=1.0)
        p.restart_finished(True, None, clock(0.0))
    assert p.snapshot(clock.t).backoff_seconds == 40.0
    # healthy for less than a window: a flapping Ollama keeps its backoff
    for _ in range(int(window / 10) - 1):
        p.observe(live(True, None), clock(10.0))
    assert p.snapshot(clock.t).backoff_seconds == 40.0
    fail_until_restart(p, clock, every=1.0)
    p.restart_finished(True, None, clock(0.0))
    assert p.snapshot(clock.t).backoff_seconds == 80.0
    # healthy for a whole window: back to backoff_initial for the next restart
    for _ in range(int(window / 10) + 1):
        p.observe(live(True, None), clock(10.0))
    assert p.snapshot(clock.t).backoff_seconds == 0.0
    fail_until_restart(p, clock, every=1.0)
    assert p.snapshot(clock.t).backoff_seconds == 10.0


# -- budget and giving up ---------------------------------------------------------------------


def exhaust_budget(p: WatchdogPolicy, clock: FakeClock) -> list[Decision]:
    """Fail every 10 s, finishing each restart at once, until the policy gives up."""
    decisions = []
    for _ in range(10_000):
        d = p.observe(live(False, ERR), clock(10.0))
        decisions.append(d)
        if d.restart:
            p.restart_finished(True, None, clock(1.0))
        if d.state_after is State.GAVE_UP:
            return decisions
    raise AssertionError("never gave up")


def test_gives_up_past_max_restarts_in_window_with_the_status_sentence() -> None:
    p = WatchdogPolicy(cfg(), 0.0)  # the shipped defaults: 5 restarts in 30m
    clock = FakeClock(0.0)
    decisions = exhaust_budget(p, clock)
    assert sum(d.restart for d in decisions) == 5
    assert decisions[-1].event == EVENT_GAVE_UP
    assert decisions[-1].reason == Cause.LIVENESS
    assert decisions[-1].next_restart_allowed_in is None
    assert (
        p.status_sentence(clock.t)
        == "gave up after 5 restarts in 30m; last error: timeout after 5s"
    )


def test_gave_up_is_sticky_until_health_returns() -> None:
    config = cfg(startup_grace=0.0, failure_threshold=1, max_restarts=2, restart_window=100.0)
    p = WatchdogPolicy(config, 0.0)
    clock = FakeClock(0.0)
    exhaust_budget(p, clock)
    # long after the window freed the budget: still no restart while Ollama stays down
    for _ in range(100):
        d = p.observe(live(False, ERR), clock(10.0))
        assert not d.restart
        assert d.state_after is State.GAVE_UP
        assert d.event == ""  # no log line per probe while nothing changes
    d = p.observe(live(True, None), clock(10.0))
    assert (d.event, d.state_before, d.state_after) == (
        EVENT_STATE_CHANGED,
        State.GAVE_UP,
        State.HEALTHY,
    )
    assert p.observe(live(False, ERR), clock(10.0)).restart


def test_health_returning_does_not_refill_the_budget() -> None:
    config = cfg(startup_grace=0.0, failure_threshold=1, max_restarts=2, restart_window=1000.0)
    p = WatchdogPolicy(config, 0.0)
    clock = FakeClock(0.0)
    exhaust_budget(p, clock)
    p.observe(live(True, None), clock(10.0))
    d = p.observe(live(False, ERR), clock(10.0))
    assert not d.restart
    assert d.state_after is State.GAVE_UP


def test_zero_max_restarts_gives_up_at_once() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1, max_restarts=0), 0.0)
    d = p.observe(live(False, ERR), 1.0)
    assert not d.restart
    assert d.state_after is State.GAVE_UP
    assert p.status_sentence(1.0) == "gave up after 0 restarts in 30m; last error: timeout after 5s"


# -- the deep probe ---------------------------------------------------------------------------


def test_deep_probe_failing_while_liveness_passes_restarts_with_reason_deep_probe() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=2), 0.0)
    p.observe(live(True, None), 1.0)
    d = p.observe(deep(False, "timeout after 60s"), 2.0)
    assert d.state_after is State.DEGRADED
    assert d.deep_consecutive_failures == 1
    assert d.consecutive_failures == 0
    assert p.status_sentence(2.0) == (
        "degraded: 1 of 2 failed deep probes before a restart; "
        "last error: deep probe: timeout after 60s"
    )
    # liveness passing does not make a hung runner healthy
    assert p.observe(live(True, None), 3.0).state_after is State.DEGRADED
    d = p.observe(deep(False, "timeout after 60s"), 4.0)
    assert d.restart
    assert d.reason == Cause.DEEP_PROBE
    # no model named by the signal: nothing to unload, the server is restarted (and counted
    # once carried out)
    p.restart_finished(True, None, 5.0)
    assert p.snapshot(5.0).restarts_total == {c: int(c == Cause.DEEP_PROBE) for c in Cause}


def test_deep_failure_while_liveness_fails_is_left_to_liveness() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=2), 0.0)
    p.observe(live(False, "refused"), 1.0)
    d = p.observe(deep(False, "refused"), 2.0)
    assert d.deep_consecutive_failures == 0
    assert not d.restart
    # once liveness is back, the stale deep failure does not hold the state down
    assert p.observe(live(True, None), 3.0).state_after is State.HEALTHY


def test_deep_success_resets_only_the_deep_count() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=3), 0.0)
    p.observe(live(True, None), 1.0)
    p.observe(deep(False, "x"), 2.0)
    p.observe(deep(False, "x"), 3.0)
    d = p.observe(deep(True, None), 4.0)
    assert d.deep_consecutive_failures == 0
    assert d.state_after is State.HEALTHY


def test_gave_up_on_deep_probe_needs_a_deep_success_to_clear() -> None:
    config = cfg(startup_grace=0.0, failure_threshold=1, max_restarts=1, backoff_initial=0.0)
    p = WatchdogPolicy(config, 0.0)
    assert p.observe(deep(False, "timeout"), 1.0).restart
    p.restart_finished(True, None, 2.0)
    p.observe(live(True, None), 3.0)
    assert p.observe(deep(False, "timeout"), 4.0).state_after is State.GAVE_UP
    assert p.observe(live(True, None), 5.0).state_after is State.GAVE_UP
    assert p.observe(deep(True, None), 6.0).state_after is State.HEALTHY


# -- disabled ---------------------------------------------------------------------------------


def test_disabled_never_restarts_but_counts_failures() -> None:
    p = WatchdogPolicy(cfg(enabled=False, startup_grace=0.0, failure_threshold=1), 0.0)
    for t in range(1, 20):
        d = p.observe(live(False, ERR), float(t))
        assert not d.restart
        assert d.state_after is State.DISABLED
        assert d.next_restart_allowed_in is None
    assert d.consecutive_failures == 19
    assert p.status_sentence(19.0) == (
        "watchdog disabled, no restarts; 19 consecutive failed probes; last error: timeout after 5s"
    )
    p.observe(live(True, None), 20.0)
    assert p.status_sentence(20.0) == "watchdog disabled, no restarts; ollama healthy"


# -- log events -------------------------------------------------------------------------------


def test_one_event_per_change_and_fields_for_the_log_line() -> None:
    p = WatchdogPolicy(cfg(startup_grace=30.0, failure_threshold=3), 0.0)
    events = [p.observe(live(False, ERR), float(t)).event for t in (31, 32, 33)]
    assert events == [EVENT_STATE_CHANGED, "", EVENT_RESTART_DECIDED]
    d = p.observe(live(True, None), 34.0)
    assert d.event == ""  # ignored while the restart runs
    d = p.restart_finished(True, None, 35.0)
    assert d.event == EVENT_RESTART_FINISHED
    fields = d.log_fields()
    assert (fields["state_before"], fields["state"]) == ("restarting", "restarting")
    assert fields["last_error"] == ERR
    assert p.observe(live(False, ERR), 40.0).event == ""  # still inside grace
    later = p.observe(live(False, ERR), 200.0)
    assert (later.event, later.state_after) == (EVENT_STATE_CHANGED, State.DEGRADED)


def test_restart_decision_log_fields() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1), 0.0)
    fields = p.observe(live(False, ERR), 1.0).log_fields()
    assert fields == {
        "action": "restart_server",
        "reason": "liveness",
        "state_before": "healthy",
        "state": "restarting",
        "consecutive_failures": 0,  # counted failures restart from zero
        "deep_consecutive_failures": 0,
        "restarts_in_window": 1,
        "last_error": ERR,
        "next_restart_allowed_in_s": None,
        "urgent": True,
    }


def test_long_errors_are_cut_to_one_bounded_line() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0), 0.0)
    d = p.observe(live(False, "line one\n" + "x" * 5000), 1.0)
    assert d.last_error is not None
    assert "\n" not in d.last_error
    assert len(d.last_error) <= 200


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_from_a_snapshot() -> None:
    p = WatchdogPolicy(cfg(startup_grace=0.0, failure_threshold=1, max_restarts=5), 0.0)
    p.observe(live(False, ERR), 1.0)
    p.restart_finished(False, "exit status 1", 2.0)
    p.observe(live(False, ERR), 3.0)
    reg = registry_of(policy_metrics(p.snapshot(3.0), 1_700_000_000.0))
    states = {s: reg.get_sample_value("ollama_watchdog_state", {"state": s}) for s in State}
    assert states == {s: (1.0 if s is State.BACKOFF else 0.0) for s in State}
    assert reg.get_sample_value("ollama_watchdog_restarts_total", {"reason": "liveness"}) == 1.0
    assert reg.get_sample_value("ollama_watchdog_restarts_total", {"reason": "deep_probe"}) == 0.0
    assert reg.get_sample_value("ollama_watchdog_restart_failures_total") == 1.0
    assert reg.get_sample_value("ollama_watchdog_last_restart_timestamp_seconds") == 1.7e9
    assert reg.get_sample_value("ollama_watchdog_consecutive_failures") == 1.0
    assert reg.get_sample_value("ollama_watchdog_deep_probe_consecutive_failures") == 0.0
    assert reg.get_sample_value("ollama_watchdog_restart_budget_remaining") == 4.0
    assert reg.get_sample_value("ollama_watchdog_backoff_seconds") == 10.0


def test_metrics_exist_before_any_restart() -> None:
    reg = registry_of(policy_metrics(WatchdogPolicy(cfg(), 0.0).snapshot(0.0), None))
    assert reg.get_sample_value("ollama_watchdog_state", {"state": "healthy"}) == 1.0
    assert reg.get_sample_value("ollama_watchdog_last_restart_timestamp_seconds") == 0.0
    assert reg.get_sample_value("ollama_watchdog_restart_failures_total") == 0.0
    assert reg.get_sample_value("ollama_watchdog_restart_budget_remaining") == 5.0


# -- properties -------------------------------------------------------------------------------

KINDS = ("live_ok", "live_fail", "deep_ok", "deep_fail", "tick", "finish_ok", "finish_fail")
# failures weigh more, so random runs reach restarts, backoff and giving up, not only health
_WEIGHTED_KINDS = [*KINDS, "live_fail", "live_fail", "live_fail", "deep_fail", "finish_ok"]


@st.composite
def configs(draw: st.DrawFn) -> WatchdogConfig:
    initial = draw(st.sampled_from([0.0, 1.0, 5.0, 10.0, 30.0]))
    return cfg(
        enabled=draw(st.sampled_from([True, True, True, False])),
        failure_threshold=draw(st.integers(1, 4)),
        startup_grace=draw(st.sampled_from([0.0, 2.0, 10.0, 30.0])),
        backoff_initial=initial,
        backoff_max=initial * draw(st.sampled_from([1, 2, 8, 30])),
        max_restarts=draw(st.integers(0, 4)),
        restart_window=draw(st.sampled_from([5.0, 60.0, 300.0, 1800.0])),
    )


steps = st.lists(
    st.tuples(
        st.sampled_from(_WEIGHTED_KINDS),
        st.floats(0.0, 3.0) | st.floats(0.0, 40.0) | st.sampled_from([0.0, 10.0]),
    ),
    min_size=20,
    max_size=200,
)


@dataclass
class Run:
    """Everything a property needs from one random run."""

    config: WatchdogConfig
    start: float
    #: (time, kind, decision) per input
    log: list[tuple[float, str, Decision]] = field(default_factory=list)
    #: the snapshot right after each input
    snapshots: list[PolicySnapshot] = field(default_factory=list)

    @property
    def restarts(self) -> list[tuple[int, float, Decision]]:
        return [(i, t, d) for i, (t, _, d) in enumerate(self.log) if d.restart]


def drive(config: WatchdogConfig, script: list[tuple[str, float]]) -> Run:
    run = Run(config, 100.0)
    p = WatchdogPolicy(config, run.start)
    now = run.start
    for kind, gap in script:
        now += gap
        if kind == "live_ok":
            d = p.observe(live(True, None), now)
        elif kind == "live_fail":
            d = p.observe(live(False, ERR), now)
        elif kind == "deep_ok":
            d = p.observe(deep(True, None), now)
        elif kind == "deep_fail":
            d = p.observe(deep(False, "timeout"), now)
        elif kind == "tick":
            d = p.tick(now)
        else:
            d = p.restart_finished(kind == "finish_ok", "exit status 1", now)
        run.log.append((now, kind, d))
        snap = p.snapshot(now)
        run.snapshots.append(snap)
        assert snap.state is d.state_after
        assert 0 <= snap.restart_budget_remaining <= config.max_restarts
        assert snap.consecutive_failures >= 0 and snap.deep_consecutive_failures >= 0
        sentence = snap.status_sentence()
        assert sentence and "\n" not in sentence
    return run


@settings(max_examples=300, deadline=None)
@given(configs(), steps)
def test_never_more_than_max_restarts_in_any_window(
    config: WatchdogConfig, script: list[tuple[str, float]]
) -> None:
    times = [t for _, t, _ in drive(config, script).restarts]
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < config.restart_window) <= config.max_restarts


def processed(run: Run) -> list[tuple[int, str, float]]:
    """(index, kind, grace end) of the probe inputs the policy acted on: not those fed while a
    restart command ran (the policy ignores them by design). The grace end is the one in force:
    the start-up grace, or the grace after the latest finished restart."""
    out, running = [], False
    grace_until = run.start + run.config.startup_grace
    for i, (t, kind, d) in enumerate(run.log):
        if not running and kind.startswith(("live", "deep")):
            out.append((i, kind, grace_until))
        if d.restart:
            running = True
        elif kind.startswith("finish") and running:
            running = False
            grace_until = t + run.config.startup_grace
    return out


@settings(max_examples=300, deadline=None)
@given(configs(), steps)
def test_never_a_restart_during_grace_backoff_or_a_running_restart(
    config: WatchdogConfig, script: list[tuple[str, float]]
) -> None:
    run = drive(config, script)
    grace_until = run.start + config.startup_grace
    # backoff is per cause (a liveness restart does not delay a deep-probe one): at least
    # backoff_initial after the previous restart for the same cause
    allowed_at: dict[object, float] = {}
    running: object = None
    for (t, kind, d), snap in zip(run.log, run.snapshots, strict=True):
        if d.restart:
            assert running is None
            assert t >= grace_until
            assert t >= allowed_at.get(d.reason, run.start)
            running = d.reason
        elif kind.startswith("finish") and running is not None:
            assert d.event == EVENT_RESTART_FINISHED
            grace_until = t + config.startup_grace
            # the backoff after a restart is within [backoff_initial, backoff_max]
            assert config.backoff_initial <= snap.backoff_seconds <= config.backoff_max
            allowed_at[running] = t + config.backoff_initial
            running = None


@settings(max_examples=300, deadline=None)
@given(configs(), steps)
def test_never_a_restart_while_healthy(
    config: WatchdogConfig, script: list[tuple[str, float]]
) -> None:
    run = drive(config, script)
    acted = processed(run)
    for i, _, d in run.restarts:
        kind = run.log[i][1]
        # only a failed probe of the reason's own kind triggers a restart ...
        assert (d.reason, kind) in {
            (Cause.LIVENESS, "live_fail"),
            (Cause.DEEP_PROBE, "deep_fail"),
        }
        assert d.state_before is not State.HEALTHY or config.failure_threshold == 1
        # ... after failure_threshold failures of that kind in a row, all since the previous
        # restart and outside the grace
        probe = "live" if d.reason == Cause.LIVENESS else "deep"
        previous = max((j for j, _, _ in run.restarts if j < i), default=-1)
        same_kind = [(j, k, g) for j, k, g in acted if j <= i and k.startswith(probe)]
        tail = same_kind[-config.failure_threshold :]
        assert len(tail) == config.failure_threshold
        assert all(k.endswith("fail") for _, k, _ in tail)
        assert all(j > previous and run.log[j][0] >= g for j, _, g in tail)
        if d.reason == Cause.DEEP_PROBE:
            # a hung runner: liveness was passing
            lives = [k for j, k, _ in acted if j < i and k.startswith("live")]
            assert not lives or lives[-1] == "live_ok"


@settings(max_examples=300, deadline=None)
@given(configs(), steps)
def test_disabled_never_restarts_and_gave_up_only_leaves_on_success(
    config: WatchdogConfig, script: list[tuple[str, float]]
) -> None:
    run = drive(config, script)
    if not config.enabled:
        assert not run.restarts
        assert all(d.state_after is State.DISABLED for _, _, d in run.log)
    for _, kind, d in run.log:
        if d.state_before is State.GAVE_UP and d.state_after is not State.GAVE_UP:
            assert kind in {"live_ok", "deep_ok"}
        if d.state_before is State.GAVE_UP:
            assert not d.restart


@settings(max_examples=200, deadline=None)
@given(configs(), steps)
def test_exactly_one_state_is_exported(
    config: WatchdogConfig, script: list[tuple[str, float]]
) -> None:
    p = WatchdogPolicy(config, 0.0)
    now = 0.0
    for kind, gap in script:
        now += gap
        if kind.startswith("live"):
            p.observe(live(kind == "live_ok", ERR), now)
        elif kind.startswith("deep"):
            p.observe(deep(kind == "deep_ok", ERR), now)
        elif kind.startswith("finish"):
            p.restart_finished(kind == "finish_ok", ERR, now)
        snap = p.snapshot(now)
        reg = registry_of(policy_metrics(snap, None))
        values = [reg.get_sample_value("ollama_watchdog_state", {"state": s}) for s in State]
        assert values.count(1.0) == 1
        assert values.count(0.0) == len(State) - 1
        if snap.state is State.GAVE_UP:
            assert re.fullmatch(
                r"gave up after \d+ restarts? in \S+; last error: .+", snap.status_sentence()
            )
