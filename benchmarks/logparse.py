"""Log-parsing throughput: our parser vs ollama-mtop's, and the whole file pipeline.

Not a test. Run: ``.venv/bin/python benchmarks/logparse.py [--lines 1000000]`` (needs
``pip install ollama-mtop`` for the peer column; it is not a dependency of ours).

1. Parser lines/s on a realistic mix (below), ours (``parse_line``: requests, slog levels and
   runner errors, the runner's own failure lines, token timings) next to ollama-mtop's
   ``strip_ansi`` + ``split_line`` +
   ``parse_gin`` (requests only), same lines, same process, best of 3. Two ways:
   *consumed*: each result is dropped once made, as both tools use their parser (our
   collector counts a batch of events and drops them); *kept*: all results kept in one list
   (this benchmark's first harness). Keeping a million results measures the garbage
   collector as well: our events are NamedTuples, which CPython's collector never untracks
   (it untracks exact tuples and dicts only), so every one stays in the full collections
   that a growing heap triggers, while the peer's dicts are untracked at once.
2. The same on gin lines only (the one job both tools do).
3. The whole file pipeline: ``LogsCollector("file")`` reading a file of the mix into counters.
4. Our process's CPU while a separate writer process appends 1 000 lines/s for 20 s.
5. The whole daemon (``ollama-watchdog run``, its own process, default 10 s probes against the
   simulator, logs from a file) at rest and then while the writer appends 1 000 lines/s:
   its CPU from /proc, all threads.
6. With ``--baseline SRC``, only this: another copy of the parser (``SRC``: a logparse.py or
   a ``src`` tree, e.g. ``git archive <commit> src`` unpacked), ours and the peer timed turn
   about in one process, round after round, on gin lines and on the mix; the ratios are per
   round (median, and best against best), so a busy neighbour slows all three alike.
7. With ``--per-kind``, only this: ns per line for each kind of line, ours and the peer's
   (where the time goes).
8. With ``--journald``, only this: the journald pipeline on real parts. Debian's
   ``systemd-journal-remote`` writes the mix (200 000 lines) into a journal file as entries of
   ``ollama.service``'s stdout, with the fields journald gives such an entry; our
   ``LogsCollector("journald")`` follows it through the real ``journalctl -D`` from a cursor
   before the first line, and catches up. Reported: lines/s, our process's CPU and
   journalctl's CPU per line, and the CPU that means at 1 000 lines/s (derived: per-line cost
   times 1 000; the steady state under real journald is ``benchmarks/journald.py``).

The mix is drawn (seeded) from pools of real lines: real-logs.txt's gin and slog lines (with
their journald/docker prefixes) and llama-server's per-request output (FACTS.md §2.7). Shares:
35 % gin, 20 % slog, 35 % llama-server slot/timing lines, 10 % other runner output - a busy
v0.30+ server logs a few llama-server lines per completion next to each request line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from ollama_watchdog.collectors.logs import LogsCollector
from ollama_watchdog.ollama.logparse import parse_line

# the tests' support package: the daemon runner and journald entries
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.journal import export_entry, stdout_entry_fields

REAL_LOGS = Path("/work/shared/ollama/real-logs.txt")

LLAMA_SERVER = [
    "slot   operator(): id  0 | task 0 | new prompt, n_ctx_slot = 131072, n_keep = 4, task.n_tokens = 14892",  # noqa: E501
    "slot update_slots: id  0 | task 160 | prompt processing, n_tokens =   1536, progress = 0.10, t =   3.42 s / 448.61 tokens per second",  # noqa: E501
    "slot print_timing: id  0 | task 160 | prompt eval time =     751.87 ms /    25 tokens (   30.07 ms per token,    33.25 tokens per second)",  # noqa: E501
    "slot print_timing: id  0 | task 160 |        eval time =    5729.20 ms /    96 tokens (   60.31 ms per token,    16.58 tokens per second)",  # noqa: E501
    "slot print_timing: id  0 | task 160 |       total time =    6481.07 ms /   121 tokens",
    "slot print_timing: id  0 | task 160 |    graphs reused =         95",
    "slot      release: id  0 | task 160 | stop processing: n_tokens = 121, truncated = 0",
    "srv  update_slots: all slots are idle",
]
OTHER = [
    "llm_load_print_meta: max token length = 256",
    "load_tensors: loading model tensors, this can take a while... (mmap = false)",
    "ggml_cuda_init: found 1 CUDA devices:",
    "  Device 0: NVIDIA GeForce RTX 4090, compute capability 8.9, VMM: yes",
    "print_info: file type   = Q4_K - Medium",
]


def pools() -> tuple[list[str], list[str]]:
    gin, slog = [], []
    for line in REAL_LOGS.read_text(encoding="utf-8").splitlines():
        if "[GIN] " in line:
            gin.append(line)
        elif "level=" in line and not line.startswith(("source:", "context:")):
            slog.append(line)
    return gin, slog


def mix(n: int, seed: int = 42) -> list[str]:
    gin, slog = pools()
    rnd = random.Random(seed)
    kinds = rnd.choices([gin, slog, LLAMA_SERVER, OTHER], weights=[35, 20, 35, 10], k=n)
    return [rnd.choice(k) for k in kinds]


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def ours(lines: list[str], keep: bool) -> Callable[[], object]:
    p = parse_line

    def kept() -> object:
        return [p(x) for x in lines]

    def consumed() -> object:
        for x in lines:
            p(x)
        return None

    return kept if keep else consumed


def peer(lines: list[str], keep: bool) -> Callable[[], object] | None:
    try:
        from mtop.logs import parse_gin, split_line, strip_ansi  # type: ignore[import-untyped]
    except ImportError:
        return None

    def kept() -> object:
        return [parse_gin(split_line(strip_ansi(x))[1]) for x in lines]

    def consumed() -> object:
        for x in lines:
            parse_gin(split_line(strip_ansi(x))[1])
        return None

    return kept if keep else consumed


def parser_rates(label: str, lines: list[str], keep: bool) -> None:
    label = f"{label}, results {'kept in a list' if keep else 'consumed'}"
    n = len(lines)
    ours_s = best_of(ours(lines, keep))
    peer_fn = peer(lines, keep)
    peer_s = best_of(peer_fn) if peer_fn else None
    ours_rate = n / ours_s
    if peer_s is None:
        print(f"| {label} | {n} | {ours_rate:,.0f} | (ollama-mtop not installed) | |")
    else:
        peer_rate = n / peer_s
        ratio = ours_rate / peer_rate
        print(f"| {label} | {n} | {ours_rate:,.0f} | {peer_rate:,.0f} | {ratio:.2f}x |")


def per_kind(n: int = 300_000, runs: int = 5) -> None:
    """ns per line by kind of line, consumed, best of ``runs`` (where the time goes)."""
    lines = mix(n)
    kinds = {
        "all (mix)": lines,
        "gin": [x for x in lines if "[GIN] " in x],
        "slog": [x for x in lines if "[GIN] " not in x and "level=" in x],
        "llama-server": [x for x in lines if x in LLAMA_SERVER],
        "llama-server timing lines only": [x for x in lines if x in LLAMA_SERVER[2:5]],
        "other runner output": [x for x in lines if x in OTHER],
    }
    print("\n| lines | share of the mix | ours (ns/line) | ollama-mtop (ns/line) |")
    print("|---|---|---|---|")
    for name, some in kinds.items():
        ours_ns = best_of(ours(some, keep=False), runs) / len(some) * 1e9
        peer_fn = peer(some, keep=False)
        peer_ns = best_of(peer_fn, runs) / len(some) * 1e9 if peer_fn else float("nan")
        share = 100 * len(some) / len(lines)
        print(f"| {name} | {share:.0f} % | {ours_ns:.0f} | {peer_ns:.0f} |")


def _parse_line_from(path: Path) -> Callable[[str], object]:
    """``parse_line`` of another copy of logparse.py (a file, or a ``src`` tree holding one)."""
    import importlib.util

    if path.is_dir():
        path = path / "ollama_watchdog" / "ollama" / "logparse.py"
    spec = importlib.util.spec_from_file_location("baseline_logparse", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass-free NamedTuples still want a module
    spec.loader.exec_module(module)
    fn: Callable[[str], object] = module.parse_line
    return fn


def interleaved(baseline: Path, n: int, rounds: int) -> None:
    """Baseline, ours and the peer on the same lines, turn about in one process.

    On a shared machine the load changes within minutes; runs of the script minutes apart
    differ by more than a parser change. Here each round times all three back to back, and
    the ratios are taken per round (median and best over the rounds).
    """
    import statistics

    before = _parse_line_from(baseline)
    lines = mix(n)
    sets = {"gin lines only": [x for x in lines if "[GIN] " in x], "realistic mix": lines}
    peer_parse = _peer_parse()
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}; "
          f"baseline {baseline}; {rounds} rounds")  # fmt: skip
    print("\n| lines, results | baseline (lines/s) | ours (lines/s) | ollama-mtop (lines/s) "
          "| baseline / peer | ours / peer | ours / baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for keep in (False, True):
        for name, some in sets.items():
            fns = {"before": before, "ours": parse_line, "peer": peer_parse}
            rates: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(rounds):
                for key, fn in fns.items():
                    if fn is None:
                        continue
                    t0 = time.perf_counter()
                    if keep:
                        kept = [fn(x) for x in some]
                        del kept
                    else:
                        for x in some:
                            fn(x)
                    rates[key].append(len(some) / (time.perf_counter() - t0))
            med = {k: statistics.median(v) for k, v in rates.items() if v}

            def ratio(a: str, b: str, rates: dict[str, list[float]] = rates) -> str:
                if not rates[a] or not rates[b]:
                    return "-"
                per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
                best = max(rates[a]) / max(rates[b])
                return f"{statistics.median(per_round):.2f}x (best {best:.2f}x)"

            peer_col = f"{med['peer']:,.0f}" if "peer" in med else "(not installed)"
            print(f"| {name}, {'kept in a list' if keep else 'consumed'} ({len(some)}) "
                  f"| {med['before']:,.0f} | {med['ours']:,.0f} | {peer_col} "
                  f"| {ratio('before', 'peer')} | {ratio('ours', 'peer')} "
                  f"| {ratio('ours', 'before')} |")  # fmt: skip
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


def _peer_parse() -> Callable[[str], object] | None:
    try:
        from mtop.logs import parse_gin, split_line, strip_ansi
    except ImportError:
        return None

    def parse(x: str) -> object:
        return parse_gin(split_line(strip_ansi(x))[1])

    return parse


JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")


def journal_entry(seq: int, message: str) -> bytes:
    """One entry in journald's export format, as journald stores a service's stdout line."""
    return export_entry(stdout_entry_fields(seq, message))


def _cpu_of(pid: int) -> float:
    """utime + stime of a live process, seconds (proc(5))."""
    return _cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def journald_pipeline(lines: list[str]) -> None:
    import shutil

    if not JOURNAL_REMOTE.exists() or shutil.which("journalctl") is None:
        print("| journald pipeline | | (needs systemd-journal-remote and journalctl) | | |")
        return
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "journal").mkdir()
        export = tmp / "export"
        with export.open("wb") as f:
            f.write(journal_entry(0, "before the benchmark"))
            for seq, line in enumerate(lines, 1):
                f.write(journal_entry(seq, line))
        subprocess.run(
            [str(JOURNAL_REMOTE), "-o", str(tmp / "journal" / "system.journal"), str(export)],
            check=True, capture_output=True, timeout=600,
        )  # fmt: skip
        command = ("journalctl", "-D", str(tmp / "journal"))
        # the first entry's cursor: the follower starts right after it and catches up
        head = subprocess.Popen(
            [*command, "--unit=ollama.service", "--output=json", "--no-pager"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert head.stdout is not None
        first = json.loads(head.stdout.readline())["__CURSOR"]
        head.kill()
        head.wait(timeout=60)
        state = tmp / "state"
        state.mkdir()
        (state / "journal-cursor-ollama.service").write_text(first + "\n")
        collector = LogsCollector("journald", state_dir=state, journalctl=command)
        me = psutil.Process()
        cpu0, t0 = time.process_time(), time.perf_counter()
        collector.start()
        journalctl_cpu = 0.0
        try:
            while collector.counters.lines < len(lines):
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error, OSError):
                        if child.name() == "journalctl":
                            journalctl_cpu = _cpu_of(child.pid)
                time.sleep(0.05)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            collector.stop()
    n = len(lines)
    print(
        f"| journald pipeline (real journalctl -D, catching up) | {n} "
        f"| {n / wall:,.0f} lines/s wall | ours {cpu:.2f} s CPU ({1e6 * cpu / n:.1f} µs/line), "
        f"journalctl {journalctl_cpu:.2f} s ({1e6 * journalctl_cpu / n:.1f} µs/line) "
        f"| at 1000 lines/s: ours {0.1 * 1e6 * cpu / n:.2f} %, journalctl "
        f"{0.1 * 1e6 * journalctl_cpu / n:.2f} % of a core |"
    )


def requests_total(collector: LogsCollector) -> float:
    return float(collector.counters.lines)


def pipeline(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mix.log"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        path = Path(tmp) / "ollama.log"
        collector = LogsCollector("file", str(path), poll_interval=0.05)
        collector.start()  # the file does not exist yet: it is waited for, then read whole
        try:
            time.sleep(0.2)
            cpu0, t0 = time.process_time(), time.perf_counter()
            os.rename(src, path)
            while collector.counters.lines < len(lines):
                time.sleep(0.01)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        finally:
            collector.stop()
    print(
        f"| file pipeline (LogsCollector, file appears whole) | {len(lines)} "
        f"| {len(lines) / wall:,.0f} lines/s wall | {cpu:.2f} s CPU | |"
    )


WRITER = """
import sys, time
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
rate, seconds = int(sys.argv[3]), float(sys.argv[4])
with open(sys.argv[2], "a", encoding="utf-8") as f:
    start, i = time.monotonic(), 0
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate)
        while i < due:
            f.write(lines[i % len(lines)] + "\\n"); i += 1
        f.flush()
        time.sleep(0.01)
print(i)
"""


def steady_cpu(lines: list[str], rate: int = 1000, seconds: float = 20.0) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "mix.log"
        src.write_text("\n".join(lines[:100_000]) + "\n", encoding="utf-8")
        path = Path(tmp) / "ollama.log"
        path.touch()
        collector = LogsCollector("file", str(path))  # the daemon's default poll interval
        collector.start()
        try:
            time.sleep(0.5)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            writer = subprocess.run(
                [sys.executable, "-c", WRITER, str(src), str(path), str(rate), str(seconds)],
                capture_output=True, text=True, timeout=seconds + 60, check=True,
            )  # fmt: skip
            written = int(writer.stdout)
            while collector.counters.lines < written:
                time.sleep(0.01)
            r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - t0
        finally:
            collector.stop()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(
        f"| steady {rate} lines/s for {seconds:.0f} s (writer in another process) | {written} "
        f"| {100 * cpu / wall:.2f} % of one core | {cpu:.3f} s CPU / {wall:.1f} s | |"
    )


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, all threads, in clock ticks (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def daemon_cpu(lines: list[str], rate: int = 1000, seconds: float = 20.0) -> None:
    from support.daemon import DaemonProcess, quick_config
    from support.tools import free_port

    from ollama_watchdog.commands.demo import SimulatorSupervisor

    tick = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        src, log = tmp / "mix.log", tmp / "ollama.log"
        src.write_text("\n".join(lines[:100_000]) + "\n", encoding="utf-8")
        log.touch()
        sup = SimulatorSupervisor(
            f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", tmp / "sim"
        )
        (tmp / "sim").mkdir()
        sup.start()
        try:
            cfg = quick_config(
                f"http://{sup.listen}", tmp,
                probe={"interval": "10s"},  # the default
                logs={"source": "file", "path": str(log)},
            )  # fmt: skip
            with DaemonProcess(cfg, tmp) as daemon:
                assert daemon.proc is not None
                pid = daemon.proc.pid
                daemon.wait_value("ollama_up", 1.0)
                c0, t0 = _cpu_ticks(pid), time.perf_counter()
                time.sleep(seconds)
                c1, t1 = _cpu_ticks(pid), time.perf_counter()
                writer = subprocess.run(
                    [sys.executable, "-c", WRITER, str(src), str(log), str(rate), str(seconds)],
                    capture_output=True, text=True, timeout=seconds + 60, check=True,
                )  # fmt: skip
                c2, t2 = _cpu_ticks(pid), time.perf_counter()
                written = int(writer.stdout)
                # outside the window: the scrapes of this wait cost the daemon CPU too
                seen = daemon.wait_value("ollama_watchdog_log_lines_total", written, timeout=60)
        finally:
            sup.stop()
    idle = (c1 - c0) / tick / (t1 - t0)
    busy = (c2 - c1) / tick / (t2 - t1)
    print(
        f"| whole daemon at rest (10 s probes, simulator) | | {100 * idle:.2f} % of one core "
        f"| {(c1 - c0) / tick:.2f} s CPU / {t1 - t0:.1f} s | |"
    )
    print(
        f"| whole daemon, writer appends {rate} lines/s for {seconds:.0f} s | {written} "
        f"({seen:.0f} counted) | {100 * busy:.2f} % of one core "
        f"| {(c2 - c1) / tick:.2f} s CPU / {t2 - t1:.1f} s | |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--steady-seconds", type=float, default=20.0)
    ap.add_argument(
        "--per-kind", action="store_true", help="only the ns per line of each kind of line"
    )
    ap.add_argument(
        "--journald", action="store_true", help="only the journald pipeline (real journalctl)"
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="only this: another logparse.py (or a src tree) against ours and the peer, "
        "interleaved in one process",
    )
    ap.add_argument("--rounds", type=int, default=9, help="rounds for --baseline")
    args = ap.parse_args()
    if args.baseline:
        interleaved(args.baseline, min(args.lines, 300_000), args.rounds)
        return
    if args.per_kind:
        per_kind()
        return
    if args.journald:
        journald_pipeline(mix(200_000))
        return
    lines = mix(args.lines)
    gin = [x for x in lines if "[GIN] " in x]
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n| run | lines | ours (lines/s) | ollama-mtop (lines/s) | ours / peer |")
    print("|---|---|---|---|---|")
    for keep in (False, True):
        parser_rates("parser, realistic mix", lines, keep)
        parser_rates("parser, gin lines only", gin, keep)
    pipeline(lines)
    steady_cpu(lines, seconds=args.steady_seconds)
    daemon_cpu(lines, seconds=args.steady_seconds)
    # the machine may be shared: say how busy it was
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
