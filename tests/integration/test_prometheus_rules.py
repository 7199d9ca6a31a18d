"""prometheus/: alert and recording rules, their promtool unit tests, and the scrape example.

``promtool check`` and ``promtool test rules`` do the real work (each alert is made to fire and
shown quiet in prometheus/tests/*.yml). The checks here keep that honest: every alert has a
firing and a quiet case, carries severity/summary/description and an absolute runbook_url, and
its runbook section exists in docs/operations.md. Whether each metric name exists in the
exporter's output is checked against a live exporter in test_grafana_dashboards.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.tools import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROM = REPO / "prometheus"
RULE_FILES = [PROM / "alerts.yml", PROM / "recordings.yml"]
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
# none: the heartbeat and the maintenance marker, routed to machines, never to a person
SEVERITIES = {"critical", "warning", "none"}
# The default runbook base: the exporter of the instance that fired (install.sh --runbook-url
# replaces it with an operator's base in the installed copy).
RUNBOOK_BASE = "http://{{ $labels.instance }}/runbook"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("promtool", "prometheus")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
    )


def rules(path: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


ALERTS = [rule for rule in rules(PROM / "alerts.yml") if "alert" in rule]


def test_rule_files_pass_promtool_check() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool tests found"
    result = promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_scrape_example_is_a_valid_config() -> None:
    result = promtool("check", "config", str(PROM / "scrape.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_names_are_unique() -> None:
    names = [alert["alert"] for alert in ALERTS]
    assert len(names) == len(set(names))


def alert_cases() -> dict[str, tuple[int, int]]:
    """alertname -> (test cases where it must fire, test cases where it must stay quiet)."""
    cases: dict[str, tuple[int, int]] = {}
    for path in TEST_FILES:
        for group in yaml.safe_load(path.read_text())["tests"]:
            for case in group.get("alert_rule_test", []):
                firing, quiet = cases.get(case["alertname"], (0, 0))
                if case.get("exp_alerts"):
                    firing += 1
                else:
                    quiet += 1
                cases[case["alertname"]] = (firing, quiet)
    return cases


@pytest.mark.parametrize("alert", [a["alert"] for a in ALERTS])
def test_every_alert_is_tested_firing_and_quiet(alert: str) -> None:
    firing, quiet = alert_cases().get(alert, (0, 0))
    assert firing >= 1, f"no promtool test makes {alert} fire"
    assert quiet >= 1, f"no promtool test shows {alert} staying quiet"


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_every_alert_is_actionable(alert: dict[str, Any]) -> None:
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    base, _, anchor = annotations["runbook_url"].partition("#")
    assert base == RUNBOOK_BASE, "runbook_url must be absolute, from the one base"
    assert anchor == alert["alert"].lower()
    # GitHub's anchor for a "### OllamaDown" heading is "ollamadown" (/runbook uses the same).
    doc = REPO / "docs" / "operations.md"
    headings = re.findall(r"^#{2,4} (\S+)\s*$", doc.read_text(), flags=re.M)
    assert alert["alert"] in headings, f"docs/operations.md has no runbook for {alert['alert']}"


def test_recording_rules_follow_the_naming_convention() -> None:
    # level:metric:operations, and every one of them is used by an alert, a dashboard, a test
    # or another recording (the SLIs build on each other).
    used = (PROM / "alerts.yml").read_text() + "".join(p.read_text() for p in TEST_FILES)
    used += "".join(rule["expr"] for rule in rules(PROM / "recordings.yml"))
    used += "".join(p.read_text() for p in (REPO / "grafana" / "dashboards").glob("*.json"))
    for rule in rules(PROM / "recordings.yml"):
        assert re.fullmatch(r"ollama:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]
        assert rule["record"] in used, f"{rule['record']} is recorded but never used"
