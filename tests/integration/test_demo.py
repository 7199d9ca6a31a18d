"""``ollama-watchdog demo``: the tour of four faults, the live status line, and a real Prometheus
firing a shipped alert — each run as the user runs it, a process with its own simulator."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support.tools import free_port, require_tool

from ollama_watchdog.commands import demo
from ollama_watchdog.exporter.scrape import Samples

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "prometheus"


def shipped_alerts() -> set[str]:
    doc = yaml.safe_load((RULES / "alerts.yml").read_text())
    return {r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r}


def demo_argv(*extra: str) -> list[str]:
    return [
        sys.executable, "-m", "ollama_watchdog", "demo",
        "--listen", f"127.0.0.1:{free_port()}",
        "--ollama-listen", f"127.0.0.1:{free_port()}",
        "--control-listen", f"127.0.0.1:{free_port()}",
        *extra,
    ]  # fmt: skip


def run_tour(*extra: str) -> str:
    proc = subprocess.run(
        demo_argv("--tour", *extra), capture_output=True, text=True, timeout=280,
        start_new_session=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def step_text(out: str, title: str) -> str:
    start = out.index(title)
    end = out.find("\n[", start)
    return out[start : end if end >= 0 else len(out)]


def named_alerts(step: str) -> set[str]:
    [line] = [x for x in step.splitlines() if "alerts built on it (prometheus/alerts.yml):" in x]
    items = line.split(": ", 1)[1].split("; ")
    return {item.split(" ", 1)[0] for item in items}


def test_the_tour_runs_to_the_end_naming_metrics_and_alerts() -> None:
    out = run_tour()
    assert out.rstrip().endswith("tour: done")
    # no JSON log line on stdout: the log goes to the file the banner names
    assert not [x for x in out.splitlines() if x.startswith("{")]
    assert "watchdog log (JSON lines): " in out
    known = shipped_alerts()

    hang = step_text(out, "[1/4] hang")
    assert "metric moved: ollama_up  1 -> 0" in hang
    assert 'metric moved: ollama_watchdog_restarts_total{reason="liveness"}  0 -> 1' in hang
    assert "OllamaDown" in named_alerts(hang)

    busy = step_text(out, "[2/4] busy")
    assert 'metric moved: ollama_http_requests_total{code="503"} on inference routes  0 -> ' in busy
    # the lesson of busy: users get 503 while liveness passes and nothing is restarted
    assert "ollama_up is 1 and the watchdog state healthy: liveness still passes" in busy

    crash = step_text(out, "[3/4] runner crash")
    assert 'ollama_runner_errors_total{kind="runner_terminated"} 0 -> ' in crash
    assert "OllamaRunnerErrors" in named_alerts(crash)

    oom = step_text(out, "[4/4] out of memory")
    assert 'metric moved: ollama_runner_errors_total{kind="out_of_memory"}  0 -> ' in oom
    assert "OllamaRunnerErrors" in named_alerts(oom)

    for step in (hang, busy, crash, oom):
        assert named_alerts(step) <= known, "the tour names an alert alerts.yml does not have"
        assert "cleared: healthy again" in step


def test_with_prometheus_a_shipped_alert_is_seen_firing() -> None:
    require_tool("prometheus")
    out = run_tour(
        "runner_crash", "--prometheus", "--prometheus-listen", f"127.0.0.1:{free_port()}"
    )
    firing = [x.strip() for x in out.splitlines() if x.strip().startswith("FIRING ")]
    assert firing, out
    assert any(x.startswith('FIRING OllamaRunnerErrors{kind="runner_terminated"') for x in firing)
    assert "/api/v1/alerts" in out


def test_on_a_terminal_one_status_line_is_redrawn_in_place() -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        demo_argv("--no-traffic"), stdin=follower, stdout=follower, stderr=follower,
        start_new_session=True, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        # the first lines may say "up ?": drawn before the first probe's answer
        while time.monotonic() < deadline and b"state healthy     | up 1 |" not in seen:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(leader, 65536)
                except OSError:
                    break
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        os.close(leader)
    text = seen.decode(errors="replace")
    assert "\r\x1b[Kstate healthy     | up 1 |" in text, text
    assert "| 5xx 0 | restarts 0" in text
    assert '"event"' not in text  # the JSON log went to the file the banner names
    assert "watchdog log (JSON lines): " in text


def test_not_on_a_terminal_the_json_log_lines_stay() -> None:
    proc = subprocess.Popen(
        demo_argv("--no-traffic"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            if '"event": "started"' in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert any('"event": "started"' in x for x in lines), lines
    assert "state healthy" not in out.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# the pieces, on plain data and the shipped rules


def test_alerts_on_a_metric_include_those_through_recording_rules() -> None:
    alerts, records = demo.load_rules(RULES)
    assert "OllamaDown" in {a.name for a in demo.alerts_on("ollama_up", alerts, records)}
    # OllamaHighErrorRatio uses ollama:http_requests_errors:ratio_rate5m, recorded from it
    via = {a.name for a in demo.alerts_on("ollama_http_requests_total", alerts, records)}
    assert "OllamaHighErrorRatio" in via
    assert demo.alerts_on("ollama_no_such_metric", alerts, records) == []


def status_samples(requests_total: float, state: str = "healthy") -> Samples:
    return {
        ("ollama_up", ()): 1.0,
        ("ollama_watchdog_state", (("state", state),)): 1.0,
        ("ollama_watchdog_state", (("state", "gave_up"),)): 0.0,
        ("ollama_http_requests_total", (("code", "200"), ("method", "POST"),
                                        ("route", "/api/generate"))): requests_total,
        ("ollama_http_requests_total", (("code", "503"), ("method", "POST"),
                                        ("route", "/api/chat"))): 2.0,
        ("ollama_http_requests_total", (("code", "200"), ("method", "GET"),
                                        ("route", "/api/version"))): 500.0,
        ("ollama_watchdog_restarts_total", (("reason", "liveness"),)): 1.0,
    }  # fmt: skip


def test_status_line_counts_inference_requests_only() -> None:
    before = demo.read_status(status_samples(10), at=100.0)
    now = demo.read_status(status_samples(30), at=110.0)
    # 20 generations in 10 s; the watchdog's own /api/version probes are not user traffic
    assert demo.render_status(now, before) == (
        "state healthy     | up 1 |  2.0 req/s | 5xx 2 | restarts 1"
    )
    assert demo.render_status(now, None, ["OllamaDown"]).endswith(" | firing: OllamaDown")


@pytest.mark.parametrize("spec", ["hang,nope", ","])
def test_an_unknown_tour_step_is_refused(spec: str) -> None:
    proc = subprocess.run(demo_argv("--tour", spec), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "choose from hang, busy, runner_crash, oom" in proc.stderr
