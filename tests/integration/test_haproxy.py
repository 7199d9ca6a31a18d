"""haproxy/haproxy.cfg with the real HAProxy, in front of two simulators and two real daemons.

Each host is a simulator with its own ``ollama-watchdog run``: the exporter's ``/ready`` is
HAProxy's health check and the watchdog's agent answers HAProxy's agent-check. What is checked
is what a client of the balancer and HAProxy's own stats page see: a host that turns not ready
(its Ollama hung, or its watchdog mid-restart while Ollama already answers again) leaves the
rotation, every client request keeps succeeding on the other host, and the host comes back when
ready again. A restart that blocks on a file the test creates holds a watchdog in
``restarting`` for as long as the test needs, with no timing involved.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.haproxy import Backend, HaproxyProcess
from support.sim import SimulatorProcess
from support.tools import free_port, require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration

WAIT = 90.0


@dataclass
class Host:
    name: str
    sim: SimulatorProcess
    daemon: DaemonProcess
    agent_port: int
    #: the restart command blocks until this file exists
    release: Path

    def ready(self) -> tuple[int, str]:
        return self.daemon.ready()

    def agent(self) -> str:
        with socket.create_connection(("127.0.0.1", self.agent_port), timeout=10) as sock:
            data = b""
            while chunk := sock.recv(64):
                data += chunk
        return data.decode().strip()

    def served(self, marker: str) -> int:
        """Requests this host's Ollama logged for the prompt-free path ``marker``."""
        return self.sim.log_text().count(marker)


def start_host(name: str, tmp: Path, simulator_factory: Callable[..., SimulatorProcess]) -> Host:
    tmp.mkdir()
    sim = simulator_factory("--token-delay", "0.05", log_file=tmp / "ollama.log")
    release = tmp / "restart-may-finish"
    agent_port = free_port()
    config = quick_config(
        sim.url,
        tmp,
        ollama={"timeout": "1s"},
        watchdog={
            "enabled": True,
            "failure_threshold": 2,
            "startup_grace": "0s",
            "backoff_initial": "0s",
            "restart_command": ["sh", "-c", f'while [ ! -e "{release}" ]; do sleep 0.1; done'],
            "restart_timeout": "10m",
        },
        fleet={"agent_listen": f"127.0.0.1:{agent_port}"},
    )
    daemon = DaemonProcess(config, tmp).start()
    return Host(name, sim, daemon, agent_port, release)


@pytest.fixture
def hosts(
    tmp_path: Path, simulator_factory: Callable[..., SimulatorProcess]
) -> Iterator[list[Host]]:
    require_tool("haproxy")
    started: list[Host] = []
    try:
        for name in ("gpu1", "gpu2"):
            started.append(start_host(name, tmp_path / name, simulator_factory))
        for h in started:
            wait_until(lambda h=h: h.ready() == (200, "ready"), f"{h.name} ready", timeout=WAIT)
        yield started
    finally:
        for h in started:
            h.release.touch()  # a blocked restart command must not outlive the test
            h.daemon.stop()


def backends(hosts: list[Host], agent: bool = True) -> list[Backend]:
    return [
        Backend(h.name, h.sim.port, h.daemon.port, h.agent_port if agent else None)
        for h in hosts
    ]  # fmt: skip


def client_load(proxy: HaproxyProcess, model: str, n: int) -> list[int]:
    """``n`` streamed generations and ``n`` model lists through the balancer: their statuses."""
    codes = []
    body = {"model": model, "prompt": "count", "options": {"num_predict": 5}}
    for _ in range(n):
        with proxy.request("POST", "/api/generate", json=body, stream=True) as r:
            lines = [line for line in r.iter_lines() if line]
            ok = r.status_code == 200 and lines and b'"done":true' in lines[-1]
            codes.append(r.status_code if ok else -1)
        codes.append(proxy.request("GET", "/api/tags").status_code)
    return codes


def enter_restarting(h: Host) -> None:
    """Hang its Ollama until the watchdog restarts it, then un-hang it: Ollama answers, but the
    watchdog is still ``restarting`` (its restart command waits for ``h.release``)."""
    h.sim.set_fault("hang")
    wait_until(lambda: h.ready() == (503, "restarting"), f"{h.name} restarting", timeout=WAIT)
    h.sim.clear_fault()
    assert requests.get(f"{h.sim.url}/api/version", timeout=10).ok


def test_the_proxy_needs_the_password_and_uses_both_hosts(
    tmp_path: Path, hosts: list[Host]
) -> None:
    with HaproxyProcess(tmp_path / "haproxy", backends(hosts)) as proxy:
        for h in hosts:
            proxy.wait_status(h.name, "UP")
        bare = requests.get(proxy.url + "/api/version", verify=str(proxy.ca), timeout=30)
        assert bare.status_code == 401
        assert client_load(proxy, hosts[0].sim.generation_model(), 4) == [200] * 8
        for h in hosts:
            assert proxy.sent(h.name) > 0, h.name


def test_a_hung_host_leaves_the_rotation_and_clients_keep_succeeding(
    tmp_path: Path, hosts: list[Host]
) -> None:
    hung, healthy = hosts
    with HaproxyProcess(tmp_path / "haproxy", backends(hosts)) as proxy:
        for h in hosts:
            proxy.wait_status(h.name, "UP")
        model = healthy.sim.generation_model()
        hung.sim.set_fault("hang")
        # the watchdog sees the hang (down, then restarting); HAProxy takes the host out
        wait_until(lambda: hung.ready()[0] == 503, "hung host not ready", timeout=WAIT)
        wait_until(
            lambda: not proxy.status(hung.name).startswith("UP"), "hung host out", timeout=WAIT
        )
        before, served = proxy.sent(hung.name), hung.served('"/api/generate"')
        assert client_load(proxy, model, 6) == [200] * 12
        assert (proxy.sent(hung.name), hung.served('"/api/generate"')) == (before, served)
        # the hang clears and the watchdog's restart (blocked) finishes: the host comes back
        hung.sim.clear_fault()
        hung.release.touch()
        wait_until(lambda: hung.ready() == (200, "ready"), "host ready again", timeout=WAIT)
        proxy.wait_status(hung.name, "UP")
        wait_until(
            lambda: client_load(proxy, model, 2) == [200] * 4 and proxy.sent(hung.name) > before,
            "traffic back on the host",
            timeout=WAIT,
        )


@pytest.mark.parametrize("health_check", [True, False], ids=["check-and-agent", "agent-alone"])
def test_a_restarting_host_stays_out_while_its_ollama_already_answers(
    tmp_path: Path, hosts: list[Host], health_check: bool
) -> None:
    # What a passive check on Ollama's own port cannot know: Ollama answers, yet the host is
    # mid-restart. /ready says "restarting" and the agent "maint"; HAProxy keeps it out.
    busy, healthy = hosts
    proxy = HaproxyProcess(tmp_path / "haproxy", backends(hosts), health_check=health_check)
    with proxy:
        for h in hosts:
            proxy.wait_status(h.name, "UP" if health_check else "")
        model = healthy.sim.generation_model()
        enter_restarting(busy)
        assert busy.agent() == "maint"
        status = proxy.wait_status(busy.name, "MAINT")
        print(f"haproxy status of {busy.name} while restarting: {status!r}")
        before, served = proxy.sent(busy.name), busy.served('"/api/generate"')
        assert client_load(proxy, model, 6) == [200] * 12
        assert (proxy.sent(busy.name), busy.served('"/api/generate"')) == (before, served)
        busy.release.touch()
        wait_until(lambda: busy.agent() == "ready", "agent ready again", timeout=WAIT)
        wait_until(lambda: not proxy.status(busy.name).startswith("MAINT"), "back in", timeout=WAIT)
        wait_until(
            lambda: client_load(proxy, model, 2) == [200] * 4 and proxy.sent(busy.name) > before,
            "traffic back on the host",
            timeout=WAIT,
        )
