"""The process and GPU collectors on a real NVIDIA GPU, checked against nvidia-smi.

A stand-in ``ollama serve`` (a Python script named ``ollama``) spawns a ``llama-server`` child
that is a real CUDA program: it allocates a known amount of GPU memory with torch and keeps the
GPU busy with matrix products on buffers allocated up front, so its memory stays constant while
we read. The process collector must find that child as Ollama's runner, and the GPU collector
must then attribute its GPU memory to Ollama, agreeing with ``nvidia-smi --query-compute-apps``
within 1 %; memory used and utilization must agree with ``nvidia-smi --query-gpu`` within 1 %.

Needs an NVIDIA driver, nvidia-smi, nvidia-ml-py and torch with CUDA: skipped where any is
missing (CI has no GPU; CI's command deselects ``-m gpu``). Run on the GPU machine as
``tests/gpu/README.md`` shows. Readings are printed as ``RECORD`` lines for the README.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from support.smi import record, smi
from support.wait import wait_until

from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.process import ProcessCollector
from ollama_watchdog.procgroup import stop_process_group

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024
ALLOC_BYTES = 3 * 1024 * MIB  # the tensor the runner holds
START_DEADLINE = 120.0  # CUDA start-up on a fresh machine can take a while

RUNNER = r"""
import os, sys, time
import torch
held = torch.empty(int(os.environ["ALLOC_BYTES"]), dtype=torch.uint8, device="cuda")
held.fill_(1)
a = torch.randn(4096, 4096, device="cuda")
b = torch.randn(4096, 4096, device="cuda")
c = torch.empty(4096, 4096, device="cuda")
torch.matmul(a, b, out=c)  # the first product allocates cuBLAS's workspace: before "ready"
torch.cuda.synchronize()
print("ready", os.getpid(), flush=True)
while True:  # keep the GPU busy without allocating anything more
    for _ in range(20):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
"""

SERVER = r"""
import json, os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
kid = subprocess.Popen([sys.executable, os.path.join(here, "llama-server"), "--model", "blob"])
print(json.dumps({"server": os.getpid(), "runner": kid.pid}), flush=True)
time.sleep(3600)
"""


def _require_gpu() -> None:
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found: no NVIDIA driver here")
    pynvml = pytest.importorskip("pynvml")
    pytest.importorskip("torch")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML unusable here: {exc}")
    pynvml.nvmlShutdown()


class _Static:
    def __init__(self, fams: list[Metric] | tuple[Metric, ...]) -> None:
        self._fams = fams

    def collect(self) -> list[Metric] | tuple[Metric, ...]:
        return self._fams

    def describe(self) -> list[Metric]:
        return []


def read(collector: GpuCollector | ProcessCollector) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(_Static(tuple(collector.collect())))
    return reg


class Loaded:
    """The stand-in server and its CUDA runner, plus our two collectors wired as in the daemon."""

    def __init__(self, root: Path) -> None:
        (root / "bin").mkdir()
        (root / "bin" / "ollama").write_text(SERVER)
        (root / "bin" / "llama-server").write_text(RUNNER)
        (root / "models").mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, str(root / "bin" / "ollama"), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "ALLOC_BYTES": str(ALLOC_BYTES)},
            start_new_session=True,
        )
        lines = self._lines(2)
        info = json.loads(next(line for line in lines if line.startswith("{")))
        self.server_pid = int(info["server"])
        self.runner_pid = int(info["runner"])
        self.process = ProcessCollector(root / "models", main_pid=lambda: self.server_pid)
        self.gpu = GpuCollector(self.process.ollama_pids, energy_interval=0.0, deadline=10.0)

    def _lines(self, count: int) -> list[str]:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        got: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for _ in range(count):
                got.put(stdout.readline().strip())

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_DEADLINE
        return [got.get(timeout=max(0.1, deadline - time.monotonic())) for _ in range(count)]

    def close(self) -> None:
        self.gpu.stop()
        stop_process_group(self.proc, first=None, sweep=True, reap_timeout=30.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    _require_gpu()
    rig = Loaded(tmp_path_factory.mktemp("gpu"))
    try:
        yield rig
    finally:
        rig.close()


def test_runner_is_found_and_its_gpu_memory_is_ollamas(loaded: Loaded) -> None:
    loaded.process.collect()
    snap = loaded.process.snapshot
    assert snap is not None and snap.server is not None
    assert snap.server.pid == loaded.server_pid
    assert loaded.runner_pid in {r.pid for r in snap.runners}
    assert loaded.runner_pid not in snap.orphan_pids

    ours = read(loaded.gpu).get_sample_value("ollama_gpu_ollama_memory_bytes", {"gpu": "0"})
    apps = {int(pid): int(mib) for pid, mib in smi("--query-compute-apps=pid,used_memory")}
    record("compute_apps", ours_bytes=ours, smi_mib=apps, runner=loaded.runner_pid)
    assert loaded.runner_pid in apps, "nvidia-smi does not list the runner"
    assert ours is not None
    assert ours >= ALLOC_BYTES  # the tensor, plus the CUDA context
    smi_bytes = apps[loaded.runner_pid] * MIB
    assert abs(ours - smi_bytes) <= 0.01 * smi_bytes


def test_memory_used_and_total_agree_with_nvidia_smi(loaded: Loaded) -> None:
    reg = read(loaded.gpu)
    used = reg.get_sample_value("ollama_gpu_memory_used_bytes", {"gpu": "0"})
    total = reg.get_sample_value("ollama_gpu_memory_total_bytes", {"gpu": "0"})
    reserved = reg.get_sample_value("ollama_gpu_memory_reserved_bytes", {"gpu": "0"})
    smi_used, smi_total, smi_reserved = (
        int(v) for v in smi("--query-gpu=memory.used,memory.total,memory.reserved")[0]
    )
    record(
        "memory",
        used=used,
        total=total,
        reserved=reserved,
        smi_used_mib=smi_used,
        smi_total_mib=smi_total,
        smi_reserved_mib=smi_reserved,
    )
    assert used is not None and total is not None
    assert used >= ALLOC_BYTES
    assert abs(used - smi_used * MIB) <= 0.01 * smi_used * MIB
    assert abs(total - smi_total * MIB) <= 0.01 * smi_total * MIB


def test_utilization_agrees_with_nvidia_smi_under_load(loaded: Loaded) -> None:
    # The runner's load can take a moment to show in NVML's sampled utilization (the first
    # run saw 0 % for the first seconds): wait, generously, until nvidia-smi sees it busy.
    waited = time.monotonic()
    wait_until(
        lambda: int(smi("--query-gpu=utilization.gpu")[0][0]) >= 50,
        "the CUDA runner made the GPU busy",
        timeout=60.0,
        interval=0.5,
    )
    record("utilization_wait", seconds=round(time.monotonic() - waited, 1))
    pairs = []
    for _ in range(5):
        ours = read(loaded.gpu).get_sample_value("ollama_gpu_utilization_ratio", {"gpu": "0"})
        theirs = int(smi("--query-gpu=utilization.gpu")[0][0])
        assert ours is not None
        pairs.append((ours * 100, theirs))
    record("utilization", pairs=pairs)
    # NVML samples utilization over a period of up to a second and nvidia-smi reads it a few
    # hundred ms after us, so one pair may straddle a change: compare the median pair.
    assert statistics.median(o for o, _ in pairs) >= 50  # we see the runner's load
    assert statistics.median(abs(o - t) for o, t in pairs) <= 1


def test_identity_power_limit_and_energy(loaded: Loaded) -> None:
    name, uuid, driver, limit = smi("--query-gpu=name,uuid,driver_version,enforced.power.limit")[0]
    reg = read(loaded.gpu)  # schedules an energy read (energy_interval=0)
    info = {"gpu": "0", "uuid": uuid, "name": name, "driver": driver}
    assert reg.get_sample_value("ollama_gpu_info", info) == 1
    # every GPU nvidia-smi lists is counted and answers NVML
    assert reg.get_sample_value("ollama_gpu_devices") == len(smi("--query-gpu=index"))
    assert reg.get_sample_value("ollama_gpu_up", {"gpu": "0"}) == 1
    ours_limit = reg.get_sample_value("ollama_gpu_power_limit_watts", {"gpu": "0"})
    assert ours_limit is not None and abs(ours_limit - float(limit)) <= 0.01 * float(limit)

    first = read(loaded.gpu).get_sample_value("ollama_gpu_energy_joules_total", {"gpu": "0"})
    time.sleep(1.0)  # let the busy GPU use some energy (a wait, not an assertion on time)
    read(loaded.gpu)
    second = read(loaded.gpu).get_sample_value("ollama_gpu_energy_joules_total", {"gpu": "0"})
    power = reg.get_sample_value("ollama_gpu_power_watts", {"gpu": "0"})
    record("energy", first_j=first, second_j=second, power_w=power, limit_w=ours_limit)
    assert first is not None and second is not None and second > first
    throttle = [
        s.labels["reason"]
        for fam in loaded.gpu.collect()
        if fam.name == "ollama_gpu_throttle_reasons"
        for s in fam.samples
        if s.value == 1
    ]
    record("throttle_reasons", active=throttle)


class _LosingNvml:
    """The real pynvml, except that device readings of ``lost`` GPU indices fail as NVML fails
    for a GPU that fell off the bus (``NVML_ERROR_GPU_IS_LOST``). Every other call, including
    nvmlInit and nvmlShutdown, is the real library's."""

    def __init__(self, pynvml: Any) -> None:
        self._real = pynvml
        self.lost: set[int] = set()
        self.inits = 0

    def __getattr__(self, name: str) -> object:
        real = getattr(self._real, name)
        if not name.startswith("nvmlDevice") or name in {
            "nvmlDeviceGetCount",
            "nvmlDeviceGetHandleByIndex",
            "nvmlDeviceGetUUID",
            "nvmlDeviceGetName",
        }:
            return real

        def reading(handle: object, *args: object, **kwargs: object) -> object:
            index = self._real.nvmlDeviceGetIndex(handle)
            if index in self.lost:
                raise self._real.NVMLError(self._real.NVML_ERROR_GPU_IS_LOST)
            return real(handle, *args, **kwargs)

        return reading

    def nvmlInit(self) -> None:
        self.inits += 1
        self._real.nvmlInit()


def test_a_lost_gpu_is_down_and_reopening_real_nvml_brings_it_back(loaded: Loaded) -> None:
    """The down state and the shutdown + init cycle of a lost GPU, on the real library."""
    import pynvml

    now = [0.0]
    nvml = _LosingNvml(pynvml)
    gpu = GpuCollector(
        loaded.process.ollama_pids, nvml=nvml, retry_interval=60.0, clock=lambda: now[0]
    )
    try:
        assert read(gpu).get_sample_value("ollama_gpu_up", {"gpu": "0"}) == 1
        nvml.lost.add(0)
        for _ in range(7):  # 60 s down at 10 s rounds: the last round shuts NVML down
            now[0] += 10
            reg = read(gpu)
            assert reg.get_sample_value("ollama_gpu_up", {"gpu": "0"}) == 0
            assert reg.get_sample_value("ollama_gpu_memory_used_bytes", {"gpu": "0"}) is None
        assert nvml.inits == 1
        nvml.lost.clear()  # the GPU is back; the next round reopens NVML for real
        now[0] += 10
        reg = read(gpu)
        assert nvml.inits == 2
        assert reg.get_sample_value("ollama_gpu_up", {"gpu": "0"}) == 1
        ours = reg.get_sample_value("ollama_gpu_memory_used_bytes", {"gpu": "0"})
        ((used_mib,),) = smi("--query-gpu=memory.used")
        record("reopened", ours_used=ours, smi_used_mib=used_mib)
        assert ours is not None and abs(ours - int(used_mib) * MIB) <= 0.01 * int(used_mib) * MIB
    finally:
        gpu.stop()
