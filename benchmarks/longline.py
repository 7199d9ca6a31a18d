"""CPU and memory the file follower spends on one unterminated line of 100 MB.

Not a test: a measurement for ``benchmarks/README.md`` (issue 18, item 6). A child process
follows a log file with the logs collector; this process appends a line of ``--mb`` MB without
a newline, then the newline and one gin request line, and the child reports, once that request
is counted, the CPU seconds it spent (user + system, all threads) since the line began and its
peak RSS (``ru_maxrss``) against its RSS before.

``--baseline DIR`` runs the same child with ``DIR`` (an older ``src``, e.g. from
``git archive <commit> src``) first on ``sys.path`` as well, and prints both side by side.

    python benchmarks/longline.py [--mb 100] [--baseline /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from ollama_watchdog.collectors.logs import LogsCollector

path = Path(sys.argv[1])
collector = LogsCollector("file", str(path), poll_interval=0.05)
collector.start()
while collector.follower.problem is not None:
    time.sleep(0.01)
time.sleep(0.2)

def requests() -> float:
    for family in collector.counters.families():
        if family.name == "ollama_http_requests":
            return sum(s.value for s in family.samples)
    return 0.0

def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu_before = cpu()
print("ready", flush=True)
while requests() < 1:
    time.sleep(0.01)
spent = cpu() - cpu_before
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
collector.stop()
print(json.dumps({
    "cpu_s": round(spent, 2),
    "peak_rss_mib": round(rss_after / 1024, 1),
    "rss_before_mib": round(rss_before / 1024, 1),
}), flush=True)
"""

GIN = '[GIN] 2026/01/20 - 23:15:46 | 200 |      1.2ms |       127.0.0.1 | GET      "/api/ps"\n'


def run(src: str | None, mb: int, work: Path) -> dict[str, Any]:
    log = work / "ollama.log"
    log.write_bytes(b"")
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    block = b"x" * (1 << 20)
    with log.open("ab") as f:
        for _ in range(mb):  # written as a writer would: a MiB at a time, no newline
            f.write(block)
            f.flush()
        f.write(b"\n" + GIN.encode())
    result: dict[str, Any] = json.loads(child.stdout.readline())
    result["wall_s"] = round(time.monotonic() - started, 2)
    child.wait(timeout=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--baseline", help="an older src directory to run as 'before'")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        if args.baseline:
            rows.append(("before", run(args.baseline, args.mb, Path(tmp))))
        rows.append(("after", run(None, args.mb, Path(tmp))))
    print(f"| {args.mb} MB line | CPU s | peak RSS MiB | RSS before MiB | wall s |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['cpu_s']} | {r['peak_rss_mib']} | {r['rss_before_mib']} | "
              f"{r['wall_s']} |")  # fmt: skip


if __name__ == "__main__":
    main()
