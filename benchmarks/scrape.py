"""Scrape latency and daemon memory (issue 2's benchmark; run on demand, not a test).

1. Scrape latency: the simulator with 50 models loaded (50 runner children, 50 entries in
   /api/ps), the daemon probing it; 1000 scrapes of /metrics while Ollama is healthy, then 1000
   while the simulator is hung (every probe then waits its full timeout). p50/p99 in ms.
2. Memory: the daemon probing the simulator every 10 ms for 10 000 probe rounds (every
   collector runs at that interval, the process collector's /proc scan included); its RSS
   sampled every 1000 rounds (rounds counted from the simulator's own request log: one
   GET /api/version per round).

3. With ``--tls``: the cost of TLS and basic auth per scrape. The same simulator (50 models
   loaded), one daemon with ``[exporter] web_config`` (an ECDSA P-256 certificate made by
   ``openssl``, a bcrypt cost-12 user) and one without; scrapes of /metrics over plain HTTP,
   over TLS with basic auth on one kept-alive connection (as Prometheus scrapes), and over
   TLS with basic auth on a new connection each time (a full handshake per scrape).

    python benchmarks/scrape.py [--scrapes 1000] [--rounds 10000] [--tls]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.certs import server_certs  # noqa: E402
from support.daemon import DaemonProcess, quick_config  # noqa: E402
from support.sim import SimulatorProcess  # noqa: E402
from support.tools import free_port  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def scrape_series(
    url: str, n: int, *, fresh: bool = False, **kw: Any
) -> list[float]:
    """ms per GET /metrics; one kept-alive session, or (``fresh``) a new connection each."""
    session = requests.Session()
    out = []
    for _ in range(n):
        if fresh:
            session.close()
            session = requests.Session()
        t = time.perf_counter()
        r = session.get(url + "/metrics", timeout=10, **kw)
        r.raise_for_status()
        out.append((time.perf_counter() - t) * 1000)
    session.close()
    return out


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def bench_tls(tmp: Path, scrapes: int) -> dict[str, object]:
    import bcrypt

    ca, crt, key = server_certs(tmp)
    password = "correct horse battery staple"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=12)).decode()
    (tmp / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    sim = SimulatorProcess(tmp / "simtls", ["--models", "60", "--token-delay", "0"]).start()
    results: dict[str, object] = {}
    try:
        loaded = load_models(sim, 50)
        results["models_loaded"] = loaded
        (tmp / "plain").mkdir()
        (tmp / "tls").mkdir()
        plain = quick_config(sim.url, tmp / "plain", ollama={"timeout": "5s"},
                             probe={"interval": "1s"})  # fmt: skip
        with DaemonProcess(plain, tmp / "plain") as d:
            d.wait_value("ollama_models_loaded", float(loaded), timeout=60)
            results["plain_http_keepalive"] = summary(scrape_series(d.url, scrapes))
        port = free_port()
        secure = quick_config(sim.url, tmp / "tls", port, ollama={"timeout": "5s"},
                              probe={"interval": "1s"},
                              exporter={"web_config": str(tmp / "web.yml")})  # fmt: skip
        d = DaemonProcess(secure, tmp / "tls").start(wait=False)
        try:
            url = f"https://127.0.0.1:{port}"
            kw: dict[str, Any] = {"verify": str(ca), "auth": ("prometheus", password)}
            deadline = time.monotonic() + 60
            while True:
                try:
                    if f"ollama_models_loaded {float(loaded)}" in requests.get(
                        url + "/metrics", timeout=5, **kw
                    ).text:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the TLS daemon never served the loaded models")
                time.sleep(0.2)
            results["tls_basic_auth_keepalive"] = summary(scrape_series(url, scrapes, **kw))
            results["tls_basic_auth_new_connection"] = summary(
                scrape_series(url, scrapes, fresh=True, **kw)
            )
        finally:
            d.stop()
    finally:
        sim.stop()
    return results


def load_models(sim: SimulatorProcess, n: int) -> int:
    tags = requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    names = [m["name"] for m in tags if "completion" in m.get("capabilities", ["completion"])][:n]
    for name in names:
        requests.post(
            sim.url + "/api/generate",
            json={"model": name, "prompt": "", "keep_alive": "1h"},
            timeout=60,
        ).raise_for_status()
    return len(requests.get(sim.url + "/api/ps", timeout=10).json()["models"])


def bench_scrapes(tmp: Path, scrapes: int) -> dict[str, object]:
    sim = SimulatorProcess(tmp / "sim", ["--models", "60", "--token-delay", "0"]).start()
    try:
        loaded = load_models(sim, 50)
        cfg = quick_config(sim.url, tmp, ollama={"timeout": "5s"}, probe={"interval": "1s"})
        with DaemonProcess(cfg, tmp) as d:
            d.wait_value("ollama_models_loaded", float(loaded), timeout=60)
            size = len(d.metrics_text().encode())
            series = sum(1 for line in d.metrics_text().splitlines() if not line.startswith("#"))
            healthy = scrape_series(d.url, scrapes)
            sim.set_fault("hang")
            d.wait_value("ollama_up", 0.0, timeout=60)
            hung = scrape_series(d.url, scrapes)
    finally:
        sim.stop()
    return {
        "models_loaded": loaded,
        "scrape_bytes_healthy": size,
        "series_healthy": series,
        "healthy_p50_ms": round(statistics.median(healthy), 3),
        "healthy_p99_ms": round(percentile(healthy, 99), 3),
        "hung_p50_ms": round(statistics.median(hung), 3),
        "hung_p99_ms": round(percentile(hung, 99), 3),
        "hung_max_ms": round(max(hung), 3),
    }


def bench_memory(tmp: Path, rounds: int) -> dict[str, object]:
    sim = SimulatorProcess(tmp / "simmem", ["--models", "3"]).start()
    try:
        cfg = quick_config(
            sim.url,
            tmp,
            probe={"interval": "10ms"},
            logs={"source": "none"},
            gpu={"enabled": "false"},
        )
        d = DaemonProcess(cfg, tmp).start()
        try:
            assert d.proc is not None
            d.wait_value("ollama_up", 1.0)
            proc = psutil.Process(d.proc.pid)
            samples: list[tuple[int, float]] = []
            next_mark = 1000
            start = time.monotonic()
            while next_mark <= rounds:
                done = sim.stdout_text().count('"/api/version"')
                if done >= next_mark:
                    samples.append((done, proc.memory_info().rss / 2**20))
                    next_mark += 1000
                else:
                    time.sleep(0.5)
                if time.monotonic() - start > 3600:
                    break
            elapsed = time.monotonic() - start
        finally:
            d.stop()
    finally:
        sim.stop()
    return {
        "rounds": samples[-1][0] if samples else 0,
        "seconds": round(elapsed, 1),
        "rss_mib_by_round": [(r, round(m, 1)) for r, m in samples],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=10000, help="0 skips the memory part")
    ap.add_argument("--tls", action="store_true", help="only the TLS + basic auth comparison")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        machine = (
            f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}"
        )
        print(json.dumps({"machine": machine}), flush=True)
        if args.tls:
            print(json.dumps({"tls": bench_tls(tmp, args.scrapes)}, indent=2), flush=True)
            return 0
        print(json.dumps({"scrape": bench_scrapes(tmp, args.scrapes)}, indent=2), flush=True)
        if args.rounds:
            print(json.dumps({"memory": bench_memory(tmp, args.rounds)}, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    raise SystemExit(main())
