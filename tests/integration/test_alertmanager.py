"""alertmanager/alertmanager.yml: checked by amtool, and the whole paging chain run for real.

The chain: the Ollama simulator, ``ollama-watchdog run`` (healing on, a harmless restart
command), a real Prometheus evaluating the shipped prometheus/alerts.yml and recordings.yml, a
real Alertmanager with the shipped alertmanager.yml, and a webhook receiver (a tiny http.server
here) in place of the pager, ticket and heartbeat integrations. Only durations are shortened
(every ``for:``, range selector and Alertmanager timer divided by the same factor, so the
proportions the inhibitions rely on stay); the shipped files are not otherwise touched.

A hang (the simulator's ``hang`` fault: every request waits forever) must reach the receivers
as exactly one notification group carrying OllamaDown only: the burn-rate, restart and
gave-up alerts it causes fire in Prometheus but are inhibited in Alertmanager. Maintenance
silencing the instance is checked against the same Alertmanager with alerts posted to its API
(the daemon's maintenance state comes with the healing work).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.daemon import DaemonProcess, quick_config
from support.prometheus import (
    AlertmanagerProcess,
    PrometheusProcess,
    shorten_rules,
    shorten_timers,
)
from support.sim import SimulatorProcess
from support.stub import QuietHandler, StubServer
from support.tools import require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AM_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
RULE_FILES = [REPO / "prometheus" / "alerts.yml", REPO / "prometheus" / "recordings.yml"]
ALERTS = {
    rule["alert"]: rule
    for group in yaml.safe_load(RULE_FILES[0].read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
}
# 20 times faster: OllamaDown's 3m is 9 s, a 1h burn window 3 min. Not more: the probe
# timeout, scrape and evaluation intervals do not shrink, and a hang must still be seen as
# Ollama down before the burn rate has burnt (as with the shipped windows: 3 min vs 6 min).
FACTOR = 20.0
WAIT = 120.0


def shipped() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(AM_CONFIG.read_text())
    return config


def test_shipped_config_passes_amtool() -> None:
    amtool = require_tool("amtool", "prometheus-alertmanager")
    result = subprocess.run(
        [amtool, "check-config", str(AM_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def alertnames_in(matcher: str) -> set[str]:
    """Alert names a matcher like ``alertname =~ "A|B(Fast|Slow)"`` can match."""
    m = re.fullmatch(r'\s*alertname\s*(=~|=|!~)\s*"(.*)"\s*', matcher)
    if m is None:
        return set()
    op, value = m.groups()
    if op == "=":
        return {value} if value in ALERTS else {value + " (no such alert)"}
    hits = {name for name in ALERTS if re.fullmatch(value, name)}
    # every alternative of the regex must name a real alert: a typo would inhibit nothing
    for alternative in re.split(r"\|(?![^(]*\))", value):
        if not any(re.fullmatch(alternative, name) for name in ALERTS):
            hits.add(alternative + " (no such alert)")
    return hits


def test_every_alertname_the_config_names_exists() -> None:
    config = shipped()
    named: set[str] = set()
    for rule in config["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            named |= alertnames_in(matcher)
    routes = config["route"]["routes"]
    for route in routes:
        for matcher in route.get("matchers", []):
            named |= alertnames_in(matcher)
    assert sorted(n for n in named if "no such alert" in n) == []


def test_every_severity_has_a_route() -> None:
    routed = {
        m.split('"')[1]
        for route in shipped()["route"]["routes"]
        for m in route.get("matchers", [])
        if m.startswith("severity")
    }
    assert {rule["labels"]["severity"] for rule in ALERTS.values()} <= routed


# --- the live chain ------------------------------------------------------------------------


@dataclass
class Webhook:
    """Every notification Alertmanager posted, with the path it was posted to."""

    url: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self, *paths: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for path, body in self.received if path in paths]


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook("")

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            with hook.lock:
                hook.received.append((self.path, body))
            self.reply(200, b"")

    with StubServer(Handler) as server:
        hook.url = server.url
        yield hook


def am_config_for(hook: Webhook) -> dict[str, Any]:
    """The shipped config, receivers pointed at the test webhook, timers shortened."""
    config = shipped()
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{hook.url}/{receiver['name']}"
    shorten_timers(config["route"], FACTOR)
    return config


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: Webhook) -> Iterator[AlertmanagerProcess]:
    am = AlertmanagerProcess(tmp_path, am_config_for(webhook))
    try:
        am.start()
        yield am
    finally:
        am.stop()


def groups(posts: list[dict[str, Any]]) -> set[str]:
    return {post["groupKey"] for post in posts}


def firing_names(posts: list[dict[str, Any]]) -> set[str]:
    return {
        alert["labels"]["alertname"]
        for post in posts
        for alert in post["alerts"]
        if alert["status"] == "firing"
    }


def inhibited(am: AlertmanagerProcess) -> set[str]:
    return {
        a["labels"]["alertname"] for a in am.alerts() if a["status"].get("inhibitedBy")
    }


def test_a_hang_pages_once(
    tmp_path: Path, webhook: Webhook, alertmanager: AlertmanagerProcess
) -> None:
    rules = []
    for path in RULE_FILES:
        short = tmp_path / path.name
        short.write_text(yaml.safe_dump(shorten_rules(path, FACTOR)))
        rules.append(short)
    sim = SimulatorProcess(tmp_path / "sim")
    daemon: DaemonProcess | None = None
    prometheus: PrometheusProcess | None = None
    try:
        sim.start()
        config = quick_config(
            sim.url,
            tmp_path,
            watchdog={
                "enabled": True,
                "restart_command": ["true"],
                "failure_threshold": 3,
                "startup_grace": "0s",
                # gives up after about 30 s: after OllamaDown (9 s), as in production
                "backoff_initial": "5s",
                "backoff_max": "20s",
                "max_restarts": 3,
                "restart_window": "1h",
            },
        )
        daemon = DaemonProcess(config, tmp_path).start()
        instance = str(config["exporter"]["listen"])
        # Four healthy hours before the test (the longest shortened window is 3d / 20): a
        # long-running host, not one Prometheus met a minute ago, whose every window is young.
        prometheus = PrometheusProcess(
            tmp_path,
            [instance],
            rules,
            alertmanager=f"127.0.0.1:{alertmanager.port}",
            history={f'ollama_up{{instance="{instance}",job="ollama-watchdog"}}': 1.0},
        )
        prometheus.start()

        # The pipeline works before anything breaks: the heartbeat arrives, nobody is paged.
        wait_until(lambda: webhook.posts("/heartbeat"), "the heartbeat", timeout=WAIT)
        assert webhook.posts("/pager", "/ticket") == []

        sim.set_fault("hang")
        # What a hang causes on this instance: Ollama down, the availability burn, restarts
        # that do not help and the watchdog giving up (the restarts themselves alert only
        # while Ollama answers). All fire in Prometheus ...
        consequences = {"OllamaAvailabilityBudgetBurnFast", "OllamaWatchdogGaveUp"}
        prometheus.wait(
            lambda: {"OllamaDown", *consequences} <= prometheus.firing(),
            "firing OllamaDown and its consequences",
            timeout=WAIT,
        )
        # ... reach Alertmanager, which inhibits all but OllamaDown ...
        alertmanager.wait(
            lambda: consequences <= inhibited(alertmanager), "inhibiting the consequences"
        )
        # ... and, one group interval later (every group has been flushed since), the pager
        # has had one group: OllamaDown of this instance.
        wait_until(lambda: webhook.posts("/pager"), "a page", timeout=WAIT)
        wait_for_flushes(webhook)
        paged = webhook.posts("/pager", "/ticket")
        assert len(groups(paged)) == 1, json.dumps(paged, indent=1)[:4000]
        assert firing_names(paged) == {"OllamaDown"}
        assert {a["labels"]["instance"] for p in paged for a in p["alerts"]} == {instance}
        assert all(a["annotations"]["runbook_url"].startswith(f"http://{instance}/runbook#")
                   for p in paged for a in p["alerts"])
    finally:
        if prometheus is not None:
            prometheus.stop()
        if daemon is not None:
            daemon.stop()
        sim.stop()


def wait_for_flushes(hook: Webhook) -> None:
    """Wait until every group has been flushed again, the heartbeat as the clock.

    The heartbeat route repeats every 3 s (1m shortened), the others flush every 15 s (5m):
    8 more heartbeats mean a whole group interval has passed for all of them.
    """
    seen = len(hook.posts("/heartbeat"))
    wait_until(
        lambda: len(hook.posts("/heartbeat")) >= seen + 8, "8 more heartbeats", timeout=WAIT
    )


def alert(name: str, instance: str, severity: str) -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name,
            "instance": instance,
            "job": "ollama-watchdog",
            "severity": severity,
        },
        "annotations": {"summary": name},
    }


def test_maintenance_silences_its_instance_only(
    webhook: Webhook, alertmanager: AlertmanagerProcess
) -> None:
    # gpu1 is in maintenance (its Ollama stopped on purpose, so it is down); gpu2 is down too.
    batch = [
        alert("OllamaMaintenance", "gpu1:9778", "none"),
        alert("OllamaDown", "gpu1:9778", "critical"),
        alert("OllamaModelsDiskAlmostFull", "gpu1:9778", "warning"),
        alert("OllamaDown", "gpu2:9778", "critical"),
        alert("OllamaDeadMansSwitch", "gpu2:9778", "none"),
    ]

    def posted_and_inhibited() -> bool:
        alertmanager.post(batch)  # Prometheus re-sends firing alerts the same way
        return inhibited(alertmanager) >= {"OllamaDown", "OllamaModelsDiskAlmostFull"}

    alertmanager.wait(posted_and_inhibited, "inhibiting gpu1 for maintenance")
    wait_until(lambda: webhook.posts("/pager"), "gpu2's page", timeout=WAIT)
    alertmanager.post(batch)
    wait_for_flushes(webhook)
    sent = webhook.posts("/pager", "/ticket")
    assert {a["labels"]["instance"] for p in sent for a in p["alerts"]} == {"gpu2:9778"}
    assert firing_names(sent) == {"OllamaDown"}
    # shown in Alertmanager, sent to no one
    shown = {a["labels"]["alertname"]: a for a in alertmanager.alerts()}
    assert shown["OllamaMaintenance"]["receivers"] == [{"name": "blackhole"}]
