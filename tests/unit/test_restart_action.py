"""The restart action with real commands, and the Watchdog that runs it off the loop thread.

Every command here really runs (``true``, ``false``, ``sh``, ``sleep``): what is checked is what
an operator sees — the outcome, the log event, the metrics, processes really gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs
from support.clock import FakeClock
from support.registry import registry_of
from support.wait import wait_until

from ollama_watchdog.config import WatchdogConfig
from ollama_watchdog.healing.actions import STDERR_LIMIT, ErrorClass, RestartAction, RestartResult
from ollama_watchdog.healing.policy import State
from ollama_watchdog.healing.watchdog import Watchdog
from ollama_watchdog.signals import Signal, SignalKind

#: generous: only ever waited for, never asserted on
DEADLINE = 60.0


def sh(script: str) -> list[str]:
    shell = shutil.which("sh")
    assert shell is not None
    return [shell, "-c", script]


def gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pid: int) -> bool:
    return wait_until(lambda: gone(pid), f"pid {pid} gone", timeout=DEADLINE)


def read_pid(path: Path) -> int:
    def pid() -> int | None:
        text = path.read_text() if path.exists() else ""
        return int(text) if text.strip() else None

    return wait_until(pid, f"{path} gets a pid", timeout=DEADLINE, interval=0.02)


def live(ok: bool, error: str | None = None) -> Signal:
    """A liveness probe result as the API collector emits it (the text as its detail)."""
    return Signal(SignalKind.LIVENESS, ok, None, error or "")


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids a test may leave running; killed at teardown whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- RestartAction ----------------------------------------------------------------------------


def test_true_is_a_successful_restart_and_logged_once() -> None:
    with capture_logs() as logs:
        outcome = RestartAction(["true"], timeout=DEADLINE).run()
    assert outcome.success
    assert outcome.exit_code == 0
    assert outcome.error_class is None
    assert outcome.error is None
    assert not outcome.dry_run
    assert [e["event"] for e in logs] == ["restart_command_succeeded"]
    assert logs[0]["command"] == ["true"]


def test_false_is_a_failed_restart_with_its_exit_status() -> None:
    with capture_logs() as logs:
        outcome = RestartAction(["false"], timeout=DEADLINE).run()
    assert not outcome.success
    assert outcome.error_class is ErrorClass.EXIT_STATUS
    assert outcome.exit_code == 1
    assert outcome.error == "exit status 1"
    assert [(e["event"], e["log_level"]) for e in logs] == [("restart_command_failed", "error")]
    assert logs[0]["exit_code"] == 1
    assert logs[0]["error_class"] == "exit_status"


def test_stderr_and_exit_status_are_reported() -> None:
    with capture_logs() as logs:
        outcome = RestartAction(sh("echo starting; echo err >&2; exit 3"), DEADLINE).run()
    assert (outcome.success, outcome.exit_code) == (False, 3)
    assert outcome.stderr_tail == "err"  # stdout is not kept
    assert outcome.error == "exit status 3: err"
    assert logs[0]["stderr"] == "err"


def test_stderr_kept_is_the_bounded_tail() -> None:
    script = "i=0; while [ $i -lt 3000 ]; do echo noise-line-$i >&2; i=$((i+1)); done; "
    script += "echo 'Failed to restart ollama.service: Access denied' >&2; exit 4"
    outcome = RestartAction(sh(script), DEADLINE).run()
    assert len(outcome.stderr_tail.encode()) <= STDERR_LIMIT
    assert outcome.stderr_tail.endswith("Access denied")
    assert outcome.error == "exit status 4: Failed to restart ollama.service: Access denied"


def test_hanging_command_is_killed_with_its_children(tmp_path: Path, leftovers: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    # the shell waits for a grandchild: both must die, not only the direct child
    command = sh(f"sleep 300 & echo $! > {pidfile}; echo hanging >&2; wait")
    with capture_logs() as logs:
        outcome = RestartAction(command, timeout=1.0).run()
    grandchild = read_pid(pidfile)
    leftovers.append(grandchild)
    assert not outcome.success
    assert outcome.error_class is ErrorClass.TIMEOUT
    assert outcome.exit_code is None
    assert outcome.stderr_tail == "hanging"
    assert outcome.error is not None and outcome.error.startswith("timeout after ")
    assert wait_until_gone(grandchild), "the sleep started by the restart command still runs"
    assert logs[0]["event"] == "restart_command_failed"
    assert logs[0]["error_class"] == "timeout"


def test_background_process_left_by_the_command_is_not_waited_for(
    tmp_path: Path, leftovers: list[int]
) -> None:
    # e.g. the demo's restart command starting a fresh simulator: the command itself exits
    # at once; a survivor holding the inherited stderr must not turn that into a timeout
    pidfile = tmp_path / "server.pid"
    outcome = RestartAction(sh(f"sleep 300 & echo $! > {pidfile}"), timeout=DEADLINE).run()
    server = read_pid(pidfile)
    leftovers.append(server)
    assert outcome.success, outcome
    assert outcome.error_class is None
    assert not gone(server), "a successful restart must leave what it started running"


def test_missing_binary_is_a_failed_restart_not_an_exception() -> None:
    with capture_logs() as logs:
        outcome = RestartAction(["/nonexistent/bin/systemctl", "restart", "x"], DEADLINE).run()
    assert not outcome.success
    assert outcome.error_class is ErrorClass.NOT_FOUND
    assert outcome.error is not None and outcome.error.startswith("not_found")
    assert logs[0]["event"] == "restart_command_failed"


def test_command_that_is_not_executable_is_a_permission_failure(tmp_path: Path) -> None:
    script = tmp_path / "restart.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)  # no execute bit: even root gets EACCES from execve
    outcome = RestartAction([str(script)], DEADLINE).run()
    assert not outcome.success
    assert outcome.error_class is ErrorClass.PERMISSION


def test_empty_command_is_a_failed_restart() -> None:
    outcome = RestartAction([], DEADLINE).run()
    assert not outcome.success
    assert outcome.error_class is ErrorClass.NOT_FOUND


def test_dry_run_decides_but_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with capture_logs() as logs:
        outcome = RestartAction(["touch", str(marker)], DEADLINE, dry_run=True).run()
    assert outcome == RestartResult(True, None, "", 0.0, None, dry_run=True)
    assert not marker.exists()
    assert [e["event"] for e in logs] == ["restart_command_skipped"]
    assert logs[0]["dry_run"] is True


def test_from_config_uses_command_and_timeout() -> None:
    action = RestartAction.from_config(
        WatchdogConfig(restart_command=("false",), restart_timeout=7.0), dry_run=True
    )
    assert (action.command, action.timeout, action.dry_run) == (("false",), 7.0, True)


# -- Watchdog: policy + action + logs + metrics -------------------------------------------------


def sample(watchdog: Watchdog, name: str, labels: dict[str, str] | None = None) -> float | None:
    return registry_of(watchdog).get_sample_value(name, labels or {})


def quick_config(command: Sequence[str], **overrides: object) -> WatchdogConfig:
    values: dict[str, object] = {
        "startup_grace": 0.0,
        "failure_threshold": 2,
        "restart_command": tuple(command),
        "restart_timeout": DEADLINE,
    }
    values.update(overrides)
    return WatchdogConfig(**values)  # type: ignore[arg-type]


def test_watchdog_runs_the_command_after_threshold_and_exports_it(tmp_path: Path) -> None:
    marker = tmp_path / "restarts"
    config = quick_config(sh(f"echo restarted >> {marker}"))
    wall = FakeClock(1_700_000_000.0)
    with capture_logs() as logs:
        wd = Watchdog(config, wall_clock=wall)
        assert not wd.observe(live(False, "refused")).restart
        assert not marker.exists()
        decision = wd.observe(live(False, "refused"))
        assert decision.restart
        assert wd.wait_for_restart(DEADLINE)
    assert marker.read_text() == "restarted\n"
    events = [e["event"] for e in logs]
    assert events == [
        "watchdog_state_changed",
        "restart_decided",
        "restart_command_succeeded",
        "restart_finished",
    ]
    decided = logs[1]
    assert decided["reason"] == "liveness"
    assert decided["log_level"] == "warning"
    assert decided["last_error"] == "refused"
    assert sample(wd, "ollama_watchdog_restarts_total", {"reason": "liveness"}) == 1.0
    assert sample(wd, "ollama_watchdog_restart_failures_total") == 0.0
    assert sample(wd, "ollama_watchdog_last_restart_timestamp_seconds") == 1_700_000_000.0


def test_failing_restart_command_is_counted_and_the_watchdog_carries_on() -> None:
    config = quick_config(sh("echo 'Access denied' >&2; exit 1"), failure_threshold=1)
    with capture_logs() as logs:
        wd = Watchdog(config)
        assert wd.observe(live(False, "timeout after 5s")).restart
        assert wd.wait_for_restart(DEADLINE)
    assert sample(wd, "ollama_watchdog_restart_failures_total") == 1.0
    assert wd.snapshot().last_error == "restart failed: exit status 1: Access denied"
    finished = next(e for e in logs if e["event"] == "restart_finished")
    assert finished["last_error"] == "restart failed: exit status 1: Access denied"
    # still observing and deciding afterwards
    assert wd.observe(live(True)).state_after is State.HEALTHY


def test_the_loop_is_not_blocked_while_the_restart_command_runs(tmp_path: Path) -> None:
    go = tmp_path / "go"
    # a restart that lasts until the test says so, however slow the machine is
    config = quick_config(sh(f"while [ ! -e {go} ]; do sleep 0.05; done"), failure_threshold=1)
    wd = Watchdog(config)
    try:
        assert wd.observe(live(False, "timeout after 5s")).restart
        # the observation came back while the command still runs: the loop keeps going
        for _ in range(5):
            d = wd.observe(live(False, "timeout after 5s"))
            assert not d.restart
            assert d.state_after is State.RESTARTING
        assert wd.status().startswith("restarting ollama (liveness)")
    finally:
        go.touch()
    assert wd.wait_for_restart(DEADLINE)
    assert sample(wd, "ollama_watchdog_restarts_total", {"reason": "liveness"}) == 1.0
    assert sample(wd, "ollama_watchdog_restart_failures_total") == 0.0


def test_dry_run_watchdog_counts_restarts_without_running_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = quick_config(["touch", str(marker)], failure_threshold=1)
    wd = Watchdog(config, dry_run=True)
    assert wd.observe(live(False, "refused")).restart
    assert wd.wait_for_restart(DEADLINE)
    assert not marker.exists()
    # a dry run counts what it would have done apart from what was done
    assert sample(wd, "ollama_watchdog_restarts_total", {"reason": "liveness"}) == 0.0
    skipped = {"action": "restart_server", "reason": "liveness"}
    assert sample(wd, "ollama_watchdog_remediations_skipped_total", skipped) == 1.0
    assert sample(wd, "ollama_watchdog_dry_run") == 1.0


def test_watchdog_state_metric_follows_the_policy() -> None:
    clock = FakeClock(0.0)
    wd = Watchdog(quick_config(["true"], max_restarts=0), clock=clock)
    assert sample(wd, "ollama_watchdog_state", {"state": "healthy"}) == 1.0
    clock.t = 10.0
    wd.observe(live(False, "refused"))
    assert sample(wd, "ollama_watchdog_state", {"state": "degraded"}) == 1.0
    assert sample(wd, "ollama_watchdog_consecutive_failures") == 1.0
    clock.t = 20.0
    wd.observe(live(False, "refused"))
    assert sample(wd, "ollama_watchdog_state", {"state": "gave_up"}) == 1.0
    assert sample(wd, "ollama_watchdog_restart_budget_remaining") == 0.0
    assert wd.status() == "gave up after 0 restarts in 30m; last error: refused"


def test_a_finished_restart_is_logged_by_the_next_observation(tmp_path: Path) -> None:
    go = tmp_path / "go"
    config = quick_config(sh(f"while [ ! -e {go} ]; do sleep 0.05; done"), failure_threshold=1)
    with capture_logs() as logs:
        wd = Watchdog(config)
        try:
            assert wd.observe(live(False, "refused")).restart
        finally:
            go.touch()
        end = time.monotonic() + DEADLINE
        while wd.snapshot().state is not State.HEALTHY and time.monotonic() < end:
            wd.observe(live(True))
            time.sleep(0.05)
    assert wd.snapshot().state is State.HEALTHY
    events = [e["event"] for e in logs]
    assert events[-2:] == ["restart_finished", "watchdog_state_changed"]
    assert events.count("restart_finished") == 1
