"""The whole watchdog's CPU with its default log source, journald, under real systemd.

Not a test. Run as root on a host with systemd-nspawn and debootstrap (``make tools``)::

    .venv/bin/python benchmarks/journald.py [--rate 1000] [--seconds 20] [--project DIR]

A bookworm container boots with the stack installed as the system tests install it (the
shipped units, the stand-in ``ollama`` running our simulator, the watchdog following
``ollama.service`` through ``journalctl -o json --follow``, 10 s probes). A writer process
inside ``ollama.service``'s cgroup (started by a drop-in's ExecStartPost, so journald files
its stdout under the unit, as Ollama's own lines) waits for a go, then prints the log mix of
``benchmarks/logparse.py`` at ``--rate`` lines/s for ``--seconds``.

Measured as the CPU time (/proc, utime + stime) of every process in a unit's cgroup, so
``ollama-watchdog.service`` includes its ``journalctl`` child:

1. the watchdog at rest (probing only) over ``--seconds``;
2. the watchdog while the writer writes, and ``systemd-journald.service`` beside it;
3. that every line written was counted (``ollama_watchdog_log_lines_total``).

``--project DIR`` builds the watchdog's wheel from another checkout (e.g. a ``git worktree``
of an older commit), to compare before and after a change on the same host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "system"), str(REPO / "tests"), str(REPO / "benchmarks")]

from logparse import mix  # noqa: E402
from nspawn import Container, build_base_rootfs, build_wheelhouse  # noqa: E402
from stack import METRICS_URL, OLLAMA_UNIT, VENV, WATCHDOG_UNIT, deploy  # noqa: E402

JOURNALD = "systemd-journald.service"

WRITER = """\
import os, sys, time
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
rate, seconds = int(sys.argv[2]), float(sys.argv[3])
while not os.path.exists("/run/bench-go"):
    time.sleep(0.1)
start, i = time.monotonic(), 0
while (now := time.monotonic() - start) < seconds:
    due = int(now * rate)
    while i < due:
        sys.stdout.write(lines[i % len(lines)] + "\\n")
        i += 1
    sys.stdout.flush()
    time.sleep(0.01)
sys.stdout.write(f"bench-writer-done {i}\\n")
sys.stdout.flush()
"""

DROP_IN = f"""\
[Service]
ExecStartPost=/bin/sh -c '{VENV}/bin/python /opt/bench/writer.py /opt/bench/mix.log \
$BENCH_RATE $BENCH_SECONDS &'
"""


# utime + stime of every process in a unit's cgroup, from /proc inside the container (cgroup
# v1 hosts give a container no CPU accounting of its own); ±1 clock tick per process
UNIT_CPU = """
import os, sys
group = sys.argv[1]
for base in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
    procs = base + group + "/cgroup.procs"
    if os.path.exists(procs):
        break
by_comm = {}
for pid in open(procs).read().split():
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat.rsplit(")", 1)[1].split()
    by_comm[comm] = by_comm.get(comm, 0) + int(fields[11]) + int(fields[12])
print(" ".join(f"{k}={v / os.sysconf('SC_CLK_TCK')}" for k, v in by_comm.items()))
"""


def cpu_by_process(c: Container, unit: str) -> dict[str, float]:
    """CPU seconds used so far by the processes now in ``unit``, by process name."""
    group = c.unit_property(unit, "ControlGroup")
    out = c.run(["python3", "-c", UNIT_CPU, group]).stdout.split()
    return {k: float(v) for k, v in (item.split("=", 1) for item in out)}


def cpu_seconds(c: Container, unit: str) -> float:
    """CPU seconds used so far by the processes now in ``unit`` (its journalctl included)."""
    return sum(cpu_by_process(c, unit).values())


def metric(c: Container, name: str) -> float | None:
    status, body = c.http("GET", METRICS_URL)
    if status != 200:
        return None
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait(what: str, probe: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--project", type=Path, default=REPO)
    args = ap.parse_args()
    base = build_base_rootfs()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        wheels = build_wheelhouse(args.project, tmp / "wheels", python=sys.executable)
        c = Container.from_base(base, tmp / "session", private_network=True)
        try:
            deploy(c, wheels)
            c.write_file("/opt/bench/writer.py", WRITER)
            c.write_file("/opt/bench/mix.log", "\n".join(mix(100_000)) + "\n")
            c.write_file(f"/etc/systemd/system/{OLLAMA_UNIT}.d/bench.conf",
                         DROP_IN + f"Environment=BENCH_RATE={args.rate} "
                         f"BENCH_SECONDS={args.seconds}\n")  # fmt: skip
            c.boot()
            c.run(["systemctl", "start", OLLAMA_UNIT], timeout=120)
            c.run(["systemctl", "start", WATCHDOG_UNIT], timeout=120)
            wait("the watchdog's first log lines", lambda: (metric(c, "ollama_watchdog_log_lines_total") or 0) > 0)  # noqa: E501
            time.sleep(5)  # past start-up

            w0, t0 = cpu_seconds(c, WATCHDOG_UNIT), time.monotonic()
            time.sleep(args.seconds)
            w1, t1 = cpu_seconds(c, WATCHDOG_UNIT), time.monotonic()
            rest = (w1 - w0) / (t1 - t0)

            lines0 = metric(c, "ollama_watchdog_log_lines_total") or 0.0
            j0 = cpu_seconds(c, JOURNALD)
            w0, t0 = cpu_seconds(c, WATCHDOG_UNIT), time.monotonic()
            p0 = cpu_by_process(c, WATCHDOG_UNIT)
            c.run(["touch", "/run/bench-go"])

            def done() -> bool:
                return "bench-writer-done" in c.journal(unit=OLLAMA_UNIT)

            wait("the writer to finish", done, timeout=args.seconds + 120)
            w1, t1 = cpu_seconds(c, WATCHDOG_UNIT), time.monotonic()
            p1 = cpu_by_process(c, WATCHDOG_UNIT)
            j1 = cpu_seconds(c, JOURNALD)
            journal = c.journal(unit=OLLAMA_UNIT)
            written = int(journal.split("bench-writer-done ", 1)[1].split()[0])
            # every written line, the done line and a few probe lines at most
            wait("every line counted", lambda: (metric(c, "ollama_watchdog_log_lines_total")
                                                or 0) - lines0 >= written + 1)  # fmt: skip
            counted = (metric(c, "ollama_watchdog_log_lines_total") or 0) - lines0
        finally:
            c.destroy()
    busy = (w1 - w0) / (t1 - t0)
    journald = (j1 - j0) / (t1 - t0)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs",
        "project": str(args.project),
        "watchdog_at_rest_percent_of_a_core": round(100 * rest, 2),
        "lines_written": written,
        "lines_counted": counted,
        "window_seconds": round(t1 - t0, 1),
        "watchdog_with_journalctl_percent_of_a_core": round(100 * busy, 2),
        "by_process_percent_of_a_core": {
            name: round(100 * (p1[name] - p0.get(name, 0.0)) / (t1 - t0), 2) for name in p1
        },
        "systemd_journald_percent_of_a_core": round(100 * journald, 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
