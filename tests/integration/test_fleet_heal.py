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

A planned restart under load: one host (gpu1) is a simulator under a supervisor (systemd's
``Restart=always``), and its restart command kills it by pid, so a restart is a real one that
cuts every stream in flight, as Ollama's SIGTERM does. Its watchdog sees a GPU through a fake
NVML module (``support/nvml.py``, put in place by a ``sitecustomize`` on the daemon's
``PYTHONPATH``: no GPU here), and the simulator reports every loaded model with ``size_vram`` 0:
a silent CPU fallback, whose remedy is a planned restart. Six clients stream through HAProxy.
Once with ``[fleet] drain_timeout = 0s`` (no drain: acts at once), once with a drain; the
client's failed requests of both runs are printed, and with the drain there are none.
"""

from __future__ import annotations

import contextlib
import json
import os
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

from ollama_watchdog.commands.demo import SimulatorSupervisor

pytestmark = pytest.mark.integration

WAIT = 120.0
JOB = "ollama-watchdog"
NAMES = ("gpu1", "gpu2", "gpu3")
TESTS = Path(__file__).resolve().parents[1]
#: the daemon's ``pynvml`` is the fake: one GPU, whatever the machine has
FAKE_GPU = f"""import sys
sys.path.insert(0, {str(TESTS)!r})
from support.nvml import FakeGpu, FakeNvml
sys.modules["pynvml"] = FakeNvml([FakeGpu("GPU-8b1e2c52-0000-4000-8000-000000000001")])
"""


@dataclass
class Host:
    name: str
    sim: SimulatorProcess
    daemon: DaemonProcess
    agent_port: int
    spans: Path

    def ready(self) -> tuple[int, str]:
        return self.daemon.ready()

    def restarts(self) -> list[tuple[float, float]]:
        if not self.spans.exists():
            return []
        times = [float(x) for x in self.spans.read_text().split()]
        return list(zip(times[0::2], times[1::2], strict=False))


def host_config(
    url: str,
    tmp: Path,
    port: int,
    agent_port: int,
    prom: PrometheusProcess,
    restart: str,
    **overrides: dict[str, object],
) -> dict[str, dict[str, object]]:
    """One host's watchdog: fast probes, a fleet of ``prom``'s job, one host out at most."""
    config = quick_config(
        url,
        tmp,
        port=port,
        ollama={"timeout": "1s"},
        watchdog={
            "enabled": True,
            "failure_threshold": 2,
            "startup_grace": "0s",
            "backoff_initial": "5m",
            "restart_command": ["sh", "-c", restart],
            "restart_timeout": "30s",
        },
        fleet={
            "agent_listen": f"127.0.0.1:{agent_port}",
            "prometheus_url": prom.url,
            "selector": f'job="{JOB}"',
            "instance": f"127.0.0.1:{port}",
            "max_unavailable": 1,
            "settle": "3s",
            "query_timeout": "2s",
        },
    )
    for section, body in overrides.items():
        config.setdefault(section, {}).update(body)
    return config


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
            config = host_config(sim.url, tmp, ports[name], agent_port, prom, command)
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
    """Steady streamed generations through the balancer, ``clients`` back to back on threads:
    counts of ok / failed (a stream that did not end with ``done`` is a failure)."""

    def __init__(
        self, proxy: HaproxyProcess, model: str, clients: int = 1, tokens: int = 5
    ) -> None:
        self.proxy, self.model, self.tokens = proxy, model, tokens
        self.ok = self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        body = {"model": self.model, "prompt": "count", "options": {"num_predict": self.tokens}}
        while not self._stop.is_set():
            try:
                with self.proxy.request("POST", "/api/generate", json=body, stream=True) as r:
                    lines = [line for line in r.iter_lines() if line]
                    good = r.status_code == 200 and lines and b'"done":true' in lines[-1]
            except requests.RequestException:
                good = False
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def test_all_three_hang_at_once_and_are_restarted_one_after_another(
    tmp_path: Path, fleet: tuple[list[Host], PrometheusProcess]
) -> None:
    hosts, _ = fleet
    backends = [
        Backend(h.name, h.sim.port, h.daemon.port, h.agent_port)
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


def test_a_planned_restart_under_load_drains_first_and_breaks_no_request(
    tmp_path: Path, simulator_factory: Callable[..., SimulatorProcess]
) -> None:
    require_tool("prometheus")
    require_tool("haproxy")
    ports = {name: free_port() for name in NAMES}
    agents = {name: free_port() for name in NAMES}
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_GPU)
    gpu = {"PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}
    prom = PrometheusProcess(
        tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports.values()], job=JOB
    )
    sup = SimulatorSupervisor(
        f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", tmp_path / "gpu1",
        ("--token-delay", "0.02"),
    )  # fmt: skip
    others: list[DaemonProcess] = []
    with contextlib.ExitStack() as stack:
        prom.start()
        stack.callback(prom.stop)
        sup.start(ready_timeout=30.0)
        stack.callback(sup.stop)
        sims = {"gpu1": f"http://{sup.listen}"}
        for name in NAMES[1:]:
            tmp = tmp_path / name
            tmp.mkdir()
            sim = simulator_factory("--token-delay", "0.02", log_file=tmp / "ollama.log")
            sims[name] = sim.url
            config = host_config(sim.url, tmp, ports[name], agents[name], prom, "true")
            others.append(stack.enter_context(DaemonProcess(config, tmp)))
        backends = [
            Backend(name, int(sims[name].rsplit(":", 1)[1]), ports[name], agents[name])
            for name in NAMES
        ]
        proxy = stack.enter_context(HaproxyProcess(tmp_path / "haproxy", backends))
        tags = requests.get(f"{sims['gpu1']}/api/tags", timeout=10).json()["models"]
        model = next(m["name"] for m in tags if "completion" in m.get("capabilities", []))

        def planned_restart(drain: bool) -> tuple[Load, str]:
            """gpu1's watchdog, under load until it restarted its host. Without a drain it acts
            at once: no planned wait, and no fleet budget to ask (asking turns the host not
            ready for the settle and a jitter of up to 2 s before any action, a drain of its
            own)."""
            tmp = tmp_path / f"gpu1-drain-{drain}"
            tmp.mkdir()
            wait = {"planned_max_wait": "10m"} if drain else {"planned_max_wait": "0s"}
            config = host_config(
                sims["gpu1"], tmp, ports["gpu1"], agents["gpu1"], prom,
                f'kill -TERM "$(cat {sup.pidfile})"',
                ollama={"unit": ""},
                logs={"source": "file", "path": str(sup.logfile)},
                gpu={"enabled": "true"},
                watchdog={"startup_grace": "10s"},
                healing={"cpu_fallback_grace": "10s", "planned_quiet": "4s",
                         "cause_cooldown": "1h", **wait},
                # without: no fleet budget either, whose ask (settle, 0-2 s of jitter, shown
                # out meanwhile) would drain a little of its own
                fleet=({"drain_timeout": "60s", "settle": "3s"} if drain
                       else {"settle": "0s", "prometheus_url": ""}),
            )  # fmt: skip
            with DaemonProcess(config, tmp, env=gpu) as daemon:
                wait_until(lambda: daemon.ready() == (200, "ready"), "gpu1 ready", timeout=WAIT)
                for name in NAMES:
                    proxy.wait_status(name, "UP")
                starts = sup.starts
                # 3 s streams: one open at the decision is still open when a restart
                # without a drain kills the server; leastconn keeps about 2 on gpu1
                load = Load(proxy, model, clients=6, tokens=150)
                try:
                    wait_until(lambda: sup.starts > starts, "gpu1 restarted", timeout=WAIT)
                    wait_until(
                        lambda: daemon.ready() == (200, "ready"), "gpu1 ready again", timeout=WAIT
                    )
                    proxy.wait_status("gpu1", "UP")
                    ok = load.ok
                    wait_until(lambda: load.ok >= ok + 6, "the load flowing", timeout=WAIT)
                finally:
                    load.stop()
                assert sup.starts == starts + 1, "one planned restart, no second one"
                return load, daemon.stderr()

        cut, _ = planned_restart(drain=False)
        drained, log = planned_restart(drain=True)
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = [e.get("event") for e in events]
    finished = next(e for e in events if e.get("event") == "drain_finished")
    print(
        f"a planned restart (cpu_fallback) of one host of three under a load of 6 streams: "
        f"without drain ok {cut.ok}, failed {cut.failed}; with drain ok {drained.ok}, "
        f"failed {drained.failed} (drained in {finished.get('drained_s')} s)"
    )
    assert cut.failed >= 1, "the restart without a drain cut no stream: this test proves nothing"
    assert drained.failed == 0
    assert names.index("drain_started") < names.index("drain_finished")
    assert "drain_timeout" not in names
