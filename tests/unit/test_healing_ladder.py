"""The healing policy's round-2 rules: busy is not hung, the ladder, hands off for operators.

Pure policy, time by hand (as in test_watchdog_policy.py); properties with hypothesis.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ollama_watchdog.config import HealingConfig, WatchdogConfig
from ollama_watchdog.healing.policy import Action, Cause, State, WatchdogPolicy
from ollama_watchdog.signals import Proc, Signal, SignalKind

MODEL = "tiny:latest"
WD = WatchdogConfig(startup_grace=0.0, failure_threshold=2, backoff_initial=0.0)


def deep_fail(reason: str = "timeout") -> Signal:
    return Signal(SignalKind.DEEP_PROBE, False, reason, "timeout after 60s", MODEL)  # type: ignore[arg-type]


def live_ok() -> Signal:
    return Signal(SignalKind.LIVENESS, True)


def progress() -> Signal:
    return Signal(SignalKind.PROGRESS, True)


def policy(**heal: object) -> WatchdogPolicy:
    return WatchdogPolicy(WD, 0.0, HealingConfig(**heal), progress_known=True, busy_lookback=60)  # type: ignore[arg-type]


def test_a_wedged_runner_is_unloaded_then_killed_then_the_server_restarted() -> None:
    p = policy()
    p.observe(live_ok(), 1.0)
    p.observe(deep_fail(), 2.0)
    d = p.observe(deep_fail(), 3.0)
    assert (d.action, d.reason, d.model) == (Action.UNLOAD_MODEL, Cause.DEEP_PROBE, MODEL)
    assert d.state_after is State.REMEDIATING
    # the runner survived the unload: escalate at once to killing it
    d = p.action_finished(Action.UNLOAD_MODEL, False, "still listed", 10.0)
    assert d.action is Action.KILL_RUNNER
    d = p.action_finished(Action.KILL_RUNNER, False, "no runner found", 11.0)
    assert d.action is Action.RESTART
    p.action_finished(Action.RESTART, True, None, 12.0)
    assert p.snapshot(12.0).restarts_total[Cause.DEEP_PROBE] == 1


def test_a_rung_that_worked_is_followed_by_the_next_only_if_the_wedge_returns() -> None:
    p = policy()
    p.observe(deep_fail(), 1.0)
    assert p.observe(deep_fail(), 2.0).action is Action.UNLOAD_MODEL
    assert p.action_finished(Action.UNLOAD_MODEL, True, None, 3.0).action is Action.NONE
    passed = Signal(SignalKind.DEEP_PROBE, True, model=MODEL)
    assert p.observe(passed, 4.0).state_after is State.HEALTHY
    # passing again resets the ladder
    p.observe(deep_fail(), 10.0)
    assert p.observe(deep_fail(), 11.0).action is Action.UNLOAD_MODEL
    p.action_finished(Action.UNLOAD_MODEL, True, None, 12.0)
    p.observe(deep_fail(), 13.0)
    assert p.observe(deep_fail(), 14.0).action is Action.KILL_RUNNER


def test_timeouts_while_requests_complete_are_busy_and_never_act() -> None:
    p = policy()
    for t in range(1, 40):
        p.observe(progress(), t - 0.5)
        d = p.observe(deep_fail(), float(t))
        assert d.action is Action.NONE
    assert d.state_after is State.BUSY
    assert p.snapshot(40.0).busy_total == 39


def test_the_deep_models_own_stalled_runner_is_not_hidden_by_other_traffic() -> None:
    p = policy()
    stalled = Signal(SignalKind.RUNNER, False, model=MODEL, procs=(Proc(7, 1.0),))
    p.observe(progress(), 0.5)
    p.observe(stalled, 0.6)
    p.observe(deep_fail(), 1.0)
    p.observe(progress(), 1.5)
    p.observe(stalled, 1.6)
    assert p.observe(deep_fail(), 2.0).action is Action.UNLOAD_MODEL


def test_without_a_log_source_every_timeout_counts() -> None:
    p = WatchdogPolicy(WD, 0.0, HealingConfig(), progress_known=False)
    p.observe(progress(), 0.5)
    p.observe(deep_fail(), 1.0)
    assert p.observe(deep_fail(), 2.0).action is Action.UNLOAD_MODEL


def test_maintenance_and_an_operator_stop_hold_every_action() -> None:
    p = policy()
    p.set_maintenance("maintenance set by ops: driver update", 0.5)
    for t in range(1, 20):
        d = p.observe(Signal(SignalKind.LIVENESS, False, "refused"), float(t))
        assert d.action is Action.NONE
    assert d.state_after is State.MAINTENANCE
    p.set_maintenance("", 20.0)
    d = p.observe(Signal(SignalKind.LIVENESS, False, "refused"), 21.0)
    assert d.action is Action.NONE  # counting starts afresh
    assert p.observe(Signal(SignalKind.LIVENESS, False, "refused"), 22.0).restart
    q = policy()
    q.observe(Signal(SignalKind.UNIT, False, detail="inactive/dead, result success"), 0.5)
    for t in range(1, 10):
        down = Signal(SignalKind.LIVENESS, False, "refused")
        assert q.observe(down, float(t)).action is Action.NONE
    assert q.snapshot(10.0).state is State.MAINTENANCE


def test_our_own_restart_stopping_the_unit_is_no_operators_stop() -> None:
    stopping = Signal(SignalKind.UNIT, False, detail="deactivating/stop-sigterm, result success")
    p = policy()
    p.observe(Signal(SignalKind.LIVENESS, False, "refused"), 1.0)
    assert p.observe(Signal(SignalKind.LIVENESS, False, "refused"), 2.0).restart
    # systemctl restart: the unit deactivates first, then starts
    assert p.observe(stopping, 2.5).state_after is State.RESTARTING
    p.action_finished(Action.RESTART, True, None, 3.0)
    # a signal taken before the restart returned, read after: still ours (no grace here)
    assert p.observe(stopping, 3.2).state_after is State.DEGRADED
    assert p.snapshot(3.2).maintenance_reason == ""
    assert p.observe(live_ok(), 4.0).state_after is State.HEALTHY
    # an operator's stop: once the new server has answered, or when the unit is inactive
    assert p.observe(stopping, 5.0).state_after is State.MAINTENANCE
    q = policy()
    q.observe(Signal(SignalKind.LIVENESS, False, "refused"), 1.0)
    assert q.observe(Signal(SignalKind.LIVENESS, False, "refused"), 2.0).restart
    q.action_finished(Action.RESTART, True, None, 3.0)
    stopped = Signal(SignalKind.UNIT, False, detail="inactive/dead, result success")
    assert q.observe(stopped, 3.5).state_after is State.MAINTENANCE


def test_orphans_are_killed_after_their_grace() -> None:
    p = policy(orphan_grace=30.0)
    orphan = Proc(99, 5.0)
    assert p.observe(Signal(SignalKind.ORPHANS, False, procs=(orphan,)), 1.0).action is Action.NONE
    d = p.observe(Signal(SignalKind.ORPHANS, False, procs=(orphan,)), 31.0)
    assert (d.action, d.reason, d.procs) == (Action.KILL_ORPHANS, Cause.ORPHAN_RUNNER, (orphan,))


def test_a_cpu_fallback_restarts_when_idle_and_at_most_once_per_cooldown() -> None:
    p = policy(cpu_fallback_grace=10.0, planned_quiet=30.0, planned_max_wait=600.0)
    fallback = Signal(SignalKind.CPU_FALLBACK, False, detail="1 loaded model with no GPU memory")
    p.observe(fallback, 0.0)
    p.observe(Signal(SignalKind.IN_FLIGHT, True, count=2), 5.0)
    p.observe(progress(), 9.0)
    d = p.observe(fallback, 11.0)
    assert d.action is Action.NONE and d.state_after is State.DRAINING
    assert p.tick(15.0).action is Action.NONE  # still two requests in flight
    d = p.observe(Signal(SignalKind.IN_FLIGHT, True, count=0), 20.0)
    assert (d.action, d.reason, d.urgent) == (Action.RESTART, Cause.CPU_FALLBACK, False)
    p.action_finished(Action.RESTART, True, None, 30.0)
    p.observe(live_ok(), 31.0)
    for t in range(100, 3000, 100):
        assert p.observe(fallback, float(t)).action is Action.NONE


steps = st.lists(
    st.tuples(
        st.sampled_from(["deep_fail", "deep_ok", "progress", "stalled", "maint_on", "maint_off",
                         "finish_ok", "finish_fail", "live_fail"]),
        st.floats(min_value=0.0, max_value=40.0),
    ),
    max_size=80,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(steps)
def test_invariants_of_the_ladder(script: list[tuple[str, float]]) -> None:
    p = policy()
    t = 0.0
    running: Action = Action.NONE
    tried: list[Action] = []
    maintenance = False
    for kind, gap in script:
        t += gap
        if kind == "deep_fail":
            d = p.observe(deep_fail(), t)
        elif kind == "deep_ok":
            d = p.observe(Signal(SignalKind.DEEP_PROBE, True, model=MODEL), t)
            tried = []
        elif kind == "live_fail":
            d = p.observe(Signal(SignalKind.LIVENESS, False, "refused"), t)
        elif kind == "progress":
            d = p.observe(progress(), t)
        elif kind == "stalled":
            d = p.observe(Signal(SignalKind.RUNNER, False, model=MODEL), t)
        elif kind == "maint_on":
            maintenance = True
            d = p.set_maintenance("ops", t)
        elif kind == "maint_off":
            maintenance = False
            d = p.set_maintenance("", t)
        elif running is not Action.NONE:
            d = p.action_finished(running, kind == "finish_ok", None, t)
            running = Action.NONE
        else:
            continue
        if d.remediation:
            # never in maintenance, never two at once
            assert not maintenance
            assert running is Action.NONE
            running = d.action
            if d.reason is Cause.DEEP_PROBE:
                if d.action is Action.RESTART:
                    # the server only after unload and kill were tried (or their budgets spent)
                    assert tried == [Action.UNLOAD_MODEL, Action.KILL_RUNNER] or (
                        len(p.snapshot(t).remediations_total) >= 1
                    )
                    tried = []
                else:
                    tried.append(d.action)
            if d.action is Action.RESTART:
                tried = []
    snap = p.snapshot(t)
    per_rung: dict[Action, int] = {}
    for (action, _), n in snap.remediations_total.items():
        per_rung[action] = per_rung.get(action, 0) + n
    # budgets per rung inside one window (the script spans at most 80 x 40 s < restart_window)
    assert per_rung.get(Action.UNLOAD_MODEL, 0) <= HealingConfig().max_unloads
    assert per_rung.get(Action.KILL_RUNNER, 0) <= HealingConfig().max_kills
    assert per_rung.get(Action.RESTART, 0) <= WD.max_restarts


def test_only_a_loaded_unit_stopped_cleanly_is_an_operators_stop() -> None:
    from ollama_watchdog.collectors.evidence import UnitState

    assert UnitState("inactive", "dead", "success", "loaded").stopped_on_purpose
    # Ollama outside systemd while [ollama] unit keeps its default: systemd knows no such unit
    assert not UnitState("inactive", "dead", "success", "not-found").stopped_on_purpose
    assert not UnitState("failed", "failed", "exit-code", "loaded").stopped_on_purpose
    assert not UnitState("active", "running", "success", "loaded").stopped_on_purpose
    # a clean stop under way (the server gone, runners exiting or a stop hook running)
    assert UnitState("deactivating", "stop-post", "success", "loaded").stopped_on_purpose
    # a crash sets Result before the unit deactivates: not an operator's stop
    assert not UnitState("deactivating", "stop-sigterm", "signal", "loaded").stopped_on_purpose


def test_a_maintenance_mark_is_readable_by_others_and_expires(tmp_path: Path) -> None:
    from ollama_watchdog.healing.maintenance import Mark, mark_path, read_mark, write_mark

    write_mark(tmp_path, Mark(until=200.0, reason="driver update", by="ops", set_at=100.0))
    assert mark_path(tmp_path).stat().st_mode & 0o777 == 0o644
    assert read_mark(tmp_path, 150.0) == Mark(200.0, "driver update", "ops", 100.0)
    assert read_mark(tmp_path, 200.0) is None  # expired: ignored and removed
    assert not mark_path(tmp_path).exists()


def test_maintenance_cli_sets_shows_and_clears_the_mark(tmp_path: Path) -> None:
    from ollama_watchdog.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'[logs]\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["maintenance", "status", "--config", str(config)]) == 1
    on = ["maintenance", "on", "--for", "30m", "--reason", "x"]
    assert main([*on, "--config", str(config)]) == 0
    assert main(["maintenance", "--config", str(config), "status"]) == 0
    assert main(["maintenance", "on", "--for", "8d", "--config", str(config)]) == 64  # capped
    assert main(["maintenance", "off", "--config", str(config)]) == 0
    assert main(["maintenance", "status", "--config", str(config)]) == 1
