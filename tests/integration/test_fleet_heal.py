"""Issue 17 with real parts: three simulators, three daemons, a real Prometheus scraping the
daemons every second, a real HAProxy in front, and a client load through it.

All three hosts hang at once (the simulator's ``hang`` fault). Each daemon's restart command
records when it ran (start, end) and clears its simulator's fault (what a restart of Ollama
does), so the restart intervals come from the commands themselves. The fleet budget
(``max_unavailable = 1``, ``settle`` longer than a scrape plus an evaluation) must restart them
one after another, never two overlapping; all three end ready, and the client's requests fail
only while HAProxy routes around a hung host. The output says how many deferrals it took and
how many times two hosts decided within one second of each other (the eventual view).
With Prometheus stopped, each host heals alone and says so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.haproxy import Backend, HaproxyProcess
from support.prometheus import PrometheusProcess
from support.sim import SimulatorProcess
from support.tools import free_port, require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration

WAIT = 120.0
JOB = "ollama-watchdog"
NAMES = ("gpu1", "gpu2", "gpu3")


@dataclass
class Host:
    name: str
    sim: SimulatorProcess
    daemon: DaemonProcess
    agent_port: int
    spans: Path

    def ready(self) -> tuple[int, str]:
        try:
            r = requests.get(self.daemon.url + "/ready", timeout=10)
        except requests.RequestException:
            return 0, "unreachable"
        return r.status_code, r.text.strip()

    def restarts(self) -> list[tuple[float, float]]:
        if not self.spans.exists():
            return []
        times = [float(x) for x in self.spans.read_text().split()]
        return list(zip(times[0::2], times[1::2], strict=False))


@pytest.fixture
def fleet(
    tmp_path: Path, simulator_factory: Callable[..., SimulatorProcess]
) -> Iterator[tuple[list[Host], PrometheusProcess]]:
    require_tool("prometheus")
    require_tool("haproxy")
    require_tool("curl")
    ports = {name: free_port() for name in NAMES}
    prom = PrometheusProcess(
        tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports.values()], job=JOB
    )
    hosts: list[Host] = []
    try:
        prom.start()
        for name in NAMES:
            tmp = tmp_path / name
            tmp.mkdir()
            sim = simulator_factory("--token-delay", "0.02", log_file=tmp / "ollama.log")
            spans = tmp / "restarts"
            clear = json.dumps({"fault": "none"})
            command = (
                f'date +%s.%N >> "{spans}"; sleep 2; '
                f"curl -fsS -o /dev/null -X POST -d '{clear}' {sim.control_url}/fault; "
                f'date +%s.%N >> "{spans}"'
            )
            agent_port = free_port()
            config = quick_config(
                sim.url,
                tmp,
                port=ports[name],
                ollama={"timeout": "1s"},
                watchdog={
                    "enabled": True,
                    "failure_threshold": 2,
                    "startup_grace": "0s",
                    "backoff_initial": "5m",
                    "restart_command": ["sh", "-c", command],
                    "restart_timeout": "30s",
                },
                fleet={
                    "agent_listen": f"127.0.0.1:{agent_port}",
                    "prometheus_url": prom.url,
                    "selector": f'job="{JOB}"',
                    "instance": f"127.0.0.1:{ports[name]}",
                    "max_unavailable": 1,
                    "settle": "3s",
                    "query_timeout": "2s",
                },
            )
            hosts.append(Host(name, sim, DaemonProcess(config, tmp).start(), agent_port, spans))
        for h in hosts:
            wait_until(lambda h=h: h.ready() == (200, "ready"), f"{h.name} ready", timeout=WAIT)
        prom.wait(lambda: len(prom.result(f'up{{job="{JOB}"}} == 1')) == 3, "3 scraped")
        yield hosts, prom
    finally:
        for h in hosts:
            h.daemon.stop()
        prom.stop()


class Load:
    """Steady streamed generations through the balancer on a thread: counts of ok / failed."""

    def __init__(self, proxy: HaproxyProcess, model: str) -> None:
        self.proxy, self.model = proxy, model
        self.ok = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        body = {"model": self.model, "prompt": "count", "options": {"num_predict": 5}}
        while not self._stop.is_set():
            try:
                with self.proxy.request("POST", "/api/generate", json=body, stream=True) as r:
                    lines = [line for line in r.iter_lines() if line]
                    good = r.status_code == 200 and lines and b'"done":true' in lines[-1]
            except requests.RequestException:
                good = False
            if good:
                self.ok += 1
            else:
                self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def test_all_three_hang_at_once_and_are_restarted_one_after_another(
    tmp_path: Path, fleet: tuple[list[Host], PrometheusProcess]
) -> None:
    hosts, _ = fleet
    backends = [
        Backend(h.name, h.sim.port, int(h.daemon.url.rsplit(":", 1)[1]), h.agent_port)
        for h in hosts
    ]
    with HaproxyProcess(tmp_path / "haproxy", backends) as proxy:
        for h in hosts:
            proxy.wait_status(h.name, "UP")
        tags = requests.get(f"{hosts[0].sim.url}/api/tags", timeout=10).json()["models"]
        model = next(m["name"] for m in tags if "completion" in m.get("capabilities", []))
        load = Load(proxy, model)
        wait_until(lambda: load.ok >= 3, "the load flowing", timeout=WAIT)
        for h in hosts:
            h.sim.set_fault("hang")
        try:
            wait_until(
                lambda: all(len(h.restarts()) >= 1 for h in hosts)
                and all(h.ready() == (200, "ready") for h in hosts),
                "every host restarted and ready",
                timeout=WAIT,
            )
            for h in hosts:
                proxy.wait_status(h.name, "UP")
            ok_before = load.ok
            wait_until(lambda: load.ok >= ok_before + 3, "the load flowing again", timeout=WAIT)
        finally:
            load.stop()
    spans = sorted(span for h in hosts for span in h.restarts())
    deferrals = sum(
        h.daemon.value("ollama_watchdog_deferrals_total", action="restart_server",
                       reason="liveness") or 0.0
        for h in hosts
    )  # fmt: skip
    starts = [s for s, _ in spans]
    together = sum(1 for a, b in pairwise(starts) if b - a < 1.0)
    relative = [(round(s - starts[0], 2), round(e - starts[0], 2)) for s, e in spans]
    print(
        f"three hosts hung at once: restarts at {relative} s, "
        f"{int(deferrals)} deferrals, {together} restarts started within 1 s of another; "
        f"client requests ok {load.ok}, failed {load.failed}"
    )
    assert [len(h.restarts()) for h in hosts] == [1, 1, 1]
    for (_, end), (start, _) in pairwise(spans):
        assert end <= start, f"two restarts overlapped: {spans}"
    assert deferrals >= 2  # at least the two that waited


def test_with_prometheus_stopped_each_host_heals_alone(
    fleet: tuple[list[Host], PrometheusProcess],
) -> None:
    hosts, prom = fleet
    prom.stop()
    for h in hosts:
        h.sim.set_fault("hang")
    wait_until(
        lambda: all(len(h.restarts()) >= 1 for h in hosts)
        and all(h.ready() == (200, "ready") for h in hosts),
        "every host restarted alone and ready",
        timeout=WAIT,
    )
    alone = [h.daemon.value("ollama_watchdog_fleet_unreachable_total") or 0.0 for h in hosts]
    deferred = [
        h.daemon.value("ollama_watchdog_deferrals_total", action="restart_server",
                       reason="liveness") or 0.0
        for h in hosts
    ]  # fmt: skip
    print(f"Prometheus stopped: fleet questions unanswered per host {alone}, deferrals {deferred}")
    assert [len(h.restarts()) for h in hosts] == [1, 1, 1]
    assert all(n >= 1 for n in alone) and deferred == [0.0, 0.0, 0.0]
    for h in hosts:
        assert "fleet_unreachable_acting_alone" in h.daemon.stderr()
