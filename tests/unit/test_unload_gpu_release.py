"""The ladder's first rung checks the runner's GPU memory, as the kill does (issue 15 item 2).

Against the simulator (its runners are real child processes with ``--model <blob>``): the model
is loaded, then ``RemedyActions.unload_model`` unloads it. The per-process GPU memory table is
NVML's view, given as the reading the GPU collector would return: one that drops the runner once
it has exited (a driver that frees its memory), one that still lists it (memory that outlives
its process), and none (no NVML).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import psutil
import requests
from support.sim import SimulatorProcess

from ollama_watchdog.config import HealingConfig
from ollama_watchdog.healing.actions import (
    RemedyActions,
    RemedyResult,
    find_runners,
    model_digest,
)
from ollama_watchdog.ollama.api import OllamaClient

GIB = 1024**3
UNLOAD_TIMEOUT = 3.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def unload(
    sim: SimulatorProcess, table: Callable[[set[int]], Mapping[int, int] | None]
) -> tuple[RemedyResult, list[int]]:
    """Load the simulator's generation model, then unload it with ``RemedyActions``; ``table``
    turns the runner pids into the GPU memory reading."""
    model = sim.generation_model()
    requests.post(f"{sim.url}/api/generate", timeout=30, json={
        "model": model, "prompt": "load", "stream": False, "options": {"num_predict": 1}},
    ).raise_for_status()  # fmt: skip
    models_dir = sim.work_dir / "models"
    digest = model_digest(models_dir, model)
    assert digest is not None
    pids = [p.pid for p in find_runners(digest, sim.pid)]
    assert pids, "the simulator started no runner for the model"
    remedies = RemedyActions(
        OllamaClient(sim.url, 10.0),
        models_dir,
        HealingConfig(unload_timeout=UNLOAD_TIMEOUT),
        server_pid=lambda: sim.pid,
        gpu_memory=lambda: table(set(pids)),
        poll=0.05,
    )
    return remedies.unload_model(model), pids


def test_unload_succeeds_once_the_runner_has_exited_and_its_gpu_memory_is_free(
    simulator: SimulatorProcess,
) -> None:
    result, pids = unload(simulator, lambda pids: {p: GIB for p in pids if _alive(p)})
    assert result.success, result.error
    assert result.detail["gpu_memory_released"] is True
    assert result.detail["runner_pids"] == pids
    assert not any(_alive(p) for p in pids)


def test_gpu_memory_still_held_after_the_runner_exited_fails_the_rung(
    simulator: SimulatorProcess,
) -> None:
    """The model left /api/ps and its runner is gone, but NVML still shows the runner's memory:
    the rung fails (so the ladder goes on), naming the pid, after ``unload_timeout``."""
    result, pids = unload(simulator, lambda pids: {p: GIB for p in pids})
    assert not result.success
    assert result.error == f"GPU memory still held by pid(s) {sorted(pids)} after the unload"
    assert result.detail["gpu_memory_released"] is False
    assert not any(_alive(p) for p in pids)
    assert result.duration >= UNLOAD_TIMEOUT * 0.9


def test_without_nvml_the_unload_says_nothing_of_gpu_memory(simulator: SimulatorProcess) -> None:
    result, _ = unload(simulator, lambda pids: None)
    assert result.success, result.error
    assert "gpu_memory_released" not in result.detail


