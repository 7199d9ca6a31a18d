"""The file follower under real logrotate runs, in both rotation modes, while a writer writes.

Debian's ``logrotate`` rotates a temp file three times (``--force``, a temp state file) while a
writer thread appends gin request lines; at the end the follower must have counted every line
exactly once: ``ollama_http_requests_total`` equals the number of lines written, and nothing
was read as a broken line.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from support.tools import require_tool
from support.wait import wait_until

from ollama_watchdog.collectors.logs import LogsCollector

pytestmark = pytest.mark.integration

LINE = '[GIN] 2026/01/20 - 23:15:46 | 200 | {n:>11}µs |       127.0.0.1 | POST     "/api/chat"\n'
TOTAL = 3000
ROTATIONS = 3


class Writer(threading.Thread):
    """Appends TOTAL numbered gin lines, a few at a time, like a busy Ollama."""

    def __init__(self, path: Path, mode: Literal["create", "copytruncate"]) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.mode = mode
        # copytruncate: logrotate itself loses lines written between its copy and its truncate
        # (its documented window); the test holds this lock while logrotate runs so that every
        # line lands in a file and the count can be exact.
        self.lock = threading.Lock()
        self.reopen = threading.Event()  # create mode: the "postrotate" signal to reopen
        self.written = 0

    def run(self) -> None:
        f = self.path.open("a", encoding="utf-8", buffering=1)
        try:
            for n in range(TOTAL):
                if self.reopen.is_set():
                    self.reopen.clear()
                    f.close()
                    f = self.path.open("a", encoding="utf-8", buffering=1)
                with self.lock:
                    f.write(LINE.format(n=n))
                    self.written += 1
                if n % 10 == 9:
                    time.sleep(0.005)
        finally:
            f.close()


def logrotate(conf: Path, state: Path) -> None:
    tool = require_tool("logrotate")
    done = subprocess.run(
        [tool, "--force", "--state", str(state), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


class Adapter:
    def __init__(self, collect: Callable[[], list[Metric]]) -> None:
        self.collect = collect

    def describe(self) -> list[Metric]:
        return []


@pytest.mark.parametrize("mode", ["create", "copytruncate"])
def test_rotation_loses_and_repeats_nothing(
    tmp_path: Path, mode: Literal["create", "copytruncate"]
) -> None:
    require_tool("logrotate")
    path = tmp_path / "ollama.log"
    path.touch()
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{path} {{\n    rotate 10\n    {mode}\n    nocompress\n    missingok\n}}\n")
    state = tmp_path / "logrotate.state"

    collector = LogsCollector("file", str(path), poll_interval=0.2)
    registry = CollectorRegistry()
    registry.register(Adapter(lambda: list(collector.counters.families())))

    def counted() -> float:
        return (
            registry.get_sample_value(
                "ollama_http_requests_total",
                {"method": "POST", "route": "/api/chat", "code": "200"},
            )
            or 0.0
        )

    collector.start()
    writer = Writer(path, mode)
    try:
        deadline = time.monotonic() + 30
        while collector.follower is not None and collector.follower.problem is not None:
            assert time.monotonic() < deadline, "the follower never opened the file"
            time.sleep(0.02)
        writer.start()
        for i in range(ROTATIONS):
            # rotate at spread-out points of the stream, with the writer mid-flight
            while writer.written < (i + 1) * TOTAL // (ROTATIONS + 1):
                assert writer.is_alive(), "writer stopped early"
                time.sleep(0.01)
            if mode == "copytruncate":
                with writer.lock:
                    logrotate(conf, state)
            else:
                logrotate(conf, state)
                writer.reopen.set()
        writer.join(timeout=120)
        assert not writer.is_alive()
        assert writer.written == TOTAL

        deadline = time.monotonic() + 60
        while counted() < TOTAL and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(3 * 0.2)  # a few more polls: a line read twice would show up now
        assert counted() == TOTAL
        assert registry.get_sample_value("ollama_watchdog_log_lines_unparsed_total") == 0
        assert registry.get_sample_value("ollama_watchdog_log_lines_total") == TOTAL
        # logrotate really rotated, and the files hold every line once
        rotated = sorted(tmp_path.glob("ollama.log.*"))
        assert len(rotated) == ROTATIONS
        assert sum(len(p.read_text().splitlines()) for p in [path, *rotated]) == TOTAL
    finally:
        collector.stop()
        writer.join(timeout=30)


def test_copytruncate_refilled_with_identical_lines_loses_nothing(tmp_path: Path) -> None:
    """The follower read 15 lines; logrotate copies and truncates; 17 lines identical to the
    first ones are written before the follower looks again. Size and bytes before the old
    offset then look like plain growth (15 of the 17 were lost); the copy shows the rotation."""
    tool = require_tool("logrotate")
    path = tmp_path / "ollama.log"
    path.touch()
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"{path} {{\n    rotate 5\n    copytruncate\n    nocompress\n}}\n")
    line = LINE.format(n=7)
    collector = LogsCollector("file", str(path), poll_interval=1.0)
    registry = CollectorRegistry()
    registry.register(Adapter(lambda: list(collector.counters.families())))

    def counted() -> float:
        return registry.get_sample_value("ollama_watchdog_log_lines_total") or 0.0

    collector.start()
    try:
        follower = collector.follower
        assert follower is not None
        wait_until(lambda: follower.problem is None, "the follower to open the file")
        with path.open("a", encoding="utf-8") as f:
            f.write(line * 15)
        wait_until(lambda: counted() == 15, "the first 15 lines", interval=0.01)
        # right after a poll: rotate and refill well within the poll interval
        subprocess.run(
            [tool, "--force", "--state", str(tmp_path / "state"), str(conf)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        with path.open("a", encoding="utf-8") as f:
            f.write(line * 17)
        assert (tmp_path / "ollama.log.1").read_text() == line * 15  # logrotate's copy
        wait_until(lambda: counted() >= 32, "every line, the 17 after the rotation too")
        time.sleep(3 * 1.0)  # a few more polls: a line read twice would show up now
        assert counted() == 32
    finally:
        collector.stop()
