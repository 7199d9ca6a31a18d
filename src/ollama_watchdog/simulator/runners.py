"""Model runner child processes: real processes that process collectors can see.

Each loaded model is a child started from an executable script named like the real runner:
``lib/ollama/llama-server --model <blob> --port N ...`` (v0.30+) or ``bin/ollama runner --model
<blob> --port N`` (Go-runner era). The child binds its port, says ``ready`` on stdout, and then
sleeps until it is killed. It dies with its parent: it watches its stdin pipe (EOF once the
parent is gone) and its parent pid. ``PR_SET_PDEATHSIG`` is not used on purpose: it fires when
the *thread* that spawned the child ends, and request threads end after every request.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ollama_watchdog.simulator.llamaserver import OutputPump, wait_healthy
from ollama_watchdog.simulator.logsink import LogSink

#: Environment variable that tells a runner child to fail its load like a real OOM does.
FAIL_ENV = "OLLAMA_SIM_RUNNER_FAIL"

# Lines are real llama.cpp output (FACTS.md real-logs [29], a CPU buffer allocation failure).
OOM_LINES = (
    "load_tensors: loading model tensors, this can take a while... (mmap = true)\n"
    "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 437944320\n"
    "alloc_tensor_range: failed to allocate CPU buffer of size 437944320\n"
    "llama_model_load: error loading model: unable to allocate CPU buffer\n"
    "llama_model_load_from_file_impl: failed to load model\n"
)
OOM_LAST_ERROR = "llama_model_load: error loading model: unable to allocate CPU buffer"
CRASH_LINES = (
    "/ggml/src/ggml-cpu/ops.cpp:5012: GGML_ASSERT(ne00 == ne01) failed\n"
)

_RUNNER_SCRIPT = '''#!{python}
"""Stand-in model runner written by the ollama-watchdog simulator. Sleeps until killed."""
import os, signal, socket, sys, threading, time

OOM_LINES = {oom!r}
CRASH_LINES = {crash!r}

if os.environ.get("{fail_env}") == "oom":
    sys.stderr.write(OOM_LINES)
    sys.stderr.flush()
    sys.exit(1)


def crash(signum, frame):
    # A runtime crash: an assertion message, then the exit status a Go/C runner dies with.
    sys.stderr.write(CRASH_LINES)
    sys.stderr.flush()
    os._exit(2)


signal.signal(signal.SIGUSR1, crash)
port = int(sys.argv[sys.argv.index("--port") + 1]) if "--port" in sys.argv else 0
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    listener.bind(("127.0.0.1", port))
    listener.listen(8)
except OSError:
    pass
parent = os.getppid()


def watch_stdin():
    # EOF on the pipe from the parent means the parent is gone.
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)


threading.Thread(target=watch_stdin, daemon=True).start()
sys.stdout.write("ready\\n")
sys.stdout.flush()
while True:
    time.sleep(0.5)
    if os.getppid() != parent:
        os._exit(0)
'''


def install_runner_scripts(work_dir: Path) -> tuple[Path, Path]:
    """Write ``lib/ollama/llama-server`` and ``bin/ollama`` (runner stand-ins) into work_dir."""
    text = _RUNNER_SCRIPT.format(
        python=sys.executable, oom=OOM_LINES, crash=CRASH_LINES, fail_env=FAIL_ENV
    )
    llama_server = work_dir / "lib" / "ollama" / "llama-server"
    go_runner = work_dir / "bin" / "ollama"
    for path in (llama_server, go_runner):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return llama_server, go_runner


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def exit_description(returncode: int) -> str:
    """Go's ``exec.ExitError`` text: ``exit status 2`` or ``signal: killed``."""
    if returncode >= 0:
        return f"exit status {returncode}"
    names = {
        signal.SIGKILL: "killed",
        signal.SIGTERM: "terminated",
        signal.SIGABRT: "aborted",
        signal.SIGSEGV: "segmentation fault",
    }
    return f"signal: {names.get(signal.Signals(-returncode), signal.Signals(-returncode).name)}"


@dataclass
class RunnerProcess:
    """One started runner child."""

    argv: tuple[str, ...]
    port: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    expected_exit: bool = False
    #: set for a real llama-server: its output goes to the log as it comes (not at exit)
    pump: OutputPump | None = None

    @property
    def real(self) -> bool:
        return self.pump is not None

    @property
    def last_error(self) -> str:
        """The real runner's last error line (Ollama's status writer); "" for stand-ins."""
        return self.pump.last_error if self.pump is not None else ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float) -> bool:
        """True once the child is ready (a stand-in said ``ready``, llama-server's ``/health``
        answers 200); False if it exited or the deadline passed."""
        if self.pump is not None:
            return wait_healthy(self.port, self.alive, timeout)
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stdout], [], [], 0.1)
            if readable:
                return stdout.readline().strip() == b"ready"
            if self.process.poll() is not None:
                return False
        return False

    def stderr_text(self, timeout: float = 5.0) -> str:
        """What the child wrote to stderr; only call once it has exited. A real runner's output
        was forwarded as it came: this waits until all of it is, and returns ""."""
        if self.pump is not None:
            self.pump.join(timeout)
            return ""
        stderr = self.process.stderr
        assert stderr is not None
        chunks: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            readable, _, _ = select.select([stderr], [], [], 0.1)
            if not readable:
                if self.process.poll() is not None:
                    break
                continue
            chunk = os.read(stderr.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def crash(self, timeout: float = 5.0) -> None:
        """Make the child die like a crashed runner: a stand-in exits 2 after an assert message,
        a real llama-server gets SIGSEGV (it prints nothing more and dies, FACTS.md §8)."""
        if self.alive():
            self.process.send_signal(signal.SIGSEGV if self.real else signal.SIGUSR1)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def stop(self, timeout: float = 3.0) -> None:
        """Unload: SIGKILL and reap, as Ollama's ``llmServer.Close`` does (``Process.Kill``,
        then wait): a runner gets no SIGTERM grace, so a stopped or wedged one goes at once."""
        self.expected_exit = True
        if self.alive():
            self.process.kill()
            self.process.wait(timeout)
        if self.pump is not None:
            self.pump.join(timeout)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


_spawn_lock = threading.Lock()


def _spawn(argv: list[str], *, fail: str, stdin: int, stderr: int) -> subprocess.Popen[bytes]:
    """Start a runner child (stdout piped); ``fail`` tells a stand-in to fail its load."""
    env = dict(os.environ)
    env.pop(FAIL_ENV, None)
    if fail:
        env[FAIL_ENV] = fail
    # One spawn at a time: a pipe end created by a concurrent spawn must not leak into this
    # child (close_fds covers it, but keeping spawns serial also keeps start order in the log).
    with _spawn_lock:
        return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
                                env=env, close_fds=True)


def spawn_runner(argv: list[str], port: int, *, fail: str = "") -> RunnerProcess:
    """Start a runner stand-in with pipes on all three streams."""
    process = _spawn(argv, fail=fail, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    return RunnerProcess(argv=tuple(argv), port=port, process=process)


def spawn_llama_server(argv: list[str], port: int, sink: LogSink) -> RunnerProcess:
    """Start a real llama-server; its stdout and stderr go, merged and verbatim, to the log."""
    process = _spawn(argv, fail="", stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    pump = OutputPump(process.stdout, sink, f"runner-output-{process.pid}")
    return RunnerProcess(argv=tuple(argv), port=port, process=process, pump=pump)
