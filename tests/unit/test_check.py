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
    assert line.startswith("OLLAMA OK - Ollama 0.32.15, 3 models, 0 loaded | ")
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
    code, out = run_check(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert code == 2
    assert out.startswith("OLLAMA CRITICAL - Ollama is not answering: refused (connection refused)")
    assert list(perfdata(out.strip())) == ["version_seconds"]


def test_a_hung_server_is_critical_timeout(tmp_path: Path, sim: SimulatorProcess) -> None:
    sim.set_fault("hang")
    code, out = run_check(tmp_path, sim.url, timeout="1s")
    assert code == 2
    assert "Ollama is not answering: timeout" in out


def test_a_server_answering_html_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    sim.set_fault("malformed")
    code, out = run_check(tmp_path, sim.url)
    assert code == 2
    assert "Ollama is not answering: bad_response" in out


def test_a_model_that_cannot_generate_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    model = chat_model(sim)
    sim.set_fault("runner_crash")
    code, out = run_check(tmp_path, sim.url, deep_model=model)
    assert code == 2
    assert out.startswith(f"OLLAMA CRITICAL - generate with {model} failed: ")
    assert "Ollama 0.32.15, 3 models" in out  # the facts that were found are still reported


def test_a_missing_deep_model_is_critical(tmp_path: Path, sim: SimulatorProcess) -> None:
    code, out = run_check(tmp_path, sim.url, deep_model="mistral:7b")
    assert code == 2
    assert (
        "generate with mistral:7b failed: http_error (HTTP 404: model 'mistral:7b' not found" in out
    )


def test_no_models_installed_is_a_warning(tmp_path: Path) -> None:
    with SimulatorProcess(tmp_path / "empty", ["--models", "0"]) as sim:
        code, out = run_check(tmp_path, sim.url)
    assert code == 1
    assert out.startswith("OLLAMA WARNING - no models installed; Ollama 0.32.15, 0 models")


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


def test_a_bad_config_exits_78_not_a_nagios_state(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[probe]\ninterval = "soon"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 78
    assert "probe.interval" in proc.stderr


def test_check_honours_its_timeout_against_a_trickling_server(tmp_path: Path) -> None:
    # issue 18: a byte every 0.3 s renewed the per-read timeout, so check hung for minutes;
    # the whole exchange now has the configured 1 s (run_check's subprocess allows 120 s)
    answer = Answer(body=lambda: [b'{"version":"0.32.15"}'], trickle_head=0.3)
    with HostileServer({"/api/version": answer}) as srv:
        code, out = run_check(tmp_path, srv.url, timeout="1s")
    assert code == 2
    assert out.startswith("OLLAMA CRITICAL - Ollama is not answering: timeout")
