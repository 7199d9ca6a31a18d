"""The remediation ladder against a real wedged runner (issue 15 item 7, the real-runner part).

Two tiny models are loaded, each with its own real llama.cpp ``llama-server`` runner behind the
simulator's Ollama front; the simulator runs under the demo's supervisor (systemd's
``Restart=always``) and the watchdog's restart command really restarts it, so a server restart
would show as a new server pid. Model A's runner is SIGSTOPped: liveness keeps passing, the deep
probe on A times out, and the log shows no progress of A's runner. The ladder must mend that
runner alone: A is unloaded (or its runner killed), B's runner keeps its pid, the server is not
restarted, and the deep probe passes again with A loaded afresh.

Skipped locally, with the command that builds it, when llama-server is not built; a failure
under ``CI=true`` (``scripts/install-test-tools.sh`` builds it).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import psutil
import pytest
import requests
from support.daemon import DaemonProcess
from support.llama import require_llama_server
from support.realrunner import healing_config, supervised_simulator
from support.wait import wait_until

from ollama_watchdog.commands.demo import SimulatorSupervisor
from ollama_watchdog.simulator.llamamodel import params_for_size, write_llama_gguf

pytestmark = pytest.mark.integration

T = 90.0
A = "tiny-a:latest"
B = "tiny-b:latest"


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    n_embd, n_layer, n_ff = params_for_size(600 * 1024)
    files = {}
    for seed, name in enumerate((A, B)):
        path = out / f"{name.split(':')[0]}.gguf"
        write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=seed)
        files[name] = path
    return files


@dataclass
class Stack:
    sup: SimulatorSupervisor
    daemon: DaemonProcess
    client: ollama.Client

    def runners(self) -> list[dict[str, Any]]:
        r = requests.get(f"http://{self.sup.control}/runners", timeout=10)
        r.raise_for_status()
        return list(r.json()["runners"])

    def runner_pid(self, model: str) -> int | None:
        live = [r for r in self.runners() if r["model"] == model and r["alive"]]
        assert len(live) <= 1, live
        return int(live[0]["pid"]) if live else None

    def server_pid(self) -> int:
        return int(self.sup.pidfile.read_text())

    def value(self, name: str, **labels: str) -> float:
        return self.daemon.value(name, **labels) or 0.0

    def remediations(self, action: str) -> float:
        return self.value("ollama_watchdog_remediations_total", action=action,
                          reason="deep_probe")

    def restarts(self) -> float:
        return sum(v for (name, _), v in self.daemon.metrics().items()
                   if name == "ollama_watchdog_restarts_total")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.daemon.stderr().splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("event") == name:
                out.append(ev)
        return out


@pytest.fixture
def stack(gguf_files: dict[str, Path], tmp_path: Path) -> Iterator[Stack]:
    sup = supervised_simulator(tmp_path / "sup", require_llama_server(), gguf_files)
    try:
        sup.start(ready_timeout=30.0)
        wait_until(sup.readyfile.exists, "simulator ready", T)
        cfg = healing_config(sup, tmp_path, A, startup_grace="2s")
        with DaemonProcess(cfg, tmp_path) as daemon:
            yield Stack(sup, daemon, ollama.Client(host=f"http://{sup.listen}", timeout=T))
    finally:
        sup.stop()


def test_a_stopped_runner_is_mended_alone_without_a_server_restart(stack: Stack) -> None:
    # both models loaded, each with its own runner, kept loaded
    for model in (A, B):
        done = stack.client.generate(model=model, prompt="load me", keep_alive="1h",
                                     options={"num_predict": 4})
        assert done["done"] is True
    wait_until(lambda: stack.value("ollama_probe_success", probe="generate") == 1.0,
               "a passing deep probe", T)
    wait_until(lambda: stack.value("ollama_watchdog_state", state="healthy") == 1.0,
               "the watchdog healthy", T)
    a_pid, b_pid = stack.runner_pid(A), stack.runner_pid(B)
    assert a_pid is not None and b_pid is not None and a_pid != b_pid
    server = stack.server_pid()
    restarts = stack.restarts()
    starts = stack.sup.starts

    os.kill(a_pid, signal.SIGSTOP)
    try:
        wait_until(lambda: stack.remediations("unload_model") >= 1, "A unloaded by the ladder",
                   T)
        # the runner of A is gone: the unload (or the kill after it) ended it
        wait_until(lambda: not psutil.pid_exists(a_pid)
                   or psutil.Process(a_pid).status() == psutil.STATUS_ZOMBIE,
                   "A's stopped runner gone", T)
    finally:
        if psutil.pid_exists(a_pid):
            os.kill(a_pid, signal.SIGCONT)

    # the deep probe passes again, with A loaded afresh in a new runner
    wait_until(lambda: stack.value("ollama_probe_success", probe="generate") == 1.0,
               "the deep probe passes again", T)
    new_a = stack.runner_pid(A)
    assert new_a is not None and new_a != a_pid
    # B was never touched, the server never restarted
    assert stack.runner_pid(B) == b_pid
    assert psutil.Process(b_pid).status() != psutil.STATUS_STOPPED
    assert stack.server_pid() == server and stack.sup.starts == starts
    assert stack.restarts() == restarts
    assert stack.value("ollama_watchdog_remediations_total", action="restart_server",
                       reason="deep_probe") == 0
    assert not stack.events("restart_decided")
    # What really happens: Ollama's unload ends the runner with a kill, which a stopped
    # process cannot ignore, so the first rung is enough and no kill_runner is needed.
    unloaded = stack.events("unload_model_succeeded")
    assert [e.get("model") for e in unloaded] == [A], stack.daemon.stderr()[-4000:]
    assert unloaded[0].get("runner_pids") == [a_pid]
    assert not stack.events("unload_model_failed") and not stack.events("kill_runner_succeeded")
    assert stack.remediations("kill_runner") == 0
    # the answer from B still flows
    again = stack.client.generate(model=B, prompt="still here", options={"num_predict": 4})
    assert again["done"] is True
    assert stack.runner_pid(B) == b_pid
