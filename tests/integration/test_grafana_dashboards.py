"""Every Grafana panel query and every Prometheus rule, evaluated by a real Prometheus.

The stack is the demo's: the Ollama simulator, ``ollama-watchdog run`` following the
simulator's log file, and a real ``prometheus`` scraping the watchdog every second with
prometheus/alerts.yml and recordings.yml loaded. After some generate/chat traffic, each panel
query (template variables replaced by concrete values, as Grafana would) and each rule
expression goes through ``/api/v1/query``: any error fails, and so does any metric name that
neither the exporter nor a recording rule provides. A few panels must also show data, so a
dashboard whose queries all silently return nothing cannot pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from support.daemon import DaemonProcess, quick_config
from support.prometheus import PrometheusProcess
from support.sim import SimulatorProcess
from support.tools import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = [REPO / "prometheus" / "alerts.yml", REPO / "prometheus" / "recordings.yml"]
GPU_SOURCE = REPO / "src" / "ollama_watchdog" / "collectors" / "gpu.py"
JOB = "ollama-watchdog"

# Panels that must show data with the demo's traffic (GPU panels cannot: no GPU here).
MUST_HAVE_DATA = {
    "Ollama up",
    "Ready",
    "Watchdog state",
    "Inference error ratio",
    "Inference error ratio by host",
    "Loaded models",
    "Up / down",
    "Request rate by route",
    "Request latency p50 / p95 / p99 by route",
    "Generated tokens per second by model",
    "Loaded models: memory",
    "Host memory",
}
# A name followed by "{" in our queries is always a metric name (functions take "(").
METRIC_NAME = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")


@dataclass
class Stack:
    prometheus: str
    instance: str
    exposition: str


def traffic(sim: SimulatorProcess) -> None:
    """Requests of the kinds the dashboards chart: streamed generate and chat, a 404."""
    model = sim.generation_model()
    for _ in range(3):
        body = {"model": model, "prompt": "count to three", "options": {"num_predict": 8}}
        requests.post(f"{sim.url}/api/generate", json=body, timeout=60).raise_for_status()
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": False}
        requests.post(f"{sim.url}/api/chat", json=chat, timeout=60).raise_for_status()
    requests.post(f"{sim.url}/api/generate", json={"model": "nope"}, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("stack")
    log = tmp / "ollama.log"
    (tmp / "models").mkdir()
    sim = SimulatorProcess(tmp / "sim", log_file=log)
    prometheus: PrometheusProcess | None = None
    daemon: DaemonProcess | None = None
    try:
        sim.start()
        model = sim.generation_model()
        config = quick_config(
            sim.url,
            tmp,
            logs={"source": "file", "path": str(log)},
            probe={"interval": "500ms", "deep_model": model, "deep_interval": "2s"},
        )
        daemon = DaemonProcess(config, tmp).start()
        instance = str(config["exporter"]["listen"])
        prometheus = PrometheusProcess(tmp, [instance], RULE_FILES, job=JOB)
        prometheus.start()
        query = prometheus.query

        def has(expr: str) -> bool:
            return bool(query(expr)["data"]["result"])

        # Traffic only once Prometheus scrapes: counters must rise between two scrapes for
        # rate() to see them, and the recording rules are evaluated on those samples.
        prometheus.wait(lambda: has(f'up{{job="{JOB}"}} == 1'), "scraping the watchdog")
        traffic(sim)
        prometheus.wait(
            lambda: (
                has("ollama:http_request_duration_seconds:p50_rate5m > 0")
                and has("rate(ollama_log_generated_tokens_total[1m]) > 0")
                # its own rule group, evaluated on its own clock
                and has("ollama:inference_requests_errors:ratio_rate5m")
            ),
            "seeing the traffic",
        )
        yield Stack(prometheus.url, instance, daemon.metrics_text())
    finally:
        if prometheus is not None:
            prometheus.stop()
        if daemon is not None:
            daemon.stop()
        sim.stop()


def concrete(expr: str, instance: str) -> str:
    """What Grafana sends for a panel with $instance = this host, over the last hour."""
    for variable, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "1h"),
        ("$job", JOB),
        # Grafana escapes regex metacharacters for a PromQL string: 127\\.0\\.0\\.1
        ("$instance", re.escape(instance).replace("\\", "\\\\")),
    ):
        expr = expr.replace(variable, value)
    return expr


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel or annotation title, expr) for every query in every dashboard."""
    out: list[tuple[str, str, str]] = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        panels = [p for top in board["panels"] for p in (top, *top.get("panels", []))]
        for panel in panels:
            for target in panel.get("targets") or []:
                out.append((path.name, panel["title"], target["expr"]))
        for annotation in board["annotations"]["list"]:
            if "expr" in annotation:
                out.append((path.name, f"annotation {annotation['name']}", annotation["expr"]))
    return out


def rule_queries() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((path.name, rule.get("alert") or rule["record"], rule["expr"]))
    return out


def exported_names(exposition: str) -> set[str]:
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def gpu_collector_names() -> set[str]:
    """Names the GPU collector exports on a GPU host (this test runs with [gpu] off)."""
    quoted = set(re.findall(r'"(ollama_gpu_[a-z_]+)"', GPU_SOURCE.read_text()))
    return quoted | {f"{name}_total" for name in quoted}


def test_every_panel_and_rule_query_evaluates(stack: Stack) -> None:
    errors = []
    for where, title, expr in panel_queries() + rule_queries():
        body = requests.get(
            f"{stack.prometheus}/api/v1/query",
            params={"query": concrete(expr, stack.instance)},
            timeout=30,
        ).json()
        if body.get("status") != "success":
            errors.append(f"{where} / {title}: {body.get('error')}\n    {expr}")
    assert not errors, "\n".join(errors)


def test_every_metric_name_is_exported_or_recorded(stack: Stack) -> None:
    recorded = {title for where, title, _ in rule_queries() if where == "recordings.yml"}
    live = exported_names(stack.exposition)
    known = live | recorded | {"up"}
    unknown = []
    for where, title, expr in panel_queries() + rule_queries():
        for name in METRIC_NAME.findall(expr):
            if name in known:
                continue
            # GPU families: only exported with NVML present; check them against the collector.
            if name.startswith("ollama_gpu_") and name in gpu_collector_names():
                continue
            unknown.append(f"{where} / {title}: {name}")
    assert not unknown, "\n".join(sorted(set(unknown)))


def test_core_panels_show_data_for_the_demo(stack: Stack) -> None:
    # A panel shows data when at least one of its queries does (some add an optional one).
    shows_data: dict[str, bool] = {}
    for _, title, expr in panel_queries():
        if title not in MUST_HAVE_DATA:
            continue
        body = requests.get(
            f"{stack.prometheus}/api/v1/query",
            params={"query": concrete(expr, stack.instance)},
            timeout=30,
        ).json()
        shows_data[title] = shows_data.get(title, False) or bool(body["data"]["result"])
    assert sorted(t for t in MUST_HAVE_DATA if not shows_data.get(t)) == []
