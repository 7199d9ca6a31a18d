"""The daemon as a process: exposition, bad input, signals — against the simulator."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config, write_config
from support.sim import SimulatorProcess
from support.tools import free_port, require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration


def test_metrics_against_a_healthy_simulator(simulator: SimulatorProcess, tmp_path: Path) -> None:
    with DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path) as d:
        assert d.wait_value("ollama_up", 1.0) == 1.0
        m = d.metrics()
        assert m[("ollama_build_info", (("version", "0.32.15"),))] == 1.0
        assert m[("ollama_probe_success", (("probe", "tags"),))] == 1.0
        assert m[("ollama_models_available", ())] >= 1
        assert m[("ollama_models_loaded", ())] == 0
        assert m[("ollama_watchdog_collector_success", (("collector", "api"),))] == 1.0
        assert m[("ollama_watchdog_build_info", (("version", _version()),))] == 1.0
        assert m[("ollama_watchdog_config_last_reload_successful", ())] == 1.0


def _version() -> str:
    from ollama_watchdog import __version__

    return __version__


def test_promtool_finds_no_problem_in_a_live_scrape(
    simulator: SimulatorProcess, tmp_path: Path
) -> None:
    promtool = require_tool("promtool", "prometheus")
    with DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        text = d.metrics_text()
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == ""


def test_openmetrics_on_request(simulator: SimulatorProcess, tmp_path: Path) -> None:
    with DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        r = requests.get(
            d.url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=5,
        )
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert r.text.rstrip().endswith("# EOF")
        plain = requests.get(d.url + "/metrics", timeout=5)
        assert plain.headers["Content-Type"].startswith("text/plain")
        landing = requests.get(d.url + "/", timeout=5)
        assert 'href="/metrics"' in landing.text and 'href="/healthz"' in landing.text
        assert requests.get(d.url + "/nope", timeout=5).status_code == 404


def test_scrape_answers_while_ollama_hangs(simulator: SimulatorProcess, tmp_path: Path) -> None:
    cfg = quick_config(simulator.url, tmp_path, ollama={"timeout": "5s"})
    with DaemonProcess(cfg, tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        simulator.set_fault("hang")
        # every probe now waits its full 5 s; scrapes keep answering from the last snapshot
        for _ in range(20):
            requests.get(d.url + "/metrics", timeout=2).raise_for_status()
        assert d.wait_value("ollama_up", 0.0) == 0.0
        m = d.metrics()
        assert (
            m[("ollama_probe_failures_total", (("probe", "version"), ("reason", "timeout")))] >= 1
        )


def test_unreachable_ollama_at_start(tmp_path: Path) -> None:
    cfg = quick_config(f"http://127.0.0.1:{free_port()}", tmp_path)
    with DaemonProcess(cfg, tmp_path) as d:
        assert d.wait_value("ollama_up", 0.0) == 0.0
        refused = (("probe", "version"), ("reason", "refused"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and d.value(
            "ollama_probe_failures_total", **dict(refused)
        ) in (None, 0.0):
            time.sleep(0.2)
        assert (d.value("ollama_probe_failures_total", **dict(refused)) or 0) >= 1


def test_garbage_from_ollama_counts_as_failure(simulator: SimulatorProcess, tmp_path: Path) -> None:
    with DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        simulator.set_fault("malformed")
        assert d.wait_value("ollama_up", 0.0) == 0.0
        bad = d.value("ollama_probe_failures_total", probe="version", reason="bad_response")
        assert bad is not None and bad >= 1
        assert d.proc is not None and d.proc.poll() is None  # still running
        simulator.clear_fault()
        assert d.wait_value("ollama_up", 1.0) == 1.0


def test_port_in_use_is_a_clear_error(simulator: SimulatorProcess, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = quick_config(simulator.url, tmp_path, port=port)
        path = write_config(tmp_path / "c.toml", cfg)
        proc = subprocess.run(
            [sys.executable, "-m", "ollama_watchdog", "run", "--config", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr


def test_ready_follows_the_liveness_probe(simulator: SimulatorProcess, tmp_path: Path) -> None:
    agent_port = free_port()
    config = quick_config(
        simulator.url, tmp_path, fleet={"agent_listen": f"127.0.0.1:{agent_port}"}
    )

    def ready() -> tuple[int, str]:
        r = requests.get(d.url + "/ready", timeout=5)
        return r.status_code, r.text

    def agent() -> bytes:
        with socket.create_connection(("127.0.0.1", agent_port), timeout=5) as sock:
            return sock.recv(64)

    with DaemonProcess(config, tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        assert ready() == (200, "ready\n")
        assert agent() == b"ready\n"
        assert d.wait_value("ollama_watchdog_ready", 1.0) == 1.0
        simulator.set_fault("hang")
        assert d.wait_value("ollama_watchdog_ready", 0.0) == 0.0
        assert ready() == (503, "down\n")
        assert agent() == b"maint\n"
        simulator.clear_fault()
        assert d.wait_value("ollama_watchdog_ready", 1.0) == 1.0
        assert ready() == (200, "ready\n")


def test_agent_port_in_use_is_a_clear_error(simulator: SimulatorProcess, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        config = quick_config(simulator.url, tmp_path, fleet={"agent_listen": f"127.0.0.1:{port}"})
        path = write_config(tmp_path / "c.toml", config)
        proc = subprocess.run(
            [sys.executable, "-m", "ollama_watchdog", "run", "--config", str(path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "[fleet] agent_listen" in proc.stderr


def test_sigterm_stops_cleanly(simulator: SimulatorProcess, tmp_path: Path) -> None:
    d = DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path).start()
    try:
        simulator.set_fault("hang")  # a probe is in flight when the signal comes
        time.sleep(1)
        d.signal(signal.SIGTERM)
        assert d.proc is not None
        assert d.proc.wait(timeout=30) == 0
        assert '"event": "stopping"' in d.stderr()
    finally:
        d.stop()


def test_sighup_reload_good_and_bad(simulator: SimulatorProcess, tmp_path: Path) -> None:
    cfg = quick_config(simulator.url, tmp_path)
    with DaemonProcess(cfg, tmp_path) as d:
        d.wait_value("ollama_up", 1.0)
        # a broken config: refused, the old one stays in force
        d.config_path.write_text('[probe]\ninterval = "fast"\n')
        d.signal(signal.SIGHUP)
        assert d.wait_value("ollama_watchdog_config_last_reload_successful", 0.0) == 0.0
        assert d.value("ollama_up") == 1.0
        assert "reload_failed" in d.stderr() and "probe.interval" in d.stderr()
        # a good config pointing elsewhere: applied
        cfg["ollama"]["url"] = f"http://127.0.0.1:{free_port()}"
        write_config(d.config_path, cfg)
        d.signal(signal.SIGHUP)
        assert d.wait_value("ollama_watchdog_config_last_reload_successful", 1.0) == 1.0
        assert d.wait_value("ollama_up", 0.0) == 0.0


def test_real_prometheus_sees_up_then_down(simulator: SimulatorProcess, tmp_path: Path) -> None:
    prometheus = require_tool("prometheus")
    d = DaemonProcess(quick_config(simulator.url, tmp_path), tmp_path)
    with d, _prometheus(prometheus, d.url.removeprefix("http://"), tmp_path) as prom:
        assert _wait_query(prom, "ollama_up", "1")
        simulator.set_fault("hang")
        assert _wait_query(prom, "ollama_up", "0")


class _prometheus:
    def __init__(self, binary: str, target: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: ollama-watchdog\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.cmd = [
            binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]  # fmt: skip
        self.log = tmp / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> _prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=log)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _wait_query(prom: _prometheus, expr: str, want: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=5)
            result = r.json()["data"]["result"]
            if result and result[0]["value"][1] == want:
                return True
        except (requests.RequestException, KeyError, ValueError):
            pass
        time.sleep(0.5)
    return False


GIN = '[GIN] 2026/01/20 - 23:15:46 | 200 | {n:>11}µs |       127.0.0.1 | POST     "/api/chat"\n'


def requests_counted(d: DaemonProcess) -> float:
    return sum(v for (name, _), v in d.metrics().items() if name == "ollama_http_requests_total")


def test_a_reload_loses_no_line_and_resets_no_counter(
    simulator: SimulatorProcess, tmp_path: Path
) -> None:
    """Issue 18.5: every SIGHUP rebuilt every collector, so the counters fell to 0 and the log
    was reopened at its end, losing the lines written meanwhile. A collector whose settings did
    not change is kept."""
    log = tmp_path / "ollama.log"
    log.write_text("")
    cfg = quick_config(simulator.url, tmp_path, logs={"source": "file", "path": str(log)})
    with DaemonProcess(cfg, tmp_path) as d, log.open("a", encoding="utf-8", buffering=1) as f:
        d.wait_value("ollama_watchdog_collector_success", 1.0, collector="logs")
        written = 0

        def write(n: int) -> None:
            nonlocal written
            for _ in range(n):
                f.write(GIN.format(n=written))
                written += 1

        write(5)
        wait_until(lambda: requests_counted(d) == 5, "5 requests counted")
        seen = [requests_counted(d)]
        # the same file, a changed [watchdog] section, then a changed probe interval: lines
        # keep arriving right through each reload
        for change in ({}, {"watchdog": {"failure_threshold": 5}}, {"probe": {"interval": "1s"}}):
            for section, body in change.items():
                cfg[section].update(body)
            write_config(d.config_path, cfg)
            d.signal(signal.SIGHUP)
            for _ in range(10):
                write(3)
                seen.append(requests_counted(d))
                time.sleep(0.05)
            wait_until(lambda: requests_counted(d) == written, f"{written} requests counted")
        assert written == 5 + 3 * 10 * 3
        assert seen == sorted(seen), "a counter went down across a reload"
        assert d.value("ollama_watchdog_config_last_reload_successful") == 1.0
        events = [json.loads(x) for x in d.stderr().splitlines() if x.startswith("{")]
        reloads = [e for e in events if e.get("event") == "collectors_reloaded"]
        assert [e["rebuilt"] for e in reloads] == [[], [], []]
        assert all("logs" in e["kept"] for e in reloads)
