"""``ollama-watchdog check`` as a monitoring system runs it: a process, its line, its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from support.daemon import write_config
from support.hostile import Answer, HostileServer
from support.sim import SimulatorProcess
from support.tools import free_port

from ollama_watchdog.collectors.probe import PROMPT
from ollama_watchdog.commands.check import NagiosRange, RangeError

LINE_RE = r"^OLLAMA (OK|WARNING|CRITICAL|UNKNOWN) - [^|\n]+ \| .+$"


def run_check(
    tmp_path: Path, url: str, *extra: str, deep_model: str = "", timeout: str = "2s"
) -> tuple[int, str]:
    config = write_config(
        tmp_path / "check.toml",
        {
            "ollama": {"url": url, "timeout": timeout},
            "probe": {"deep_model": deep_model, "deep_timeout": "30s"},
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "check", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stderr == ""
    return proc.returncode, proc.stdout


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    with SimulatorProcess(tmp_path / "sim", ["--token-delay", "0.001"]) as process:
        yield process


def chat_model(sim: SimulatorProcess) -> str:
    models = requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    return str(next(m["name"] for m in models if "embed" not in m["name"]))


def perfdata(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split(" | ", 1)[1].split())


def test_healthy_ollama_is_ok_with_perfdata(tmp_path: Path, sim: SimulatorProcess) -> None:
    code, out = run_check(tmp_path, sim.url)
    assert code == 0
    line = out.rstrip("\n")
    assert "\n" not in line
    assert line.startswith(
        f"OLLAMA OK - Ollama 0.32.15 at {sim.url}, 3 models, 0 loaded, generation not checked "
        "(set [probe] deep_model or --model) | "
    )
    perf = perfdata(line)
    assert set(perf) == {"version_seconds", "tags_seconds", "ps_seconds", "models", "loaded"}
    assert perf["models"] == "3;;;0" and perf["loaded"] == "0;;;0"
    assert perf["version_seconds"].endswith("s;;;0")


def test_deep_probe_adds_generation_figures(tmp_path: Path, sim: SimulatorProcess) -> None:
    model = chat_model(sim)
    code, out = run_check(tmp_path, sim.url, deep_model=model)
    assert code == 0, out
    assert f"{model} generates, first token " in out
    perf = perfdata(out.strip())
    assert {"generate_seconds", "ttft_seconds", "tokens_per_second", "load_seconds"} <= set(perf)
    assert PROMPT not in out and "simulated" not in out


def test_no_deep_skips_the_generation(tmp_path: Path, sim: SimulatorProcess) -> None:
    code, out = run_check(tmp_path, sim.url, "--no-deep", deep_model=chat_model(sim))
    assert code == 0
    assert "generate" not in out


def test_nothing_listening_is_critical(tmp_path: Path) -> None:
    port = free_port()
    code, out = run_check(tmp_path, f"http://127.0.0.1:{port}")
    assert code == 2
    assert out.startswith(
        f"OLLAMA CRITICAL - Ollama is not answering at http://127.0.0.1:{port}: refused "
        "(connection refused)"
    )
    assert list(perfdata(out.strip())) == ["version_seconds"]


def test_a_hung_server_is_critical_timeout(tmp_path: Path, sim: SimulatorProcess) -> None:
    sim.set_fault("hang")
    code, out = run_check(tmp_path, sim.url, timeout="1s")
    assert code == 2
    assert f"Ollama is not answering at {sim.url}: timeout" in out


def test_a_server_answering_html_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    sim.set_fault("malformed")
    code, out = run_check(tmp_path, sim.url)
    assert code == 2
    assert f"Ollama is not answering at {sim.url}: bad_response" in out


def test_a_model_that_cannot_generate_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    model = chat_model(sim)
    sim.set_fault("runner_crash")
    code, out = run_check(tmp_path, sim.url, deep_model=model)
    assert code == 2
    assert out.startswith(f"OLLAMA CRITICAL - generate with {model} at {sim.url} failed: ")
    # the facts that were found are still reported
    assert f"Ollama 0.32.15 at {sim.url}, 3 models" in out


def test_a_missing_deep_model_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    code, out = run_check(tmp_path, sim.url, deep_model="mistral:7b")
    assert code == 2
    assert (
        f"generate with mistral:7b at {sim.url} failed: http_error "
        "(HTTP 404: model 'mistral:7b' not found" in out
    )


def test_no_models_installed_is_a_warning(tmp_path: Path) -> None:
    with SimulatorProcess(tmp_path / "empty", ["--models", "0"]) as sim:
        code, out = run_check(tmp_path, sim.url)
    assert code == 1
    assert out.startswith(
        f"OLLAMA WARNING - no models installed; Ollama 0.32.15 at {sim.url}, 0 models"
    )


def test_json_output(tmp_path: Path, sim: SimulatorProcess) -> None:
    model = chat_model(sim)
    code, out = run_check(tmp_path, sim.url, "--json", deep_model=model)
    doc: dict[str, Any] = json.loads(out)
    assert code == 0 and doc["exit_code"] == 0 and doc["status"] == "OK"
    assert doc["version"] == "0.32.15"
    assert model in doc["models"]
    assert doc["loaded"] == []  # /api/ps is asked before the deep probe loads the model
    assert [p["probe"] for p in doc["probes"]] == ["version", "tags", "ps", "generate"]
    assert all(p["ok"] for p in doc["probes"])
    assert doc["generate"]["model"] == model and doc["generate"]["eval_count"] > 0
    assert doc["generate"]["tokens_per_second"] > 0
    assert PROMPT not in out


def test_json_output_when_down(tmp_path: Path) -> None:
    code, out = run_check(tmp_path, f"http://127.0.0.1:{free_port()}", "--json")
    doc = json.loads(out)
    assert code == 2 and doc["status"] == "CRITICAL" and doc["version"] is None
    assert doc["probes"] == [
        {
            "probe": "version",
            "ok": False,
            "duration_seconds": doc["probes"][0]["duration_seconds"],
            "reason": "refused",
            "detail": "connection refused",
        }
    ]


def run_plugin(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "check", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_config_is_unknown_naming_the_key(tmp_path: Path) -> None:
    # Nagios reads stdout and the exit code: 78 would show as UNKNOWN "(Return code of 78 is
    # out of bounds)" with the reason lost on stderr
    config = tmp_path / "bad.toml"
    config.write_text('[watchdog]\nfailure_threshold = "3"\n')
    proc = run_plugin("--config", str(config))
    assert proc.returncode == 3
    assert proc.stdout == (
        f'OLLAMA UNKNOWN - config error: {config}: watchdog.failure_threshold = "3" is a string: '
        "write failure_threshold = 3 (an integer, no quotes)\n"
    )
    assert proc.stderr == ""


def test_a_missing_config_is_unknown_naming_the_path(tmp_path: Path) -> None:
    absent = tmp_path / "2.toml"
    proc = run_plugin("--config", str(absent))
    assert proc.returncode == 3
    assert proc.stdout.startswith(
        f"OLLAMA UNKNOWN - config error: {absent}: config file not found: "
    )


def test_a_busy_server_is_critical_inference_refused(tmp_path: Path, sim: SimulatorProcess) -> None:
    # the queue is full: /api/version answers, every generation gets 503 — users are down
    model = chat_model(sim)
    sim.set_fault("busy")
    code, out = run_check(tmp_path, sim.url, deep_model=model)
    assert code == 2, out
    assert out.startswith(
        f"OLLAMA CRITICAL - Ollama refuses inference: generate with {model} at {sim.url} "
        "answered HTTP 503: server busy"
    )
    assert "OLLAMA_MAX_QUEUE" in out
    assert perfdata(out.strip())["generate_seconds"].endswith("s;;;0")


def test_model_flag_probes_generation_without_a_deep_model(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    model = chat_model(sim)
    sim.set_fault("busy")
    code, out = run_check(tmp_path, sim.url, "--model", model)
    assert code == 2 and "Ollama refuses inference" in out


def test_thresholds_that_do_not_match_are_ok_and_in_perfdata(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    code, out = run_check(tmp_path, sim.url, "--warning", "3600", "--critical", "@7200:")
    assert code == 0, out
    perf = perfdata(out.strip())
    assert perf["version_seconds"].endswith("s;3600;@7200:;0")
    assert perf["tags_seconds"].endswith("s;;;0")


def test_a_slow_api_crosses_the_warning_range(tmp_path: Path, sim: SimulatorProcess) -> None:
    sim.set_fault("slow", delay=1.0)  # every answer takes at least 1 s
    code, out = run_check(tmp_path, sim.url, "-w", "0.5", "-c", "3600", timeout="10s")
    assert code == 1, out
    assert out.startswith("OLLAMA WARNING - /api/version answered after ")
    assert "s (warning range 0.5: above 0.5s); Ollama 0.32.15" in out
    assert perfdata(out.strip())["version_seconds"].endswith("s;0.5;3600;0")


def test_a_slow_first_token_crosses_the_critical_range(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    model = chat_model(sim)
    sim.set_fault("slow", delay=1.0)
    code, out = run_check(
        tmp_path, sim.url, "-w", "0.2", "-c", "0.5", deep_model=model, timeout="10s"
    )
    assert code == 2, out
    assert out.startswith("OLLAMA CRITICAL - first token after ")
    assert "(critical range 0.5: above 0.5s)" in out
    perf = perfdata(out.strip())
    # the ranges sit on what was judged: the time to first token, not the API's answer time
    assert perf["ttft_seconds"].endswith("s;0.2;0.5;0")
    assert perf["version_seconds"].endswith("s;;;0")


def test_a_bad_range_is_unknown(tmp_path: Path, sim: SimulatorProcess) -> None:
    code, out = run_check(tmp_path, sim.url, "--warning", "fast")
    assert code == 3
    assert out.startswith("OLLAMA UNKNOWN - threshold 'fast' is not a Nagios range: use 10 ")


@pytest.mark.parametrize(
    ("text", "alerting", "quiet"),
    [
        ("10", [-1, 10.5], [0, 5, 10]),
        ("10:", [9.9, -1], [10, 1e9]),
        ("~:10", [10.1], [-1e9, 0, 10]),
        ("10:20", [9, 21], [10, 15, 20]),
        ("@10:20", [10, 15, 20], [9, 21]),
        ("0.5", [0.6], [0.5, 0.1]),
    ],
)
def test_nagios_ranges(text: str, alerting: list[float], quiet: list[float]) -> None:
    bound = NagiosRange.parse(text)
    assert [bound.alerts(v) for v in alerting] == [True] * len(alerting)
    assert [bound.alerts(v) for v in quiet] == [False] * len(quiet)


@pytest.mark.parametrize("text", ["", "fast", "20:10", "@", "1:2:3", "10s"])
def test_bad_nagios_ranges(text: str) -> None:
    with pytest.raises(RangeError):
        NagiosRange.parse(text)


def test_check_honours_its_timeout_against_a_trickling_server(tmp_path: Path) -> None:
    # issue 18: a byte every 0.3 s renewed the per-read timeout, so check hung for minutes;
    # the whole exchange now has the configured 1 s (run_check's subprocess allows 120 s)
    answer = Answer(body=lambda: [b'{"version":"0.32.15"}'], trickle_head=0.3)
    with HostileServer({"/api/version": answer}) as srv:
        code, out = run_check(tmp_path, srv.url, timeout="1s")
    assert code == 2
    assert out.startswith(f"OLLAMA CRITICAL - Ollama is not answering at {srv.url}: timeout")
