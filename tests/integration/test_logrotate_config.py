"""logrotate/ollama and logrotate/ollama-watchdog, run by the real ``logrotate`` binary.

The configs are rendered with the log directory moved into a temp dir and rotated with a temp
state file. The writer is a child process whose stdout is the log file opened with O_APPEND,
exactly what systemd's ``StandardOutput=append:`` hands Ollama; it never reopens the file, like
Ollama. The tests show what an operator would check by hand: the old lines are in the rotated
file, the writer's next line is at the start of the live file (no hole, no lost process), and
older generations are compressed.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tools import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "ollama": ("/var/log/ollama/", "ollama.log"),
    "ollama-watchdog": ("/var/log/ollama-watchdog/", "watchdog.log"),
}
NOBODY = 65534

# Echo stdin to stdout line by line, flushing each: a long-lived writer that never reopens.
WRITER = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"


def logrotate(conf: Path, state: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("logrotate")
    return subprocess.run(
        [binary, *flags, "-s", str(state), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def render(name: str, tmp_path: Path) -> tuple[Path, Path]:
    """The shipped config with its log dir moved under tmp_path; returns (config, log file)."""
    shipped_dir, log_name = CONFIGS[name]
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    if os.geteuid() == 0:
        # As systemd's LogsDirectory= leaves it: owned by the service user, 0755. logrotate
        # must accept that without a `su` line.
        os.chown(log_dir, NOBODY, NOBODY)
    log_dir.chmod(0o755)
    conf = tmp_path / name
    conf.write_text((REPO / "logrotate" / name).read_text().replace(shipped_dir, f"{log_dir}/"))
    return conf, log_dir / log_name


class AppendWriter:
    """A child process writing to the log through an O_APPEND fd it never reopens."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:  # "a" is O_APPEND, like systemd's append:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=out, text=True
            )

    def write(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + 30
        while line not in self.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, f"writer never wrote {line!r}"
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def writer_factory() -> Iterator[list[AppendWriter]]:
    writers: list[AppendWriter] = []
    yield writers
    for writer in writers:
        writer.close()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_config_parses_without_errors(name: str, tmp_path: Path) -> None:
    # -d: dry run; the shipped file as is, with its real /var/log paths.
    result = logrotate(REPO / "logrotate" / name, tmp_path / "state", "-d")
    assert result.returncode == 0, result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_copytruncate_keeps_a_writer_that_never_reopens(
    name: str, tmp_path: Path, writer_factory: list[AppendWriter]
) -> None:
    conf, log = render(name, tmp_path)
    state = tmp_path / "state"
    writer = AppendWriter(log)
    writer_factory.append(writer)
    for n in range(3):
        writer.write(f"[GIN] before rotation {n}")
    before = log.read_text()

    first = logrotate(conf, state, "-f")
    assert first.returncode == 0, first.stderr
    assert Path(f"{log}.1").read_text() == before
    assert log.stat().st_size == 0

    writer.write("[GIN] after rotation")
    # O_APPEND: the write lands at the new end (0), not at the writer's old offset, which
    # would leave a run of NUL bytes in front of it.
    assert log.read_bytes() == b"[GIN] after rotation\n"
    assert writer.proc.poll() is None, "rotation must not stop the writer"

    second = logrotate(conf, state, "-f")
    assert second.returncode == 0, second.stderr
    assert Path(f"{log}.1").read_text() == "[GIN] after rotation\n"
    # delaycompress: the generation before the last one is gzipped.
    assert gzip.decompress(Path(f"{log}.2.gz").read_bytes()).decode() == before


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_empty_log_is_left_alone(name: str, tmp_path: Path) -> None:
    conf, log = render(name, tmp_path)
    log.touch()
    result = logrotate(conf, tmp_path / "state", "-f")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in log.parent.iterdir()) == [log.name]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_never_reloads_or_restarts_a_service(name: str) -> None:
    # ollama.service has no ExecReload, and a restart drops every loaded model.
    directives = [
        line.strip()
        for line in (REPO / "logrotate" / name).read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert "copytruncate" in directives
    assert not any(d.startswith(("postrotate", "prerotate", "firstaction")) for d in directives)
