"""Loaded models and their runner children, with keep_alive expiry and crash detection.

Writes the model-load log lines of the chosen era (FACTS.md §2.5). A background reaper thread
notices a runner that died on its own (logs it like Ollama does) and unloads expired models.

With a real ``llama-server`` (``RealRunner``) each load starts that program with Ollama's flags
(FACTS.md §2.5, §2.7); its output reaches the log verbatim as it comes, and a failed load is
reported with the runner's last error line, as Ollama's status writer picks it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ollama_watchdog.simulator.catalog import Model
from ollama_watchdog.simulator.logformat import human_bytes2
from ollama_watchdog.simulator.logsink import LogSink
from ollama_watchdog.simulator.runners import (
    OOM_LAST_ERROR,
    RunnerProcess,
    exit_description,
    free_port,
    spawn_llama_server,
    spawn_runner,
)

ERA_LLAMA_SERVER = "llama-server"
ERA_GO_RUNNER = "go-runner"
ERAS = (ERA_LLAMA_SERVER, ERA_GO_RUNNER)

#: source= values; line numbers change every release (never match on them), these are HEAD's
#: where FACTS.md names them and plausible neighbours elsewhere.
SRC_SYSTEM_MEMORY = {ERA_LLAMA_SERVER: "sched.go:613", ERA_GO_RUNNER: "server.go:139"}
SRC_START = {ERA_LLAMA_SERVER: "llama_server.go:433", ERA_GO_RUNNER: "server.go:398"}
SRC_LOADING = "llama_server.go:441"
SRC_LOADED_RUNNERS = "sched.go:520"
SRC_WAITING = {ERA_LLAMA_SERVER: "llama_server.go:1280", ERA_GO_RUNNER: "server.go:1250"}
SRC_WAITING_STATUS = {ERA_LLAMA_SERVER: "llama_server.go:1318", ERA_GO_RUNNER: "server.go:1284"}
SRC_STARTED = {ERA_LLAMA_SERVER: "llama_server.go:1362", ERA_GO_RUNNER: "server.go:1288"}
SRC_TERMINATED = {ERA_LLAMA_SERVER: "llama_server.go:1023", ERA_GO_RUNNER: "server.go:449"}
SRC_LOAD_ERROR = "sched.go:734"
SRC_TOO_LARGE = "server.go:540"
SRC_LOAD_FAILED = "sched.go:450"

_READY_TIMEOUT = 20.0
#: a context no host has memory for: the ``oom`` fault's real out-of-memory with a real runner
OOM_CONTEXT = 100_000_000


@dataclass(frozen=True)
class RealRunner:
    """A real llama.cpp ``llama-server`` to run loaded models with (instead of the stand-in)."""

    path: Path
    gpu_layers: int | None = None  # ``-ngl``; None leaves llama-server's default
    load_timeout: float = 300.0  # OLLAMA_LOAD_TIMEOUT's default is 5m


@dataclass
class RunnerTotals:
    """What the real runners of one model returned, summed (the control endpoint shows it)."""

    completions: int = 0
    cache_n: int = 0
    prompt_n: int = 0
    predicted_n: int = 0


class LoadError(Exception):
    """A model load failed; ``message`` is what the client gets with a 500."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RunnerStoppedError(Exception):
    """The model's runner died; the request gets 500 ``model runner has unexpectedly stopped``."""

    def __init__(self, port: int) -> None:
        super().__init__(f"runner on port {port} stopped")
        self.port = port


@dataclass
class LoadedModel:
    """A model with a runner child, as /api/ps shows it."""

    model: Model
    runner: RunnerProcess
    context_length: int
    loaded_at: float = field(default_factory=time.time)
    expires_at: float = math.inf  # epoch seconds; inf = never (keep_alive < 0)
    keep_alive: float = 300.0
    active: int = 0  # requests using it now; expiry waits for them
    crashed: bool = False
    next_task: int = 0
    reap_lock: threading.Lock = field(default_factory=threading.Lock)
    reaped: bool = False

    def take_task_id(self) -> int:
        task = self.next_task
        self.next_task += 1
        return task


def _meminfo() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return values


def host_memory() -> tuple[int, int, int]:
    """(total, available, free swap) bytes of this host."""
    info = _meminfo()
    total = info.get("MemTotal", 8 << 30)
    return total, info.get("MemAvailable", total // 2), info.get("SwapFree", 0)


class Scheduler:
    """Starts, tracks and stops runner children."""

    def __init__(self, sink: LogSink, era: str, llama_server: Path, go_runner: Path,
                 default_context: int, real: RealRunner | None = None) -> None:
        self._sink = sink
        self.real = real
        self._totals: dict[str, RunnerTotals] = {}
        self._era = era
        self._llama_server = llama_server
        self._go_runner = go_runner
        self._default_context = default_context
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded: dict[str, LoadedModel] = {}
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap_loop, name="sim-reaper", daemon=True)

    def start(self) -> None:
        self._reaper.start()

    # -- queries -----------------------------------------------------------------------------

    def loaded(self) -> list[LoadedModel]:
        """Live loaded models, longest-lived (latest expiry) first, like /api/ps."""
        with self._lock:
            entries = [e for e in self._loaded.values() if not e.crashed]
        return sorted(entries, key=lambda e: e.expires_at, reverse=True)

    def runners(self) -> list[RunnerProcess]:
        with self._lock:
            return [e.runner for e in self._loaded.values()]

    def record(self, model: str, cache_n: int, prompt_n: int, predicted_n: int) -> None:
        """Add one real completion's figures to the model's totals."""
        with self._lock:
            totals = self._totals.setdefault(model, RunnerTotals())
            totals.completions += 1
            totals.cache_n += cache_n
            totals.prompt_n += prompt_n
            totals.predicted_n += predicted_n

    def describe(self) -> dict[str, object]:
        """The live runners (pid, port, argv) and the per-model totals, for the control port."""
        with self._lock:
            live = [{"model": e.model.name, "pid": e.runner.pid, "port": e.runner.port,
                     "argv": list(e.runner.argv), "alive": e.runner.alive()}
                    for e in self._loaded.values()]
            totals = {name: vars(t).copy() for name, t in self._totals.items()}
        return {"runners": live, "totals": totals}

    # -- load / release ----------------------------------------------------------------------

    def acquire(self, model: Model, num_ctx: int | None, *, oom: bool) -> LoadedModel:
        """The loaded model, loading it first if needed; marks it in use until ``release``."""
        # One load at a time, like Ollama's scheduler processes pending requests in order.
        with self._load_lock:
            with self._lock:
                entry = self._loaded.get(model.name)
                if entry is not None and entry.crashed:
                    del self._loaded[model.name]
                    raise RunnerStoppedError(entry.runner.port)
                if entry is not None:
                    entry.active += 1
                    return entry
            entry = self._load(model, num_ctx or self._default_context, oom=oom)
            with self._lock:
                entry.active += 1
                self._loaded[model.name] = entry
                count = len(self._loaded)
            self._sink.slog("INFO", SRC_LOADED_RUNNERS, "loaded runners", ("count", count))
            self._sink.slog("INFO", SRC_WAITING[self._era], self._waiting_msg())
            self._sink.slog("INFO", SRC_WAITING_STATUS[self._era], self._waiting_status_msg(),
                            ("status", "llm server loading model"))
            seconds = time.monotonic() - entry.runner.started
            what = "llama-server" if self._era == ERA_LLAMA_SERVER else "llama runner"
            self._sink.slog("INFO", SRC_STARTED[self._era],
                            f"{what} started in {seconds:.2f} seconds")
            return entry

    def _waiting_msg(self) -> str:
        if self._era == ERA_LLAMA_SERVER:
            return "waiting for llama-server to start responding"
        return "waiting for llama runner to start responding"

    def _waiting_status_msg(self) -> str:
        if self._era == ERA_LLAMA_SERVER:
            return "waiting for llama-server to become available"
        return "waiting for server to become available"

    def _load(self, model: Model, context: int, *, oom: bool) -> LoadedModel:
        total, available, swap = host_memory()
        self._sink.slog("INFO", SRC_SYSTEM_MEMORY[self._era], "system memory",
                        ("total", human_bytes2(total)), ("free", human_bytes2(available)),
                        ("free_swap", human_bytes2(swap)))
        port = free_port()
        blob = str(model.blob_path)
        if self._era == ERA_GO_RUNNER:
            if oom:
                self._refuse_for_memory(model, total, available, swap)
            argv = [str(self._go_runner), "runner", "--model", blob, "--port", str(port)]
            self._sink.slog("INFO", SRC_START[self._era], "starting runner",
                            ("cmd", " ".join(argv)))
        else:
            real = self.real
            program = real.path if real is not None else self._llama_server
            if real is not None and oom:
                context = OOM_CONTEXT
            argv = [str(program), "--model", blob, "--port", str(port),
                    "--host", "127.0.0.1", "--no-webui", "--offline", "-c", str(context),
                    "-np", "1"]
            if real is not None and real.gpu_layers is not None:
                argv += ["-ngl", str(real.gpu_layers)]
            argv += ["--log-verbosity", "4", "--no-log-prefix", "--no-log-timestamps"]
            self._sink.slog("INFO", SRC_START[self._era], "starting llama-server",
                            ("cmd", " ".join(argv)))
        if self._era == ERA_LLAMA_SERVER and self.real is not None:
            return self._load_real(model, argv, port, context)
        runner = spawn_runner(argv, port, fail="oom" if oom else "")
        if self._era == ERA_LLAMA_SERVER:
            self._sink.slog("INFO", SRC_LOADING, "loading model via llama-server", ("model", blob))
        if not runner.wait_ready(_READY_TIMEOUT):
            # Its stderr first (the real llama.cpp lines), then reap it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                runner.process.wait(5.0)  # stdout hit EOF: it is exiting
            output = runner.stderr_text() if runner.process.poll() is not None else ""
            runner.stop()
            self._sink.raw(output)
            code = runner.process.returncode
            status = exit_description(code if code is not None else -9)
            what = "llama-server" if self._era == ERA_LLAMA_SERVER else "llama runner"
            message = f"{what} process has terminated: {status}"
            if oom:
                message += f": {OOM_LAST_ERROR}"
            self._sink.slog("ERROR", SRC_LOAD_ERROR, "error loading llama server",
                            ("error", message))
            raise LoadError(message)
        return LoadedModel(model=model, runner=runner, context_length=context)

    def _load_real(self, model: Model, argv: list[str], port: int,
                   context: int) -> LoadedModel:
        """Start a real llama-server and wait for its ``/health``, as Ollama does."""
        assert self.real is not None
        runner = spawn_llama_server(argv, port, self._sink)
        self._sink.slog("INFO", SRC_LOADING, "loading model via llama-server",
                        ("model", str(model.blob_path)))
        if runner.wait_ready(self.real.load_timeout):
            return LoadedModel(model=model, runner=runner, context_length=context)
        if runner.alive():
            runner.stop()
            message = "timed out waiting for llama-server to start"
            if runner.last_error:
                message += f" - {runner.last_error}"
        else:
            runner.stop()  # reaps it and forwards the rest of its output first
            code = runner.process.returncode
            message = ("llama-server process has terminated: "
                       + exit_description(code if code is not None else -9))
            if runner.last_error:
                message += f": {runner.last_error}"
        self._sink.slog("ERROR", SRC_LOAD_ERROR, "error loading llama server",
                        ("error", message))
        raise LoadError(message)

    def _refuse_for_memory(self, model: Model, total: int, available: int, swap: int) -> None:
        """Go-runner era OOM: the scheduler refuses before starting anything (real-logs [31])."""
        requested = available + model.memory_bytes
        self._sink.slog("WARN", SRC_TOO_LARGE, "model request too large for system",
                        ("requested", human_bytes2(requested)),
                        ("available", human_bytes2(available)), ("total", human_bytes2(total)),
                        ("free", human_bytes2(available)), ("swap", human_bytes2(swap)))
        message = (f"model requires more system memory ({human_bytes2(requested)}) than is"
                   f" available ({human_bytes2(available)})")
        self._sink.slog("INFO", SRC_LOAD_FAILED, "Load failed", ("model", str(model.blob_path)),
                        ("error", message))
        raise LoadError(message)

    def release(self, entry: LoadedModel, keep_alive: float) -> None:
        """A request finished: restart the keep_alive clock, or unload now for keep_alive 0."""
        with self._lock:
            entry.active = max(entry.active - 1, 0)
            entry.keep_alive = keep_alive
            entry.expires_at = time.time() + keep_alive
        if keep_alive == 0:
            self.unload(entry)

    def touch(self, entry: LoadedModel, keep_alive: float) -> None:
        with self._lock:
            entry.keep_alive = keep_alive
            entry.expires_at = time.time() + keep_alive

    def unload(self, entry: LoadedModel) -> None:
        with self._lock:
            if self._loaded.get(entry.model.name) is entry:
                del self._loaded[entry.model.name]
        entry.runner.stop()

    def unload_model(self, name: str) -> None:
        """Unload every live runner of the model called ``name`` (it is being deleted)."""
        for entry in self.loaded():
            if entry.model.name == name:
                self.unload(entry)

    def crash_runner(self, entry: LoadedModel) -> None:
        """Kill a runner like a runtime crash, and log it as Ollama would."""
        entry.runner.crash()
        self.reap(entry)

    def crash_all(self) -> None:
        with self._lock:
            entries = list(self._loaded.values())
        for entry in entries:
            if entry.runner.alive():
                self.crash_runner(entry)

    def forget(self, entry: LoadedModel) -> None:
        with self._lock:
            if self._loaded.get(entry.model.name) is entry:
                del self._loaded[entry.model.name]
        entry.runner.stop()

    # -- background --------------------------------------------------------------------------

    def reap(self, entry: LoadedModel) -> None:
        """Log a runner's unexpected death once (its stderr, then Ollama's ERROR line)."""
        with entry.reap_lock:
            if entry.reaped or entry.runner.expected_exit:
                return
            entry.reaped = True
        entry.crashed = True
        self._sink.raw(entry.runner.stderr_text())
        code = entry.runner.process.returncode
        status = exit_description(code if code is not None else -9)
        if self._era == ERA_LLAMA_SERVER:
            exit_code = code if code is not None and code >= 0 else -1
            self._sink.slog("ERROR", SRC_TERMINATED[self._era], "llama-server terminated",
                            ("error", status), ("exit", exit_code))
        else:
            self._sink.slog("ERROR", SRC_TERMINATED[self._era], "llama runner terminated",
                            ("error", status))

    def _reap_loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.time()
            with self._lock:
                entries = list(self._loaded.values())
            for entry in entries:
                if entry.runner.expected_exit:
                    continue
                if not entry.runner.alive():
                    self.reap(entry)
                elif entry.active == 0 and now >= entry.expires_at:
                    self.unload(entry)

    def stop_all(self) -> None:
        """Shutdown: stop the reaper and every runner child."""
        self._stop.set()
        with self._lock:
            entries = list(self._loaded.values())
            self._loaded.clear()
        for entry in entries:
            entry.runner.stop(timeout=2.0)

    def kill_all_now(self) -> None:
        """Before a simulated crash: SIGKILL every runner without waiting long."""
        for runner in self.runners():
            runner.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(runner.pid, signal.SIGKILL)
