"""Detection to restart (issue 3's benchmark; run on demand, not a test).

For each trial: a fresh simulator under the demo's supervisor and a daemon with the watchdog on;
once Ollama is healthy and the start-up grace is over, the simulator is hung through its
control port and the time until the restart command runs is measured (the command appends a
timestamp to a file before it restarts the simulator). The floor is
``failure_threshold x interval + timeout``: the latest the last needed probe can end when the
hang begins right after a successful probe. The hang starts at a random (seeded) phase of the
probe cadence. Reported: the excess over that floor per trial, its median and max.

    python benchmarks/detection.py [--trials 20] [--interval 1] [--timeout 0.5] [--threshold 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import DaemonProcess, quick_config  # noqa: E402
from support.tools import free_port  # noqa: E402

from ollama_watchdog.commands.demo import SimulatorSupervisor  # noqa: E402


def trial(tmp: Path, interval: float, timeout: float, threshold: int) -> float:
    work = tmp / "sup"
    work.mkdir(parents=True)
    marks = tmp / "restart-times"
    sup = SimulatorSupervisor(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", work)
    grace = 1.0
    cfg = quick_config(
        f"http://{sup.listen}",
        tmp,
        ollama={"timeout": f"{int(timeout * 1000)}ms"},
        probe={"interval": f"{int(interval * 1000)}ms"},
        watchdog={
            "enabled": True,
            "failure_threshold": threshold,
            "startup_grace": f"{int(grace * 1000)}ms",
            "backoff_initial": "1s",
            "restart_command": [
                "sh",
                "-c",
                f'python3 -c "import time; print(time.time())" >> {marks}; '
                f'kill -TERM "$(cat {sup.pidfile})"',
            ],
        },
    )
    sup.start()
    try:
        with DaemonProcess(cfg, tmp) as d:
            d.wait_value("ollama_up", 1.0)
            # the hang starts at a random phase of the probe cadence, as a real one would
            time.sleep(grace + interval + random.uniform(0, interval))
            control = f"http://{sup.control}/fault"
            t0 = time.time()
            requests.post(control, json={"fault": "hang"}, timeout=5).raise_for_status()
            deadline = time.monotonic() + 60
            # the shell creates the file before the timestamp is in it
            while time.monotonic() < deadline and not (
                marks.exists() and marks.read_text().endswith("\n")
            ):
                time.sleep(0.01)
            fired = float(marks.read_text().split()[0])
    finally:
        sup.stop()
    return fired - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=0.5)
    ap.add_argument("--threshold", type=int, default=3)
    args = ap.parse_args()
    random.seed(20261125)
    floor = args.threshold * args.interval + args.timeout
    times = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as t:
            times.append(trial(Path(t), args.interval, args.timeout, args.threshold))
        print(f"trial {i + 1}: {times[-1]:.3f} s", file=sys.stderr)
    excess = [t - floor for t in times]
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, "
                f"Python {platform.python_version()}",
                "interval_s": args.interval,
                "timeout_s": args.timeout,
                "failure_threshold": args.threshold,
                "floor_s": floor,
                "detection_s": [round(t, 3) for t in times],
                "median_detection_s": round(statistics.median(times), 3),
                "median_excess_s": round(statistics.median(excess), 3),
                "max_excess_s": round(max(excess), 3),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
