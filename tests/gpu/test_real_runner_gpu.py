"""The real runner on a real GPU: a CUDA ``llama-server`` holding a ~2 GB model, fully offloaded.

The simulator plays Ollama's front with the real runner behind it (``--llama-server`` with a
CUDA build, ``--gpu-layers 999``); the daemon runs with its GPU, process and logs collectors as
in production. Checked against ``nvidia-smi``:

* ``ollama_gpu_ollama_memory_bytes{gpu="0"}`` within 1 % of the llama-server pid's memory;
* after the unload (``keep_alive: 0``) the runner is gone and the GPU's memory used is back
  within 1 % of its value before the load (the "VRAM not released" signal, measured for real);
* a context far larger than the GPU: a real CUDA out-of-memory, counted ``out_of_memory`` once.

Needs ``$LLAMA_SERVER`` (or the build script's cache) to be a CUDA build, and an NVIDIA driver;
skips with the reason otherwise. tests/gpu/README.md records how it was run and what came back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.sim import SimulatorProcess
from support.smi import pid_mib, record, used_mib
from support.wait import wait_until

from ollama_watchdog.simulator.llamamodel import params_for_size, write_llama_gguf

pytestmark = pytest.mark.gpu

MIB = 1024 * 1024
T = 180.0
MODEL = "big:latest"
HUGE_CONTEXT = 100_000_000


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "big.gguf"
    n_embd, n_layer, n_ff = params_for_size(2 * 1024 * MIB)
    started = time.monotonic()
    write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=1)
    record("model", bytes=path.stat().st_size, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff,
           write_s=round(time.monotonic() - started, 1))
    return path


@pytest.fixture
def stack(
    cuda_server: Path,
    big_model: Path,
    simulator_factory: Callable[..., SimulatorProcess],
    tmp_path: Path,
) -> Iterator[tuple[SimulatorProcess, DaemonProcess]]:
    log = tmp_path / "ollama.log"
    sim = simulator_factory("--llama-server", str(cuda_server), "--model",
                            f"{MODEL}={big_model}", "--gpu-layers", "999", "--tokens", "32",
                            as_ollama=True, log_file=log)
    cfg = quick_config(
        sim.url, tmp_path,
        ollama={"unit": "", "models_dir": str(sim.work_dir / "models"), "timeout": "5s"},
        logs={"source": "file", "path": str(log)},
        gpu={"enabled": "true"},
    )
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_until(lambda: daemon.value("ollama_up") == 1.0, "ollama_up", T)
        yield sim, daemon


def runners(sim: SimulatorProcess) -> list[dict[str, object]]:
    r = requests.get(sim.control_url + "/runners", timeout=10)
    r.raise_for_status()
    live: list[dict[str, object]] = r.json()["runners"]
    return live


def generate(sim: SimulatorProcess, **body: object) -> requests.Response:
    return requests.post(sim.url + "/api/generate", json={"model": MODEL, "stream": False,
                                                          **body}, timeout=T)


def test_offloaded_runner_memory_matches_nvml_and_is_released_on_unload(
    stack: tuple[SimulatorProcess, DaemonProcess],
) -> None:
    sim, daemon = stack
    before = used_mib()
    r = generate(sim, prompt="on the GPU", options={"num_predict": 32}, keep_alive="1h")
    assert r.status_code == 200, r.text
    (runner,) = runners(sim)
    pid = int(str(runner["pid"]))
    assert "-ngl" in list(runner["argv"])  # type: ignore[arg-type]
    smi_mib = wait_until(lambda: pid_mib(pid), "nvidia-smi lists the runner", 60)
    # The collector's last round may predate the runner's last allocation (its compute
    # buffers come with the first decode): wait for a round after it.
    def agreeing() -> float | None:
        ours = daemon.value("ollama_gpu_ollama_memory_bytes", gpu="0") or 0.0
        now = pid_mib(pid) or 0.0
        return ours if now > 0 and abs(ours / MIB - now) <= 0.01 * now else None

    try:
        ours = wait_until(agreeing, "ollama_gpu_ollama_memory_bytes within 1 % of NVML's", 60)
    except AssertionError:
        ours = daemon.value("ollama_gpu_ollama_memory_bytes", gpu="0") or 0.0
    smi_mib = pid_mib(pid) or smi_mib
    record("loaded", runner=pid, ours_bytes=ours, smi_pid_mib=smi_mib, used_before_mib=before,
           used_loaded_mib=used_mib(), eval_count=r.json().get("eval_count"))
    assert smi_mib > 1024  # the ~2 GB model is on the GPU, not on the CPU
    assert abs(ours / MIB - smi_mib) <= 0.01 * smi_mib

    r = generate(sim, keep_alive=0)  # no prompt: unload
    assert r.status_code == 200 and r.json()["done_reason"] == "unload"
    wait_until(lambda: not runners(sim), "the runner unloaded", 60)
    wait_until(lambda: pid_mib(pid) is None, "the runner's GPU memory freed", 60)
    wait_until(lambda: used_mib() <= before * 1.01 + 1,
               "memory used back to its value before the load", 60)
    after = used_mib()
    record("unloaded", used_before_mib=before, used_after_mib=after,
           ollama_bytes=daemon.value("ollama_gpu_ollama_memory_bytes", gpu="0"))
    assert abs(after - before) <= 0.01 * max(before, 1.0) + 1  # nvidia-smi rounds to MiB


def test_a_cuda_out_of_memory_counts_once(
    stack: tuple[SimulatorProcess, DaemonProcess],
) -> None:
    sim, daemon = stack
    r = generate(sim, prompt="far too big", options={"num_ctx": HUGE_CONTEXT})
    assert r.status_code == 500, r.text
    assert "llama-server process has terminated" in r.json()["error"]
    wait_until(lambda: daemon.value("ollama_runner_errors_total", kind="out_of_memory") == 1,
               "out_of_memory counted", 60)
    log = sim.log_text()
    assert "cudaMalloc failed: out of memory" in log or "out of memory" in log
    time.sleep(2)  # the follower has read every line by now: nothing else may follow
    kinds = ("runner_terminated", "out_of_memory", "gpu_error", "load_failed", "load_timeout")
    counts = {k: daemon.value("ollama_runner_errors_total", kind=k) or 0 for k in kinds}
    record("cuda_oom", error=r.json()["error"][:300], counts=counts)
    assert counts == dict(dict.fromkeys(kinds, 0.0), out_of_memory=1.0)
