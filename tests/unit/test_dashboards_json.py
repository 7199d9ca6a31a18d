"""Structure of grafana/dashboards/*.json and grafana/provisioning/: what Grafana needs to load
them and what makes them usable (unique ids, no overlapping panels, the datasource and instance
variables wired into every query). Whether the queries run is test_grafana_dashboards.py's job.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana" / "dashboards").glob("*.json"))
GRID_WIDTH = 24


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def all_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in board["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def test_there_are_an_overview_a_host_and_a_fleet_dashboard() -> None:
    uids = {load(p)["uid"] for p in DASHBOARDS}
    assert uids == {"ollama-overview", "ollama-host", "ollama-fleet"}


def test_fleet_has_a_row_per_host_and_the_budget() -> None:
    board = load(REPO / "grafana" / "dashboards" / "ollama-fleet.json")
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == ["instance"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["instance"]["multi"] and variables["instance"]["includeAll"]
    # every panel below the repeated row belongs to it and shows one host's figure
    row_y = rows[0]["gridPos"]["y"]
    per_host = [p for p in board["panels"] if p["type"] != "row" and p["gridPos"]["y"] > row_y]
    exprs = " ".join(t["expr"] for p in per_host for t in p["targets"])
    for needed in (
        "ollama_up", "ollama_watchdog_ready", "ollama_watchdog_state",
        "ollama:inference_requests_errors:ratio_rate5m", "ollama_probe_generate_ttft_seconds",
        "ollama:log_prefill_seconds:p95_rate5m",
        "ollama_models_loaded", "ollama_gpu_memory_used_bytes",
    ):  # fmt: skip
        assert needed in exprs, needed
    above = [p for p in board["panels"] if p["gridPos"]["y"] < row_y]
    budget = " ".join(t["expr"] for p in above for t in p["targets"])
    assert 'state=~"draining|remediating|restarting|backoff"' in budget


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_header(path: Path) -> None:
    board = load(path)
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"] and len(board["uid"]) <= 40
    assert "id" not in board or board["id"] is None, "provisioned dashboards must not pin an id"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panel_ids_are_unique(path: Path) -> None:
    ids = [panel["id"] for panel in all_panels(load(path))]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_fit_the_grid_without_overlapping(path: Path) -> None:
    boxes = []
    for panel in load(path)["panels"]:
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, panel["title"]
        assert g["x"] + g["w"] <= GRID_WIDTH, f"{panel['title']} sticks out of the grid"
        boxes.append((panel["title"], g["x"], g["y"], g["x"] + g["w"], g["y"] + g["h"]))
    for a, b in itertools.combinations(boxes, 2):
        overlap = a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
        assert not overlap, f"panels {a[0]!r} and {b[0]!r} overlap"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_variables_and_queries_are_wired(path: Path) -> None:
    board = load(path)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    # no hard-coded job: the scrape job is a variable too
    assert variables["job"]["type"] == "query"
    assert "$job" in variables["instance"]["definition"]
    for panel in all_panels(board):
        if panel["type"] == "row":
            continue
        assert panel["title"], panel["id"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            # Every query follows the instance picker, so the host dashboard shows one host,
            # and the job picker: no job name is written into a query.
            assert '$instance"' in target["expr"], f"{panel['title']}: {target['expr']}"
            assert 'job=~"$job"' in target["expr"], f"{panel['title']}: {target['expr']}"
            assert 'job="' not in target["expr"], f"{panel['title']}: {target['expr']}"


def test_overview_has_what_on_call_needs() -> None:
    board = load(REPO / "grafana" / "dashboards" / "ollama-overview.json")
    exprs = " ".join(t["expr"] for p in all_panels(board) for t in p.get("targets", []))
    for needed in (
        "ollama_up", "ollama_http_requests_total", "ollama:http_request_duration_seconds:p95",
        "ollama_model_memory_bytes", "ollama_gpu_utilization_ratio", "ollama_gpu_memory_used_bytes",
        "ollama_gpu_temperature_celsius", "ollama_host_memory_available_bytes",
        "ollama_runner_errors_total", "ollama_log_generated_tokens_total",
        "ollama_log_generation_seconds_total", "ollama:inference_requests_errors:ratio_rate5m",
        "ollama:log_prefill_seconds:p95_rate5m", "ollama:availability_errors:ratio_rate",
        "ollama:prefill_slow", "ollama_probe_generate_ttft_seconds",
    ):  # fmt: skip
        assert needed in exprs, needed
    restart_annotations = [
        a
        for a in board["annotations"]["list"]
        if "ollama_watchdog_restarts_total" in a.get("expr", "")
    ]
    assert restart_annotations, "restarts must show as annotations"


def test_provisioning_files_point_at_the_dashboards() -> None:
    prov = REPO / "grafana" / "provisioning"
    dashboards = yaml.safe_load((prov / "dashboards" / "ollama.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    datasources = yaml.safe_load((prov / "datasources" / "ollama-prometheus.yaml").read_text())
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]


# The healing side's states (exactly one is 1 in ollama_watchdog_state{state}).
STATES = {
    "healthy", "degraded", "busy", "remediating", "restarting", "backoff", "gave_up", "disabled",
    "maintenance", "draining", "deferred",
}  # fmt: skip
TOP_ROW = [
    "Ollama up", "Ready", "Inference error ratio", "TTFT p95 (prefill)", "Restarts in 24h",
    "Watchdog state",
]  # fmt: skip


#: the dashboards of hosts (all of them, or one); the fleet's top row is its budget instead
HOST_DASHBOARDS = [p for p in DASHBOARDS if p.name != "ollama-fleet.json"]


@pytest.mark.parametrize("path", HOST_DASHBOARDS, ids=lambda p: p.name)
def test_the_top_row_is_what_on_call_reads_first(path: Path) -> None:
    top = [p for p in load(path)["panels"] if p["gridPos"]["y"] == 0]
    top.sort(key=lambda p: p["gridPos"]["x"])
    assert [p["title"] for p in top] == TOP_ROW


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_single_values_are_instant_queries(path: Path) -> None:
    for panel in all_panels(load(path)):
        if panel["type"] == "stat" or panel["type"] == "table":
            # a range query with "last non-null" shows a stopped watchdog as UP, and every
            # state of the last hours at once
            for target in panel["targets"]:
                instant = (target.get("instant"), target.get("range"))
                assert instant == (True, False), panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_watchdog_state_has_its_own_text_and_colour(path: Path) -> None:
    (panel,) = [p for p in load(path)["panels"] if p["title"] == "Watchdog state"]
    expr = panel["targets"][0]["expr"]
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    by_code = mapping["options"]
    assert {m["text"] for m in by_code.values()} == STATES
    for code, m in by_code.items():
        assert f'state="{m["text"]}"}} == 1) * {code}' in expr, m["text"]
    colour = {m["text"]: m["color"] for m in by_code.values()}
    assert (colour["healthy"], colour["gave_up"]) == ("green", "red")
    assert len({m["color"] for m in by_code.values()}) >= 5
    # no value (watchdog not scraped) is red, not green
    assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"][0]["color"] == "red"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_one_unit_per_axis(path: Path) -> None:
    for panel in all_panels(load(path)):
        if panel["type"] != "timeseries":
            continue
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        for override in panel["fieldConfig"]["overrides"]:
            props = {p["id"]: p["value"] for p in override["properties"]}
            if "unit" in props:
                # a second unit only on the second axis
                assert props.get("custom.axisPlacement") == "right", panel["title"]


def test_slo_panels_draw_their_thresholds_and_an_empty_budget_is_red() -> None:
    board = load(REPO / "grafana" / "dashboards" / "ollama-overview.json")
    panels = {p["title"]: p for p in all_panels(board)}
    for title in ("Availability budget left", "Latency budget left"):
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[0]["color"] == "red" and steps[1] == {"color": "orange", "value": 0}
    for title, line in (
        ("Availability burn rate", 14.4), ("Latency burn rate", 14.4),
        ("Inference error ratio by host", 0.05),
        ("Prefill (time to first token) p50 / p95 by host", 10),
    ):  # fmt: skip
        defaults = panels[title]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed"}, title
        assert line in [s["value"] for s in defaults["thresholds"]["steps"]], title
    assert "ollama:gpu_energy_joules_per_generated_token:rate5m" in json.dumps(board)
