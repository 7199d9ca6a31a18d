"""CPU cost of one collection round of the process and GPU collectors.

Not a test: a measurement for ``benchmarks/RESULTS-collectors.md``. It starts a stand-in
``ollama serve`` with model children (the team's process-matching rule; ``--cuda-runner`` makes
one child a real CUDA program holding GPU memory, so NVML lists a compute process), fills a
models directory with blobs, then runs rounds and measures CPU time with
``time.process_time_ns()`` (this process, all threads: the GPU collector's NVML thread counts).

The total-energy read (about 4 ms of busy-waiting per call per NVML.md) runs on its own cadence
off the round; it is measured separately and shown amortised over the default cadence.

    python benchmarks/collectors.py [--rounds 500] [--runners 2] [--blobs 200] [--cuda-runner]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.process import ProcessCollector, _tree_size
from ollama_watchdog.procgroup import stop_process_group

RUNNER = r"""
import os, sys, time
if os.environ.get("CUDA_RUNNER") == "1":
    import torch
    held = torch.ones(256 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(3600)
"""

SERVER = r"""
import os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
n = int(os.environ["RUNNERS"])
for i in range(n):
    env = dict(os.environ, CUDA_RUNNER="1" if (i == 0 and os.environ.get("CUDA") == "1") else "0")
    subprocess.Popen([sys.executable, os.path.join(here, "llama-server"), "--model", str(i)],
                     env=env)
print("started", flush=True)
time.sleep(3600)
"""


class _Static:
    def __init__(self, fams: list[Metric]) -> None:
        self._fams = fams

    def collect(self) -> list[Metric]:
        return self._fams

    def describe(self) -> list[Metric]:
        return []


def _stats(ns: list[int]) -> dict[str, float]:
    ms = sorted(x / 1e6 for x in ns)
    return {
        "mean_ms": statistics.fmean(ms),
        "p50_ms": ms[len(ms) // 2],
        "p95_ms": ms[int(len(ms) * 0.95)],
        "max_ms": ms[-1],
    }


def _measure(fn: Callable[[], object], rounds: int) -> dict[str, float]:
    for _ in range(20):  # warm caches (psutil, NVML handles, the dir-size cache)
        fn()
    cpu: list[int] = []
    wall: list[int] = []
    for _ in range(rounds):
        c0, w0 = time.process_time_ns(), time.perf_counter_ns()
        fn()
        cpu.append(time.process_time_ns() - c0)
        wall.append(time.perf_counter_ns() - w0)
    out = {f"cpu_{k}": v for k, v in _stats(cpu).items()}
    out["wall_mean_ms"] = statistics.fmean(wall) / 1e6
    return out


def _machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "processes_on_host": len(psutil.pids()),
    }


def _wait_ready(proc: subprocess.Popen[str], lines: int, timeout: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < lines:
        if time.monotonic() > deadline:
            raise SystemExit("stand-ins did not start in time")
        if proc.stdout.readline():
            seen += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--runners", type=int, default=2)
    ap.add_argument("--blobs", type=int, default=200)
    ap.add_argument("--cuda-runner", action="store_true", help="first runner holds GPU memory")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--dump-metrics", type=Path, default=None, help="write one round's /metrics")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        (root / "bin" / "ollama").write_text(SERVER)
        (root / "bin" / "llama-server").write_text(RUNNER)
        models = root / "models"
        (models / "blobs").mkdir(parents=True)
        for i in range(args.blobs):
            (models / "blobs" / f"sha256-{i:064x}").write_bytes(b"\0" * 4096)
        proc = subprocess.Popen(
            [sys.executable, str(root / "bin" / "ollama"), "serve"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env={
                **os.environ,
                "RUNNERS": str(args.runners),
                "CUDA": "1" if args.cuda_runner else "0",
            },
            start_new_session=True,
        )
        try:
            _wait_ready(proc, 1 + args.runners, timeout=180)
            results = _run(args, proc.pid, models)
        finally:
            stop_process_group(proc, first=None, sweep=True, reap_timeout=30.0)
    _print(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _run(args: argparse.Namespace, server_pid: int, models: Path) -> dict[str, Any]:
    process = ProcessCollector(models, main_pid=lambda: server_pid)
    # energy on its own cadence: excluded from the round, measured below
    gpu = GpuCollector(process.ollama_pids, energy_interval=float("inf"), deadline=10.0)
    process.collect()
    gpu_snap = gpu.read()
    snap = process.snapshot
    assert snap is not None and snap.server is not None, "stand-in server not found"
    results: dict[str, Any] = {
        "machine": _machine(),
        "rounds": args.rounds,
        "runners_found": len(snap.runners),
        "blobs": args.blobs,
        "gpus": [d.name for d in gpu_snap.devices],
        "gpu_driver": gpu_snap.driver,
        "process": _measure(process.collect, args.rounds),
        "gpu": _measure(gpu.collect, args.rounds),
        "round": _measure(lambda: (process.collect(), gpu.collect()), args.rounds),
        "models_dir_full_walk": _measure(lambda: _tree_size(models), 50),
    }
    if gpu_snap.available:
        import pynvml  # present: the collector just used it

        handles = [pynvml.nvmlDeviceGetHandleByIndex(d.index) for d in gpu_snap.devices]
        results["energy_read_all_gpus"] = _measure(
            lambda: [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles], 50
        )
        results["ollama_gpu_memory_bytes"] = [s.ollama_memory for s in gpu.read().samples]
    if args.dump_metrics is not None:
        registry = CollectorRegistry()
        registry.register(_Static([*process.collect(), *gpu.collect()]))
        args.dump_metrics.write_bytes(generate_latest(registry))
    gpu.stop()
    return results


def _print(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, "
        f"Python {m['python']}, psutil {m['psutil']}, {m['processes_on_host']} processes"
    )
    print(
        f"GPUs: {r['gpus'] or 'none (NVML absent)'} driver {r['gpu_driver'] or '-'}; "
        f"runners found {r['runners_found']}; blobs {r['blobs']}; rounds {r['rounds']}"
    )
    print()
    print("| what | CPU mean ms | CPU p50 ms | CPU p95 ms | CPU max ms | wall mean ms |")
    print("|---|---|---|---|---|---|")
    keys = ["process", "gpu", "round", "models_dir_full_walk", "energy_read_all_gpus"]
    for key in keys:
        if key in r:
            s = r[key]
            print(
                f"| {key} | {s['cpu_mean_ms']:.3f} | {s['cpu_p50_ms']:.3f} | "
                f"{s['cpu_p95_ms']:.3f} | {s['cpu_max_ms']:.3f} | {s['wall_mean_ms']:.3f} |"
            )
    if "energy_read_all_gpus" in r:
        per_round = r["energy_read_all_gpus"]["cpu_mean_ms"] * 10.0 / 30.0
        print(
            f"\nenergy amortised (probe interval 10 s, energy every 30 s): "
            f"{per_round:.3f} ms CPU per round"
        )


if __name__ == "__main__":
    sys.exit(main())
