"""Series per host, measured: what one watchdog costs a Prometheus (docs/fleet-capacity.md).

Starts the Ollama simulator (3 models, ``--models``), loads two of them with traffic (generate,
chat, one 404), runs ``ollama-watchdog run`` following the simulator's log with the deep probe
on, and lets a real ``prometheus`` scrape it every second. Prints JSON: the samples in one
``/metrics`` body (counted by line), and what Prometheus itself counts for the target
(``scrape_samples_scraped``, ``scrape_series_added``, the head series of the job). GPU families
are off here (no NVML); ``gpu_series_per_gpu`` is counted from the GPU collector's families.

    python benchmarks/series.py
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import DaemonProcess, quick_config  # noqa: E402
from support.prometheus import PrometheusProcess  # noqa: E402
from support.sim import SimulatorProcess  # noqa: E402

JOB = "ollama-watchdog"
#: collectors/gpu.py: families with one series per GPU (info, utilization, memory used/total/
#: reserved/ollama/other, temperature, power, power limit, energy, SM clock, ECC, up), the
#: 9 throttle-reason series of each GPU, and the 2 host-level ones (devices, nvml_available)
GPU_PER_GPU_FAMILIES = 14
GPU_THROTTLE_REASONS = 9
GPU_HOST_SERIES = 2


def traffic(sim: SimulatorProcess, models: list[str]) -> None:
    for model in models:
        body = {"model": model, "prompt": "hi", "stream": False, "keep_alive": "1h",
                "options": {"num_predict": 4}}  # fmt: skip
        requests.post(f"{sim.url}/api/generate", json=body, timeout=120).raise_for_status()
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                "stream": False, "keep_alive": "1h"}  # fmt: skip
        requests.post(f"{sim.url}/api/chat", json=chat, timeout=120).raise_for_status()
        requests.post(f"{sim.url}/api/embed", json={"model": model, "input": "x"}, timeout=120)
    requests.post(f"{sim.url}/api/generate", json={"model": "nope"}, timeout=60)
    requests.get(f"{sim.url}/api/ps", timeout=10)


def main() -> int:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "models").mkdir()
        log = tmp / "ollama.log"
        sim = SimulatorProcess(tmp / "sim", log_file=log).start()
        daemon = None
        prom = None
        try:
            tags = requests.get(f"{sim.url}/api/tags", timeout=10).json()["models"]
            models = [m["name"] for m in tags if "completion" in m.get("capabilities", [])][:2]
            config = quick_config(
                sim.url, tmp, logs={"source": "file", "path": str(log)},
                probe={"interval": "1s", "deep_model": models[0], "deep_interval": "2s"},
            )  # fmt: skip
            daemon = DaemonProcess(config, tmp).start()
            target = str(config["exporter"]["listen"])
            traffic(sim, models)
            time.sleep(5)  # probes and the log follower catch up
            text = daemon.metrics_text()
            samples = [line for line in text.splitlines() if line and not line.startswith("#")]
            prom = PrometheusProcess(
                tmp / "prom",
                scrape_configs=[{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
            ).start()
            prom.wait(lambda: prom.result(f'scrape_samples_scraped{{job="{JOB}"}}'), "a scrape")
            time.sleep(3)

            loaded = len(requests.get(f"{sim.url}/api/ps", timeout=10).json()["models"])
            families = sum(1 for line in text.splitlines() if line.startswith("# TYPE"))

            def value(expr: str) -> float:
                return float(prom.result(expr)[0]["value"][1])

            out = {
                "machine": platform.node(),
                "models_available": len(tags),
                "models_loaded": loaded,
                "metrics_lines_samples": len(samples),
                "metrics_families": families,
                "metrics_bytes": len(text.encode()),
                "scrape_samples_scraped": value(f'scrape_samples_scraped{{job="{JOB}"}}'),
                "series_of_the_job_in_prometheus": value(f'count({{job="{JOB}"}})'),
                "gpu_series_per_gpu": GPU_PER_GPU_FAMILIES + GPU_THROTTLE_REASONS,
                "gpu_series_per_host": GPU_HOST_SERIES,
            }
            print(json.dumps(out, indent=2))
        finally:
            if prom is not None:
                prom.stop()
            if daemon is not None:
                daemon.stop()
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
