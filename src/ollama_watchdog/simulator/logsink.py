"""Where the simulator's log lines go: stdout/stderr like ``ollama serve``, or one file.

With a log file both streams are interleaved into it (as journald would hold them), appended,
and the file is reopened when logrotate moves it away (inode check on every write) or on
SIGHUP (``reopen()``), so rotation tests see no line lost or written to the old file.
"""

from __future__ import annotations

import os
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import TextIO

from ollama_watchdog.simulator.logformat import format_gin_line, format_slog_line


class LogSink:
    """Thread-safe line writer for the gin stream (stdout) and the slog stream (stderr)."""

    def __init__(self, log_file: Path | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._path = log_file
        self._stdout = stdout or sys.stdout
        self._stderr = stderr or sys.stderr
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        if log_file is not None:
            with self._lock:
                self._open()

    def _open(self) -> None:
        assert self._path is not None
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(self._fd)
        self._inode = (st.st_dev, st.st_ino)

    def _rotated(self) -> bool:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._inode

    def reopen(self) -> None:
        """Reopen the log file (SIGHUP); a no-op without one."""
        if self._path is not None:
            with self._lock:
                self._open()

    def _write(self, text: str, stream: TextIO) -> None:
        with self._lock:
            if self._path is None:
                stream.write(text)
                stream.flush()
                return
            if self._rotated():
                self._open()
            assert self._fd is not None
            data = text.encode("utf-8")
            while data:
                written = os.write(self._fd, data)
                data = data[written:]

    def gin(self, when: datetime, status: int, latency: float, client_ip: str,
            method: str, path: str) -> None:
        """A request line on stdout."""
        line = format_gin_line(when, status, latency, client_ip, method, path)
        self._write(line + "\n", self._stdout)

    def slog(self, level: str, source: str, msg: str, *attrs: tuple[str, object]) -> None:
        """An slog line on stderr, stamped now in local time."""
        line = format_slog_line(datetime.now().astimezone(), level, source, msg, attrs)
        self._write(line + "\n", self._stderr)

    def raw(self, text: str) -> None:
        """Runner output passed through unchanged on stderr (a newline is added if missing)."""
        if not text:
            return
        self._write(text if text.endswith("\n") else text + "\n", self._stderr)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
