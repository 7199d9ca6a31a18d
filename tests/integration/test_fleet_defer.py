"""The fleet budget end to end for one watchdog: a real Prometheus, the real Watchdog and its
worker thread, a real restart command (a script that leaves a mark).

The other host of the fleet is a tiny ``http.server`` serving ``ollama_watchdog_state`` in the
state the test sets; Prometheus scrapes it every second. The watchdog under test sees its
liveness probe fail: while the other host is out it defers (state ``deferred``, the event with
the host out, the deferral counted, the command never run), and acts once the other host is
healthy again; with Prometheus stopped it acts alone and says so. Two real Watchdogs whose own
/metrics Prometheus scrapes, hung in the same instant, restart one after the other (``settle``:
mark, then check); the test prints their restart spans and the deferrals it took.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from support.prometheus import PrometheusProcess
from support.stub import FakeWatchdog, QuietHandler, StubServer
from support.tools import free_port, require_tool
from support.wait import wait_until

from ollama_watchdog.config import WatchdogConfig
from ollama_watchdog.healing.fleet import FleetView
from ollama_watchdog.healing.policy import Cause, State
from ollama_watchdog.healing.watchdog import Watchdog
from ollama_watchdog.signals import Signal, SignalKind

pytestmark = pytest.mark.integration

JOB = "ollama-watchdog"


@pytest.fixture
def other() -> Iterator[FakeWatchdog]:
    host = FakeWatchdog("restarting")
    yield host
    host.close()


@pytest.fixture
def prometheus(tmp_path: Path, other: FakeWatchdog) -> Iterator[PrometheusProcess]:
    require_tool("prometheus")
    prom = PrometheusProcess(tmp_path / "prom", [other.instance], job=JOB)
    prom.start()
    yield prom
    prom.stop()


def make_watchdog(tmp_path: Path, url: str) -> tuple[Watchdog, Path]:
    mark = tmp_path / "restarted"
    config = WatchdogConfig(
        startup_grace=0.0,
        failure_threshold=2,
        backoff_initial=60.0,
        restart_command=("sh", "-c", f'echo x >> "{mark}"'),
        restart_timeout=10.0,
    )
    fleet = FleetView(url, f'job="{JOB}"', "this-host:9778", timeout=2.0)
    watchdog = Watchdog(
        config, fleet=fleet, max_unavailable=1, retry_delay=(0.2, 0.5), ask_jitter=(0.0, 0.2)
    )
    return watchdog, mark


def fail(watchdog: Watchdog) -> State:
    watchdog.observe(Signal(SignalKind.LIVENESS, False, "refused", "connection refused"))  # type: ignore[arg-type]
    watchdog.tick()
    return watchdog.snapshot().state


def counter(watchdog: Watchdog, name: str) -> float:
    for family in watchdog.collect():
        if family.name == name:
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError(f"no family {name}")


def test_defers_while_another_host_is_out_then_acts(
    tmp_path: Path, prometheus: PrometheusProcess, other: FakeWatchdog
) -> None:
    prometheus.wait(
        lambda: prometheus.result('ollama_watchdog_state{state="restarting"} == 1'),
        "the other host restarting",
    )
    watchdog, mark = make_watchdog(tmp_path, prometheus.url)
    with structlog.testing.capture_logs() as logs:
        wait_until(lambda: fail(watchdog) is State.DEFERRED, timeout=30.0, what="a deferral")
        deferred = [e for e in logs if e["event"] == "remediation_deferred"]
        assert deferred and deferred[0]["hosts_out"] == [other.instance]
        assert not mark.exists()
        assert counter(watchdog, "ollama_watchdog_deferrals") >= 1
        assert watchdog.snapshot().restarts_total[Cause.LIVENESS] == 0
        other.state = "healthy"
        wait_until(
            lambda: (fail(watchdog), mark.exists())[1], timeout=60.0,
            what="the restart once the other host is back",
        )
    assert watchdog.wait_for_restart(10.0)
    assert mark.read_text().count("x") == 1
    assert counter(watchdog, "ollama_watchdog_fleet_unreachable") == 0


def test_prometheus_unreachable_acts_alone_and_says_so(
    tmp_path: Path, prometheus: PrometheusProcess
) -> None:
    url = prometheus.url
    prometheus.stop()
    watchdog, mark = make_watchdog(tmp_path, url)
    with structlog.testing.capture_logs() as logs:
        wait_until(lambda: (fail(watchdog), mark.exists())[1], timeout=30.0, what="a restart")
        assert watchdog.wait_for_restart(10.0)
    alone: list[dict[str, Any]] = [
        e for e in logs if e["event"] == "fleet_unreachable_acting_alone"
    ]
    assert alone and alone[0]["action"] == "restart_server" and alone[0]["error"]
    assert counter(watchdog, "ollama_watchdog_fleet_unreachable") == 1
    assert counter(watchdog, "ollama_watchdog_deferrals") == 0


class Exported:
    """A Watchdog's own families on /metrics, as the daemon's exporter serves them."""

    def __init__(self, watchdog: Watchdog, port: int) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(watchdog)  # type: ignore[arg-type]

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)

        self._server = StubServer(Handler, port)

    def close(self) -> None:
        self._server.close()


def test_two_hosts_hung_in_the_same_instant_restart_one_after_the_other(tmp_path: Path) -> None:
    """Mark, then check: each shows itself restarting for ``settle`` before it asks, so two
    hosts that decide together see each other, defer, and retry apart; never both at once."""
    require_tool("prometheus")
    ports = [free_port(), free_port()]
    prom = PrometheusProcess(tmp_path / "prom", [f"127.0.0.1:{p}" for p in ports], job=JOB)
    spans = [tmp_path / f"spans-{i}" for i in range(2)]
    watchdogs = [
        Watchdog(
            WatchdogConfig(
                startup_grace=0.0, failure_threshold=2, backoff_initial=600.0,
                restart_command=("sh", "-c", f'date +%s.%N >> "{spans[i]}"; sleep 2; '
                                 f'date +%s.%N >> "{spans[i]}"'),
                restart_timeout=30.0,
            ),
            fleet=FleetView(prom.url, f'job="{JOB}"', f"127.0.0.1:{ports[i]}"),
            settle=2.5, ask_jitter=(0.0, 0.5), retry_delay=(1.0, 8.0),
        )
        for i in range(2)
    ]  # fmt: skip
    servers: list[Exported] = []
    try:
        for w, port in zip(watchdogs, ports, strict=True):
            servers.append(Exported(w, port))
        prom.start()
        prom.wait(lambda: len(prom.result("up == 1")) == 2, "both watchdogs scraped")

        def turn() -> bool:
            done = True
            for w, span in zip(watchdogs, spans, strict=True):
                finished = span.exists() and span.read_text().count("\n") >= 2
                if finished and not w.busy:
                    w.observe(Signal(SignalKind.LIVENESS, True))
                else:
                    fail(w)
                    done = False
            return done

        with structlog.testing.capture_logs() as logs:
            wait_until(turn, timeout=120.0, what="both hosts restarted")
    finally:
        prom.stop()
        for s in servers:
            s.close()
    intervals = sorted(tuple(float(x) for x in s.read_text().split()) for s in spans)
    assert [len(i) for i in intervals] == [2, 2], intervals
    (_, first_end), (second_start, _) = intervals
    deferred = [e for e in logs if e["event"] == "remediation_deferred"]
    print(
        f"two hosts hung together: restarts at {intervals}, "
        f"{len(deferred)} deferrals before they went one after the other"
    )
    assert first_end <= second_start, f"two restarts overlapped: {intervals}"
    for w in watchdogs:
        assert w.snapshot().restarts_total[Cause.LIVENESS] == 1
