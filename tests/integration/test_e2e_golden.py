"""Golden end-to-end output of /metrics (node_exporter's e2e-output.txt habit).

The daemon scrapes a simulator (started as ``ollama serve``, one model loaded, its log file
followed); the exposition is normalised — values that depend on time, memory or scheduling are
masked, stable ones kept — and compared with ``tests/fixtures/e2e-output.txt``. Any renamed,
added or removed metric, label or help text shows up as a diff. ``pytest --update-golden``
rewrites the file; review the diff before committing it. The raw scrape also goes through
``promtool check metrics``.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.sim import SimulatorProcess
from support.tools import require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "e2e-output.txt"

# Families whose values are a property of the scenario, not of timing: kept verbatim.
STABLE = {
    "ollama_up",
    "ollama_build_info",
    "ollama_probe_success",
    "ollama_models_available",
    "ollama_models_loaded",
    "ollama_model_loaded",
    "ollama_process_up",
    "ollama_process_runners",
    "ollama_process_orphan_runners",
    "ollama_watchdog_state",
    "ollama_watchdog_collector_success",
    "ollama_watchdog_config_last_reload_successful",
    "ollama_watchdog_state_write_failures_total",
    "ollama_watchdog_restarts_total",
    "ollama_watchdog_restart_failures_total",
    "ollama_watchdog_consecutive_failures",
    "ollama_runner_errors_total",
    "ollama_watchdog_log_lines_unparsed_total",
    "ollama_log_timed_completions_total",
    "ollama_log_generated_tokens_total",
    "ollama_log_prompt_tokens_total",
    "ollama_log_prefill_seconds_count",
    "ollama_log_time_per_output_token_seconds_count",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")


def normalise(text: str) -> str:
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m is None or line.startswith("#"):
            out.append(line)
            continue
        name, labels = m.group(1), m.group(2) or ""
        if name in STABLE:
            out.append(line)
        else:
            out.append(f"{name}{labels} <masked>")
    return "\n".join(out) + "\n"


def settle(d: DaemonProcess, pred: Callable[[], bool], timeout: float = 60) -> None:
    try:
        wait_until(pred, "the exporter in the expected state", timeout, interval=0.2)
    except AssertionError as err:
        raise AssertionError(f"{err}\n{d.metrics_text()}") from None


def test_metrics_match_the_golden_file(
    simulator_factory: Callable[..., SimulatorProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    log = tmp_path / "ollama.log"
    sim = simulator_factory("--models", "3", "--token-delay", "0", as_ollama=True, log_file=log)
    model = next(
        m["name"]
        for m in requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
        if "completion" in m["capabilities"]
    )
    cfg = quick_config(
        sim.url,
        tmp_path,
        ollama={"unit": "", "models_dir": str(sim.work_dir / "models")},
        logs={"source": "file", "path": str(log)},
        probe={"interval": "300ms"},
    )
    with DaemonProcess(cfg, tmp_path) as d:
        settle(d, lambda: d.value("ollama_up") == 1.0)
        r = requests.post(
            sim.url + "/api/generate",
            json={"model": model, "prompt": "golden", "stream": False, "keep_alive": "1h"},
            timeout=60,
        )
        r.raise_for_status()
        settle(
            d,
            lambda: (
                d.value("ollama_models_loaded") == 1.0
                and d.value("ollama_process_runners") == 1.0
                and d.value("ollama_log_timed_completions_total", model=model) == 1.0
                # the follower starts at the end of the file: wait until each probe's request
                # line written after that has been counted, so every series is there
                and all(
                    (d.value("ollama_http_requests_total", code="200", method=m, route=r) or 0) >= 1
                    for m, r in (
                        ("GET", "/api/version"),
                        ("GET", "/api/tags"),
                        ("GET", "/api/ps"),
                        ("POST", "/api/generate"),
                    )
                )
            ),
        )
        raw = d.metrics_text()
    got = normalise(raw)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(got)
    assert got == GOLDEN.read_text(), "run pytest --update-golden and review the diff"

    promtool = require_tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=raw, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout
