"""The restart side, end to end: the daemon's restart command really restarts the simulator.

The simulator runs under ``demo.SimulatorSupervisor`` (it plays systemd's ``Restart=always``);
the restart command kills the simulator by its pid file, exactly as the demo does.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.daemon import DaemonProcess, quick_config, write_config
from support.tools import free_port

from ollama_watchdog.commands.demo import SimulatorSupervisor

pytestmark = pytest.mark.integration


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[SimulatorSupervisor]:
    work = tmp_path / "sup"
    work.mkdir()
    sup = SimulatorSupervisor(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", work)
    try:
        yield sup
    finally:
        sup.stop()


def fast_watchdog(sup: SimulatorSupervisor, **overrides: Any) -> dict[str, Any]:
    wd: dict[str, Any] = {
        "enabled": True,
        "failure_threshold": 2,
        "startup_grace": "2s",
        "backoff_initial": "1s",
        "backoff_max": "8s",
        "max_restarts": 5,
        "restart_window": "10m",
        "restart_command": ["sh", "-c", f'kill -TERM "$(cat {sup.pidfile})"'],
        "restart_timeout": "5s",
    }
    wd.update(overrides)
    return wd


def events(d: DaemonProcess, name: str) -> list[dict[str, Any]]:
    out = []
    for line in d.stderr().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") == name:
            out.append(ev)
    return out


def wait_for(pred: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def config(sup: SimulatorSupervisor, tmp: Path, **wd: Any) -> dict[str, dict[str, Any]]:
    url = f"http://{sup.listen}"
    return quick_config(url, tmp, ollama={"timeout": "1s"}, watchdog=fast_watchdog(sup, **wd))


def control(sup: SimulatorSupervisor, fault: str) -> None:
    requests.post(
        f"http://{sup.control}/fault", json={"fault": fault}, timeout=5
    ).raise_for_status()


def test_hang_is_restarted_and_health_returns(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    supervisor.start()
    with DaemonProcess(config(supervisor, tmp_path), tmp_path) as d:
        assert d.wait_value("ollama_up", 1.0) == 1.0
        assert d.value("ollama_watchdog_state", state="healthy") == 1.0
        first_pid = int(supervisor.pidfile.read_text())
        control(supervisor, "hang")
        assert d.wait_value("ollama_watchdog_restarts_total", 1.0, reason="liveness") == 1.0
        assert d.wait_value("ollama_up", 1.0) == 1.0
        assert d.wait_value("ollama_watchdog_state", 1.0, state="healthy") == 1.0
        # the simulator process really was replaced, once
        assert int(supervisor.pidfile.read_text()) != first_pid
        assert supervisor.starts == 2
        assert (d.value("ollama_watchdog_last_restart_timestamp_seconds") or 0) > 0
        decided = events(d, "restart_decided")
        assert len(decided) == 1
        assert decided[0]["reason"] == "liveness"
        assert decided[0]["last_error"].startswith("timeout")
        assert events(d, "restart_command_succeeded")


def test_crash_loop_backs_off_gives_up_then_recovers(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    supervisor.args = ("--fault", "crash")  # every start dies at once: a crash loop
    supervisor.start()
    cfg = config(supervisor, tmp_path, max_restarts=3, backoff_initial="1s", backoff_max="4s")
    with DaemonProcess(cfg, tmp_path) as d:
        assert d.wait_value("ollama_watchdog_state", 1.0, timeout=90, state="gave_up") == 1.0
        assert d.value("ollama_watchdog_restarts_total", reason="liveness") == 3.0
        # backoff grew between the restarts: 1 s, then 2 s, then 4 s
        waits = [ev["next_restart_allowed_in_s"] for ev in events(d, "restart_finished")]
        assert waits == sorted(waits) and waits[0] < waits[-1], waits
        assert events(d, "restart_gave_up")
        # gave up means no further restarts, however long the failures go on
        time.sleep(6)
        assert d.value("ollama_watchdog_restarts_total", reason="liveness") == 3.0
        assert d.value("ollama_watchdog_state", state="gave_up") == 1.0
        # an operator fixes Ollama by hand: health returns and the state resets
        supervisor.args = ()
        assert d.wait_value("ollama_up", 1.0, timeout=30) == 1.0
        assert d.wait_value("ollama_watchdog_state", 1.0, state="healthy") == 1.0
        assert d.value("ollama_watchdog_restarts_total", reason="liveness") == 3.0


def test_failing_restart_command_is_counted(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    # no simulator at all: probes are refused
    cfg = config(
        supervisor,
        tmp_path,
        restart_command=[
            "sh",
            "-c",
            "echo 'Failed to restart ollama.service: Access denied' >&2; exit 4",
        ],
        max_restarts=2,
    )
    with DaemonProcess(cfg, tmp_path) as d:
        assert wait_for(lambda: (d.value("ollama_watchdog_restart_failures_total") or 0) >= 1)
        failed = events(d, "restart_command_failed")
        assert failed and failed[0]["exit_code"] == 4
        assert "Access denied" in failed[0]["stderr"]
        assert requests.get(d.url + "/healthz", timeout=5).status_code == 200
        assert d.proc is not None and d.proc.poll() is None


def test_hanging_restart_command_is_killed_and_counted(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    cfg = config(supervisor, tmp_path, restart_command=["sleep", "600"], restart_timeout="1s")
    with DaemonProcess(cfg, tmp_path) as d:
        assert wait_for(lambda: (d.value("ollama_watchdog_restart_failures_total") or 0) >= 1)
        failed = events(d, "restart_command_failed")
        assert failed and failed[0]["error_class"] == "timeout"
        # the loop kept going while the command hung
        assert requests.get(d.url + "/healthz", timeout=5).status_code == 200
        assert d.value("ollama_watchdog_collector_success", collector="api") == 1.0


def test_dry_run_decides_but_does_not_restart(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    supervisor.start()
    with DaemonProcess(config(supervisor, tmp_path), tmp_path, extra_args=("--dry-run",)) as d:
        assert d.wait_value("ollama_up", 1.0) == 1.0
        pid = int(supervisor.pidfile.read_text())
        control(supervisor, "hang")
        # the decision is counted apart: restarts_total counts what was carried out
        skipped = d.wait_value(
            "ollama_watchdog_remediations_skipped_total", 1.0,
            action="restart_server", reason="liveness",
        )  # fmt: skip
        assert skipped == 1.0
        assert d.wait_value("ollama_watchdog_restarts_total", 0.0, reason="liveness") == 0.0
        assert d.wait_value("ollama_watchdog_dry_run", 1.0) == 1.0
        assert events(d, "restart_command_skipped")
        assert int(supervisor.pidfile.read_text()) == pid and supervisor.starts == 1


def test_a_reload_during_a_restart_starts_no_second_one(
    supervisor: SimulatorSupervisor, tmp_path: Path
) -> None:
    """Issue 18.5: a SIGHUP with a changed [watchdog] section while the restart command ran
    built a policy that knew nothing of it and decided a second restart beside the first."""
    supervisor.start()
    marks = tmp_path / "restarts.log"
    # a slow restart (systemd stopping a busy Ollama), each start and end written down
    slow = ["sh", "-c", f'echo start >> {marks}; sleep 4; kill -TERM "$(cat {supervisor.pidfile})";'
            f" echo end >> {marks}"]  # fmt: skip
    cfg = config(supervisor, tmp_path, restart_command=slow, restart_timeout="20s")
    with DaemonProcess(cfg, tmp_path) as d:
        assert d.wait_value("ollama_up", 1.0) == 1.0
        control(supervisor, "hang")
        assert wait_for(lambda: marks.exists() and "start" in marks.read_text())
        # mid-restart: a changed [watchdog] section (still a hang: 2 failures would restart)
        cfg["watchdog"]["backoff_max"] = "9s"
        write_config(d.config_path, cfg)
        d.signal(signal.SIGHUP)
        assert wait_for(lambda: d.value("ollama_watchdog_config_last_reload_successful") == 1.0)
        assert d.wait_value("ollama_watchdog_state", 1.0, state="healthy") == 1.0
        time.sleep(3)  # what a second policy would have decided meanwhile
        assert marks.read_text().split() == ["start", "end"]
        assert d.value("ollama_watchdog_restarts_total", reason="liveness") == 1.0
        assert len(events(d, "restart_decided")) == 1
        assert events(d, "policy_reloaded")
