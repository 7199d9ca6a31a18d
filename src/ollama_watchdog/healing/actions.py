"""What the healing side can do to Ollama: restart the server, unload a model, kill a runner,
kill orphan runners.

An action reports a :class:`RestartResult` or :class:`RemedyResult`; it never raises and never
decides anything (that is ``healing.policy``). It blocks for up to its timeout, so
``healing.watchdog`` runs it on a worker thread of its own. The runner of a model is found by
the process collector's rule (``ollama.processes``): a model process whose ``--model`` is that
model's weights blob, child of this instance's server.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import psutil
import structlog

from ollama_watchdog.config import HealingConfig, WatchdogConfig, human_duration
from ollama_watchdog.ollama.api import OllamaClient, ProbeError
from ollama_watchdog.ollama.names import normalize_name, read_model_blobs
from ollama_watchdog.ollama.processes import classify_argv, runner_model_digest
from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.signals import Proc


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




# -- mending the smallest broken part: unload a model, kill its runner, kill orphans ---------


@dataclass(frozen=True, slots=True)
class RemedyResult:
    """What an unload or a kill came to; ``detail`` goes into the log event as fields."""

    success: bool
    error: str | None
    duration: float
    detail: Mapping[str, object] = field(default_factory=dict)
    dry_run: bool = False


def model_digest(models_dir: Path, model: str) -> str | None:
    """The sha256 hex of ``model``'s weights blob, from its manifest; None if not installed."""
    wanted = normalize_name(model)
    for digest, name in read_model_blobs(models_dir).items():
        if normalize_name(name) == wanted:
            return digest
    return None


def find_runners(
    digest: str, server_pid: int | None, procfs: Path = Path("/proc")
) -> list[Proc]:
    """Model processes serving blob ``digest`` (the process collector's rule), children of
    ``server_pid`` when it is known: another Ollama instance's runner of the same model is not
    ours to touch."""
    found: list[Proc] = []
    try:
        entries = os.listdir(procfs)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            raw = (procfs / entry / "cmdline").read_bytes()[:65536]
        except OSError:
            continue
        if b"llama-server" not in raw and b"runner" not in raw:
            continue
        argv = raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")
        if classify_argv(argv) != "runner" or runner_model_digest(argv) != digest:
            continue
        try:
            proc = psutil.Process(int(entry))
            if server_pid is not None and proc.ppid() != server_pid:
                continue
            found.append(Proc(proc.pid, proc.create_time()))
        except psutil.Error:
            continue
    return sorted(found, key=lambda p: p.pid)


def _alive(proc: Proc) -> bool:
    """True while ``proc`` (that very process, not a reused pid) exists and is not a zombie."""
    try:
        p = psutil.Process(proc.pid)
        return abs(p.create_time() - proc.started) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_processes(procs: Sequence[Proc], timeout: float) -> tuple[list[int], str | None]:
    """SIGKILL each process that is still the one named (pid and start time), then wait up to
    ``timeout`` for all to be gone. Returns the pids killed and an error text (None: all gone).

    Straight to SIGKILL: a wedged runner has nothing left to save, a stopped one would never
    act on SIGTERM, and Ollama's server sees the exit as it sees any runner crash.
    """
    killed: list[int] = []
    for proc in procs:
        if not _alive(proc):
            continue
        try:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)
        except ProcessLookupError:
            continue
        except PermissionError:
            return killed, (
                f"permission denied killing pid {proc.pid}: the watchdog needs CAP_KILL "
                "(the shipped unit grants it: AmbientCapabilities=CAP_KILL) or to run as the "
                "ollama user"
            )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in procs):
            return killed, None
        time.sleep(0.05)
    left = [p.pid for p in procs if _alive(p)]
    if left:
        return killed, f"pid(s) {', '.join(map(str, left))} still running after {timeout:g}s"
    return killed, None


class RemedyActions:
    """Unload a model, kill its runner, kill orphan runners; each bounded, never raising.

    ``server_pid`` gives the current server's pid (the process collector's pick) so only this
    instance's runners are touched; ``gpu_memory`` gives Ollama-side GPU memory per pid from a
    fresh NVML read (None without NVML), used to check that a killed runner's memory came back.
    """

    def __init__(
        self,
        client: OllamaClient,
        models_dir: Path,
        healing: HealingConfig,
        *,
        server_pid: Callable[[], int | None] = lambda: None,
        gpu_memory: Callable[[], Mapping[int, int] | None] = lambda: None,
        dry_run: bool = False,
        procfs: Path = Path("/proc"),
        poll: float = 0.25,
    ) -> None:
        self._client = client
        self._models_dir = models_dir
        self._heal = healing
        self._server_pid = server_pid
        self._gpu_memory = gpu_memory
        self.dry_run = dry_run
        self._procfs = procfs
        self._poll = poll
        self._log = structlog.get_logger(__name__)

    def _runners(self, model: str) -> list[Proc]:
        digest = model_digest(self._models_dir, model)
        if digest is None:
            return []
        return find_runners(digest, self._server_pid(), self._procfs)

    def unload_model(self, model: str) -> RemedyResult:
        """``keep_alive: 0``, then wait for the model to leave ``/api/ps`` and its runner to
        exit, and where NVML is present for the runner's GPU memory to be released, all within
        ``unload_timeout``."""
        start = time.monotonic()
        if self.dry_run:
            return RemedyResult(True, None, 0.0, {"model": model}, dry_run=True)
        timeout = self._heal.unload_timeout
        before = self._runners(model)
        wanted = normalize_name(model)
        try:
            self._client.unload(model, timeout=timeout)
        except ProbeError as exc:
            return RemedyResult(
                False, f"unload request: {exc}", time.monotonic() - start, {"model": model}
            )
        deadline = start + timeout
        listed = True
        while True:
            try:
                listed = any(normalize_name(m.name) == wanted for m in self._client.ps())
            except ProbeError:
                listed = True  # cannot tell: keep waiting
            running = [p.pid for p in before if _alive(p)]
            if not listed and not running:
                detail: dict[str, object] = {"model": model, "runner_pids": [p.pid for p in before]}
                error = self._check_gpu_released(before, deadline, detail, "the unload")
                return RemedyResult(error is None, error, time.monotonic() - start, detail)
            if time.monotonic() >= deadline:
                break
            time.sleep(self._poll)
        why = "still listed in /api/ps" if listed else f"runner pid(s) {running} still running"
        return RemedyResult(
            False,
            f"{model} {why} after {timeout:g}s",
            time.monotonic() - start,
            {"model": model, "runner_pids": [p.pid for p in before]},
        )

    def kill_runner(self, model: str) -> RemedyResult:
        """SIGKILL the runner process(es) of ``model``, wait for them to exit, and where NVML is
        present check that they no longer hold GPU memory."""
        start = time.monotonic()
        procs = self._runners(model)
        detail: dict[str, object] = {"model": model, "runner_pids": [p.pid for p in procs]}
        if self.dry_run:
            return RemedyResult(True, None, 0.0, detail, dry_run=True)
        if not procs:
            return RemedyResult(
                False, f"no runner of {model} found", time.monotonic() - start, detail
            )
        return self._kill(procs, detail, start)

    def kill_orphans(self, procs: Sequence[Proc]) -> RemedyResult:
        """SIGKILL runners whose server is gone (named by pid and start time)."""
        start = time.monotonic()
        detail: dict[str, object] = {"pids": [p.pid for p in procs]}
        if self.dry_run:
            return RemedyResult(True, None, 0.0, detail, dry_run=True)
        return self._kill(procs, detail, start)

    def _kill(
        self, procs: Sequence[Proc], detail: dict[str, object], start: float
    ) -> RemedyResult:
        timeout = self._heal.kill_timeout
        killed, error = kill_processes(procs, timeout)
        detail["killed"] = killed
        if error is None:
            error = self._check_gpu_released(procs, start + timeout * 2, detail, "the kill")
        return RemedyResult(error is None, error, time.monotonic() - start, detail)

    def _check_gpu_released(
        self, procs: Sequence[Proc], deadline: float, detail: dict[str, object], after: str
    ) -> str | None:
        """Where NVML is present, wait until ``deadline`` for ``procs`` (gone now) to leave the
        GPUs' process lists; ``gpu_memory_released`` goes into ``detail``. The error, or None."""
        if not procs:
            return None
        released, held = self._gpu_released({p.pid for p in procs}, deadline)
        if released is not None:
            detail["gpu_memory_released"] = released
        if released is False:
            return f"GPU memory still held by pid(s) {held} after {after}"
        return None

    def _gpu_released(self, pids: set[int], deadline: float) -> tuple[bool | None, list[int]]:
        while True:
            memory = self._gpu_memory()
            if memory is None:
                return None, []
            held = sorted(pid for pid in pids if memory.get(pid, 0) > 0)
            if not held:
                return True, []
            if time.monotonic() >= deadline:
                return False, held
            time.sleep(self._poll)


__all__ = [
    "STDERR_LIMIT",
    "ErrorClass",
    "RemedyActions",
    "RemedyResult",
    "RestartAction",
    "RestartResult",
    "find_runners",
    "kill_processes",
    "model_digest",
]
