"""What the healing side can do to Ollama; today one action: restart the server.

An action runs a command and reports a :class:`RestartResult`; it never raises and never
decides anything (that is ``healing.policy``). It blocks for up to ``restart_timeout``, so
``healing.watchdog`` runs it on a worker thread of its own.
"""

from __future__ import annotations

import enum
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Final

import structlog

from ollama_watchdog.config import WatchdogConfig, human_duration
from ollama_watchdog.procgroup import stop_process_group


class ErrorClass(enum.StrEnum):
    """Why a restart command failed: a small fixed set, logged as ``error_class``."""

    EXIT_STATUS = "exit_status"
    TIMEOUT = "timeout"
    NOT_FOUND = "not_found"
    PERMISSION = "permission"
    OS_ERROR = "os_error"


#: bytes of the command's stderr kept (the tail: systemctl's reason is at the end)
STDERR_LIMIT: Final = 2048
#: after killing a timed-out group, how long to wait for the kernel to reap it
_REAP_TIMEOUT: Final = 5.0


@dataclass(frozen=True, slots=True)
class RestartResult:
    """What running the restart command came to."""

    success: bool
    exit_code: int | None
    stderr_tail: str
    duration: float
    error_class: ErrorClass | None
    dry_run: bool = False

    @property
    def error(self) -> str | None:
        """A one-line cause for logs and the policy's ``last_error``; None on success."""
        if self.success:
            return None
        if self.error_class is ErrorClass.EXIT_STATUS:
            text = f"exit status {self.exit_code}"
        elif self.error_class is ErrorClass.TIMEOUT:
            text = f"timeout after {human_duration(self.duration)}"
        else:
            text = str(self.error_class)
        last_line = self.stderr_tail.strip().splitlines()[-1:] if self.stderr_tail else []
        return f"{text}: {last_line[0]}" if last_line else text


class RestartAction:
    """Runs ``restart_command`` once per call, bounded by ``restart_timeout``; never raises.

    The command runs in a new session (its own process group) with stdin closed (systemctl must
    not wait for a password prompt) and stdout discarded; stderr goes to a temporary file, not a
    pipe, so a command that leaves a background process behind (a demo restarting a simulator)
    is not waited for beyond its own exit. ``subprocess.run(timeout=...)`` would kill only the
    direct child and then wait for the pipes, which a surviving grandchild holds open; here a
    timeout kills the whole group with SIGKILL.
    """

    def __init__(
        self,
        command: Sequence[str],
        timeout: float,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = tuple(command)
        self.timeout = timeout
        self.dry_run = dry_run
        self._clock = clock
        self._log = structlog.get_logger(__name__)

    @classmethod
    def from_config(cls, config: WatchdogConfig, *, dry_run: bool = False) -> RestartAction:
        return cls(config.restart_command, config.restart_timeout, dry_run=dry_run)

    def run(self) -> RestartResult:
        if self.dry_run:
            self._log.warning("restart_command_skipped", command=list(self.command), dry_run=True)
            return RestartResult(True, None, "", 0.0, None, dry_run=True)
        start = self._clock()
        try:
            outcome = self._run(start)
        except FileNotFoundError as exc:
            outcome = self._failed(ErrorClass.NOT_FOUND, str(exc), start)
        except PermissionError as exc:
            outcome = self._failed(ErrorClass.PERMISSION, str(exc), start)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            # ValueError: an argv the OS cannot take (NUL byte); never let it reach the loop
            outcome = self._failed(ErrorClass.OS_ERROR, str(exc), start)
        if outcome.success:
            self._log.info(
                "restart_command_succeeded",
                command=list(self.command),
                duration_s=round(outcome.duration, 3),
            )
        else:
            self._log.error(
                "restart_command_failed",
                command=list(self.command),
                error_class=str(outcome.error_class),
                exit_code=outcome.exit_code,
                stderr=outcome.stderr_tail,
                duration_s=round(outcome.duration, 3),
            )
        return outcome

    def _failed(self, error_class: ErrorClass, message: str, start: float) -> RestartResult:
        return RestartResult(
            False, None, message[-STDERR_LIMIT:], self._clock() - start, error_class
        )

    def _run(self, start: float) -> RestartResult:
        if not self.command:
            raise FileNotFoundError("restart_command is empty")
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                code: int | None = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                code = None
                self._kill_group(proc)
            duration = self._clock() - start
            tail = _tail(stderr)
        if code is None:
            return RestartResult(False, None, tail, duration, ErrorClass.TIMEOUT)
        if code != 0:
            return RestartResult(False, code, tail, duration, ErrorClass.EXIT_STATUS)
        return RestartResult(True, 0, tail, duration, None)

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        # straight to SIGKILL: the command had its whole restart_timeout already
        stop_process_group(proc, first=None, reap_timeout=_REAP_TIMEOUT)


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(size - STDERR_LIMIT, 0))
    data: bytes = f.read()
    return data.decode("utf-8", errors="replace").strip()


__all__ = ["STDERR_LIMIT", "ErrorClass", "RestartAction", "RestartResult"]
