"""Two Ollama instances on one GPU, each with its own watchdog (issue 19, item 4 on one GPU).

Two simulator fronts (``--llama-server`` with a CUDA build, each its own port, models dir and
log), both on the one GPU through ``CUDA_VISIBLE_DEVICES=0``, each watched by its own daemon
with ``[ollama] unit = ""``: the process collector then finds its own server by the port of
``[ollama] url``. Checked against ``nvidia-smi``:

* each watchdog's ``ollama_gpu_ollama_memory_bytes{gpu="0"}`` is within 1 % of NVML's memory of
  ITS runner only, and the other instance's runner is in ``ollama_gpu_other_memory_bytes``;
* healing per instance: instance 1's runner stopped (SIGSTOP) is mended by watchdog 1 (the
  ladder: unload, then kill), while instance 0's runner pid and loaded model are unchanged and
  watchdog 0 does nothing.

Needs a CUDA ``llama-server`` and an NVIDIA driver; skips with the reason otherwise.
tests/gpu/README.md records how it was run and what came back.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.sim import SimulatorProcess
from support.smi import pid_mib, record
from support.wait import wait_until

from ollama_watchdog.simulator.llamamodel import params_for_size, write_llama_gguf

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024
T = 180.0
MODELS = ("m0:latest", "m1:latest")
ACTIONS = ("unload_model", "kill_runner", "restart_server", "kill_orphans")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    n_embd, n_layer, n_ff = params_for_size(512 * MIB)
    write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=3)
    return path


@dataclass
class Instance:
    sim: SimulatorProcess
    daemon: DaemonProcess
    model: str

    def runners(self) -> list[dict[str, object]]:
        r = requests.get(self.sim.control_url + "/runners", timeout=10)
        r.raise_for_status()
        return [x for x in r.json()["runners"] if x.get("alive", True)]

    def runner_pid(self) -> int:
        (runner,) = self.runners()
        return int(str(runner["pid"]))

    def generate(self, **body: object) -> requests.Response:
        return requests.post(self.sim.url + "/api/generate",
                             json={"model": self.model, "stream": False, **body}, timeout=T)

    def value(self, name: str, **labels: str) -> float:
        return self.daemon.value(name, **labels) or 0.0

    def remediations(self) -> float:
        metrics = self.daemon.metrics()
        return sum(v for (name, labels), v in metrics.items()
                   if name == "ollama_watchdog_remediations_total"
                   and dict(labels).get("action") in ACTIONS)


@pytest.fixture
def instances(
    cuda_server: Path,
    model: Path,
    simulator_factory: Callable[..., SimulatorProcess],
    tmp_path: Path,
) -> Iterator[list[Instance]]:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    out: list[Instance] = []
    daemons: list[DaemonProcess] = []
    try:
        for n, name in enumerate(MODELS):
            tmp = tmp_path / f"i{n}"
            tmp.mkdir()
            log = tmp / "ollama.log"
            sim = simulator_factory("--llama-server", str(cuda_server), "--model",
                                    f"{name}={model}", "--gpu-layers", "999", "--tokens", "16",
                                    as_ollama=True, log_file=log, env=env)
            heal: dict[str, object] = {"enabled": False, "restart_command": ["true"]}
            probe: dict[str, object] = {"interval": "500ms"}
            if n == 1:  # only instance 1's watchdog heals; its deep probe finds the wedge
                heal = {"enabled": True, "restart_command": ["true"], "failure_threshold": 2,
                        "startup_grace": "2s", "backoff_initial": "1s"}
                probe.update(deep_model=name, deep_interval="1s", deep_timeout="3s")
            cfg = quick_config(
                sim.url, tmp,
                ollama={"unit": "", "models_dir": str(sim.work_dir / "models"), "timeout": "5s"},
                logs={"source": "file", "path": str(log)},
                gpu={"enabled": "true"},
                probe=probe,
                watchdog=heal,
                healing={"unload_timeout": "5s", "kill_timeout": "5s"},
            )
            daemon = DaemonProcess(cfg, tmp).start()
            daemons.append(daemon)
            out.append(Instance(sim, daemon, name))
        for inst in out:
            wait_until(lambda i=inst: i.value("ollama_up") == 1.0, "ollama_up", T)  # type: ignore[misc]
        yield out
    finally:
        for d in daemons:
            d.stop()


def test_each_watchdog_attributes_only_its_own_runner_and_heals_only_its_own(
    instances: list[Instance],
) -> None:
    zero, one = instances
    for inst in instances:
        r = inst.generate(prompt="on the GPU", options={"num_predict": 8}, keep_alive="1h")
        assert r.status_code == 200, r.text
    pids = [zero.runner_pid(), one.runner_pid()]
    assert zero.sim.pid != one.sim.pid and pids[0] != pids[1]
    for pid in pids:
        wait_until(lambda p=pid: pid_mib(p), "nvidia-smi lists the runner", 60)  # type: ignore[misc]

    def split(inst: Instance, own: int, other: int) -> tuple[float, float, float, float] | None:
        ours = inst.value("ollama_gpu_ollama_memory_bytes", gpu="0") / MIB
        others = inst.value("ollama_gpu_other_memory_bytes", gpu="0") / MIB
        own_mib, other_mib = pid_mib(own) or 0.0, pid_mib(other) or 0.0
        if own_mib <= 0 or other_mib <= 0:
            return None
        ok = (abs(ours - own_mib) <= 0.01 * own_mib
              and others >= other_mib * 0.99 and ours < own_mib + other_mib * 0.5)
        return (ours, own_mib, others, other_mib) if ok else None

    figures = {}
    for n, inst in enumerate(instances):
        try:
            got = wait_until(lambda i=inst, n=n: split(i, pids[n], pids[1 - n]),  # type: ignore[misc]
                             f"watchdog {n}: its runner is Ollama's, the other one other's", 60)
        except AssertionError:
            got = None
        ours = inst.value("ollama_gpu_ollama_memory_bytes", gpu="0") / MIB
        others = inst.value("ollama_gpu_other_memory_bytes", gpu="0") / MIB
        figures[n] = {"runner": pids[n], "ours_mib": round(ours, 1),
                      "smi_own_mib": pid_mib(pids[n]), "other_mib": round(others, 1),
                      "smi_other_runner_mib": pid_mib(pids[1 - n]),
                      "server": inst.daemon.value("ollama_process_up")}
        record(f"split_{n}", **figures[n])
        assert got is not None, figures[n]
        own_mib = figures[n]["smi_own_mib"]
        assert isinstance(own_mib, float) and abs(ours - own_mib) <= 0.01 * own_mib

    # instance 1's runner wedges: watchdog 1 mends it; instance 0 is left alone
    wait_until(lambda: one.value("ollama_probe_success", probe="generate") == 1.0,
               "watchdog 1's deep probe passes", T)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        wait_until(lambda: one.remediations() >= 1, "watchdog 1 remediated", T)
        wait_until(lambda: not psutil.pid_exists(pids[1])
                   or psutil.Process(pids[1]).status() == psutil.STATUS_ZOMBIE,
                   "instance 1's wedged runner gone", T)
    finally:
        if psutil.pid_exists(pids[1]):
            os.kill(pids[1], signal.SIGCONT)
    metrics = one.daemon.metrics()
    done = {dict(labels)["action"]: v for (name, labels), v in metrics.items()
            if name == "ollama_watchdog_remediations_total" and v > 0}
    record("healed", instance1_actions=done, wedged_runner=pids[1],
           instance0_runner_after=zero.runner_pid(), instance0_remediations=zero.remediations())
    assert set(done) <= {"unload_model", "kill_runner"}, done  # the ladder, no server restart
    assert zero.runner_pid() == pids[0] and psutil.Process(pids[0]).status() != "stopped"
    assert [str(x["model"]) for x in zero.runners()] == [MODELS[0]]
    assert zero.remediations() == 0
    r = zero.generate(prompt="still here", options={"num_predict": 4}, keep_alive="1h")
    assert r.status_code == 200 and zero.runner_pid() == pids[0]
    r = one.generate(prompt="mended", options={"num_predict": 4}, keep_alive="1h")
    assert r.status_code == 200 and one.runner_pid() != pids[1]
