"""The fleet budget's side of the policy (issue 17): deferred actions and the drain cap.

Pure policy, time by hand (as in test_watchdog_policy.py); properties with hypothesis.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_watchdog.config import HealingConfig, WatchdogConfig
from ollama_watchdog.healing.policy import (
    DRAIN_FINISHED,
    DRAIN_TIMEOUT,
    EVENT_DEFERRED,
    Action,
    Cause,
    State,
    WatchdogPolicy,
)
from ollama_watchdog.healing.watchdog import policy_metrics
from ollama_watchdog.signals import Signal, SignalKind

WD = WatchdogConfig(startup_grace=0.0, failure_threshold=2, backoff_initial=10.0, max_restarts=3)
HOSTS = "1 other hosts out (gpu2:9778)"


def live(ok: bool) -> Signal:
    return Signal(SignalKind.LIVENESS, ok, None if ok else "refused", "" if ok else "refused")  # type: ignore[arg-type]


def policy(drain_timeout: float | None = None, **heal: object) -> WatchdogPolicy:
    return WatchdogPolicy(
        WD, 0.0, HealingConfig(**heal), progress_known=True, drain_timeout=drain_timeout  # type: ignore[arg-type]
    )


def test_a_deferred_restart_spends_nothing_and_is_decided_again_after_retry() -> None:
    p = policy()
    p.observe(live(False), 1.0)
    d = p.observe(live(False), 2.0)
    assert d.action is Action.RESTART
    before = p.snapshot(2.0)
    d = p.action_deferred(Action.RESTART, 3.0, 10.0, HOSTS)
    assert (d.event, d.state_after, d.reason) == (EVENT_DEFERRED, State.DEFERRED, Cause.LIVENESS)
    snap = p.snapshot(3.0)
    assert snap.restarts_total[Cause.LIVENESS] == 0
    assert snap.remediations_total.get((Action.RESTART, Cause.LIVENESS), 0) == 0
    assert snap.restart_budget_remaining == WD.max_restarts
    assert snap.backoff_seconds == 0.0
    assert snap.deferrals_total == {(Action.RESTART, Cause.LIVENESS): 1}
    assert snap.deferred == (Action.RESTART, Cause.LIVENESS)
    assert "gpu2:9778" in (snap.last_error or "")
    assert snap.status_sentence().startswith("deferred: restart server (liveness)")
    # counted when carried out, never when decided: nothing to take back, no counter goes down
    assert before.restarts_total[Cause.LIVENESS] == 0
    # no action before retry_after, whatever the probes say
    for t in (4.0, 6.0, 12.0):
        d = p.observe(live(False), t)
        assert d.action is Action.NONE and d.state_after is State.DEFERRED
    d = p.observe(live(False), 13.5)
    assert d.action is Action.RESTART
    p.action_finished(Action.RESTART, True, None, 14.0)
    assert p.snapshot(14.0).restarts_total[Cause.LIVENESS] == 1


def test_evidence_gone_while_deferred_is_healthy() -> None:
    p = policy()
    p.observe(live(False), 1.0)
    p.observe(live(False), 2.0)
    p.action_deferred(Action.RESTART, 3.0, 10.0, HOSTS)
    d = p.observe(live(True), 4.0)
    assert d.state_after is State.HEALTHY
    assert p.snapshot(4.0).deferred is None
    # a new outage starts from zero and is not held back by the old deferral's retry time
    p.observe(live(False), 5.0)
    assert p.observe(live(False), 6.0).action is Action.RESTART


def test_a_deferred_planned_restart_drains_again_and_ends_with_its_evidence() -> None:
    p = policy(cpu_fallback_grace=1.0, planned_quiet=5.0)
    fallback = Signal(SignalKind.CPU_FALLBACK, False, detail="no GPU memory")
    p.observe(fallback, 0.0)
    d = p.observe(fallback, 10.0)
    assert (d.action, d.urgent, d.drain) == (Action.RESTART, False, DRAIN_FINISHED)
    d = p.action_deferred(Action.RESTART, 11.0, 5.0, HOSTS)
    assert d.state_after is State.DEFERRED
    assert p.tick(12.0).action is Action.NONE
    d = p.tick(17.0)
    assert (d.action, d.reason) == (Action.RESTART, Cause.CPU_FALLBACK)
    p.action_deferred(Action.RESTART, 18.0, 5.0, HOSTS)
    d = p.observe(Signal(SignalKind.CPU_FALLBACK, True), 19.0)
    assert d.state_after is State.HEALTHY


def test_deferral_without_a_running_action_changes_nothing() -> None:
    p = policy()
    d = p.action_deferred(Action.RESTART, 1.0, 10.0, HOSTS)
    assert d.event == "" and d.state_after is State.HEALTHY


def test_the_drain_is_capped_by_drain_timeout() -> None:
    p = policy(drain_timeout=20.0, cpu_fallback_grace=1.0, planned_max_wait=600.0)
    fallback = Signal(SignalKind.CPU_FALLBACK, False, detail="no GPU memory")
    p.observe(Signal(SignalKind.IN_FLIGHT, True, count=3), 0.0)
    p.observe(fallback, 0.0)
    d = p.observe(fallback, 2.0)
    assert d.state_after is State.DRAINING
    assert p.tick(21.0).action is Action.NONE
    d = p.tick(22.5)
    assert (d.action, d.drain) == (Action.RESTART, DRAIN_TIMEOUT)
    assert 20.0 <= d.drained_for < 21.0


def test_deferrals_are_exported_by_action_and_reason() -> None:
    p = policy()
    p.observe(live(False), 1.0)
    p.observe(live(False), 2.0)
    p.action_deferred(Action.RESTART, 3.0, 10.0, HOSTS)
    families = {m.name: m for m in policy_metrics(p.snapshot(3.0), None, fleet_unreachable=2)}
    values = {
        (s.labels["action"], s.labels["reason"]): s.value
        for s in families["ollama_watchdog_deferrals"].samples
        if s.name.endswith("_total")
    }
    assert values[("restart_server", "liveness")] == 1.0
    assert values[("unload_model", "deep_probe")] == 0.0
    unreachable = families["ollama_watchdog_fleet_unreachable"].samples
    assert [s.value for s in unreachable if s.name.endswith("_total")] == [2.0]
    state = {s.labels["state"]: s.value for s in families["ollama_watchdog_state"].samples}
    assert state["deferred"] == 1.0 and sum(state.values()) == 1.0


steps = st.lists(
    st.tuples(
        st.sampled_from(["live_fail", "live_ok", "defer", "finish", "tick"]),
        st.floats(min_value=0.0, max_value=30.0),
        st.floats(min_value=1.0, max_value=20.0),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_invariants_of_deferral(script: list[tuple[str, float, float]]) -> None:
    """No action while deferred; a deferral never spends budget; health ends it."""
    p = policy()
    t = 0.0
    running = Action.NONE
    until = float("-inf")
    kept = 0  # restarts carried out
    for kind, gap, retry in script:
        t += gap
        if kind == "live_fail":
            d = p.observe(live(False), t)
        elif kind == "live_ok":
            d = p.observe(live(True), t)
            if running is Action.NONE:
                until = float("-inf")
                assert d.state_after is not State.DEFERRED
        elif kind == "tick":
            d = p.tick(t)
        elif running is Action.NONE:
            continue
        elif kind == "defer":
            d = p.action_deferred(running, t, retry, HOSTS)
            running = Action.NONE
            until = t + retry
            assert d.state_after is State.DEFERRED
        else:
            if running is Action.RESTART:
                kept += 1
            d = p.action_finished(running, True, None, t)
            running = Action.NONE
        if d.remediation:
            assert running is Action.NONE
            assert t >= until, "an action while deferred"
            running = d.action
        snap = p.snapshot(t)
        assert sum(snap.restarts_total.values()) == kept
        assert snap.restart_budget_remaining == max(WD.max_restarts - snap.restarts_in_window, 0)
        assert sum(snap.deferrals_total.values()) >= 0


def test_a_restart_refused_at_the_last_check_is_neither_counted_nor_spent() -> None:
    # the operator's stop began between the decision and the restart: nothing ran
    p = policy()
    p.observe(live(False), 1.0)
    assert p.observe(live(False), 2.0).action is Action.RESTART
    d = p.action_refused(Action.RESTART, 3.0, "ollama.service was stopped on purpose")
    assert d.action is Action.NONE
    snap = p.snapshot(3.0)
    assert snap.restarts_total[Cause.LIVENESS] == 0
    assert snap.remediations_total.get((Action.RESTART, Cause.LIVENESS), 0) == 0
    assert snap.restart_failures_total == 0
    assert snap.restart_budget_remaining == WD.max_restarts
    assert "stopped on purpose" in (snap.last_error or "")
