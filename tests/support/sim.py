"""Run the Ollama simulator as a real subprocess in tests.

``SimulatorProcess`` starts ``python -m ollama_watchdog.simulator`` (or, with ``as_ollama``, the
stand-in ``ollama serve`` of ``ollama_watchdog.simulator.standin``) on a free port with a
control endpoint and a ready file, and always cleans up its whole process group (the simulator
and its runner children). Fixtures: ``simulator`` (one, started) and ``simulator_factory``
(start several, with extra CLI arguments). Register them with
``pytest_plugins = ["support.sim"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import requests

from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.simulator.standin import write_standin
from support.wait import wait_until

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_HTTP_TIMEOUT = 10.0


class SimulatorError(RuntimeError):
    """The simulator did not start (its stderr tail is in the message)."""


class SimulatorProcess:
    """One simulator subprocess; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        directory: Path,
        args: Sequence[str] = (),
        *,
        port: int = 0,
        log_file: Path | None = None,
        as_ollama: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        """``directory`` holds stdout/stderr logs, the ready file and the work dir.

        ``log_file``: pass ``--log-file`` (both streams go there instead of stdout/stderr).
        ``as_ollama``: run through a script named ``ollama`` with ``serve`` (process matching).
        """
        self.directory = directory
        self.args = list(args)
        self.port = port
        self.log_file = log_file
        self.as_ollama = as_ollama
        self.env = env
        self.directory.mkdir(parents=True, exist_ok=True)
        self.stdout_path = directory / "stdout.log"
        self.stderr_path = directory / "stderr.log"
        self.ready_path = directory / "ready.json"
        self.work_dir = directory / "work"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.control_url = ""
        self._control_port = 0

    # -- life --------------------------------------------------------------------------------

    def command(self) -> list[str]:
        listen = f"127.0.0.1:{self.port}"
        control = f"127.0.0.1:{self._control_port}"
        if self.as_ollama:
            script = self.directory / "bin" / "ollama"
            write_standin(script, sys.executable)
            # The stand-in's default store is $OLLAMA_MODELS; fake models, as with `-m`, unless
            # the test's own --models/--models-dir (later, so they win) say otherwise.
            head = [sys.executable, str(script), "serve", "--models", "3"]
        else:
            head = [sys.executable, "-m", "ollama_watchdog.simulator"]
        cmd = [
            *head,
            "--listen",
            listen,
            "--control",
            control,
            "--ready-file",
            str(self.ready_path),
            "--work-dir",
            str(self.work_dir),
        ]
        if self.log_file is not None:
            cmd += ["--log-file", str(self.log_file)]
        return cmd + self.args

    def start(self, *, wait: bool = True) -> SimulatorProcess:
        """Start (appending to the same log files); wait until serving unless ``wait=False``."""
        if self.process is not None and self.process.poll() is None:
            raise SimulatorError("already running")
        self.ready_path.unlink(missing_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # Own session: stop() can kill the simulator and its runner children as a group.
            self.process = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        process = self.process
        assert process is not None

        def ready() -> bool:
            if self.ready_path.exists():
                return True
            if process.poll() is not None:
                raise SimulatorError(
                    f"simulator exited with {process.returncode}: {self.stderr_text()[-2000:]}"
                )
            return False

        try:
            wait_until(ready, "simulator ready", timeout=timeout)
        except AssertionError:
            self.stop()
            raise SimulatorError(
                f"simulator not ready within {timeout}s: {self.stderr_text()[-2000:]}"
            ) from None
        info = json.loads(self.ready_path.read_text())
        self.url = str(info["url"])
        self.control_url = str(info["control_url"])
        # Pin the ports, so restart() comes back on the same addresses.
        self.port = int(self.url.rsplit(":", 1)[1])
        self._control_port = int(self.control_url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the simulator to exit on its own; its exit status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL to the whole group; returns the simulator's exit status."""
        if self.process is None:
            return None
        # Whatever is left in the group (a hung simulator, runner children) goes too.
        return stop_process_group(self.process, timeout, leader_only=True, sweep=True)

    def restart(self) -> SimulatorProcess:
        """Stop and start again on the same API and control ports."""
        self.stop()
        return self.start()

    def __enter__(self) -> SimulatorProcess:
        return self.start() if self.process is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def generation_model(self) -> str:
        """A model that can generate (the simulator also has embedding-only ones)."""
        models = requests.get(f"{self.url}/api/tags", timeout=10).json()["models"]
        return str(next(m["name"] for m in models if "completion" in m.get("capabilities", [])))

    # -- faults ------------------------------------------------------------------------------

    def set_fault(self, name: str, delay: float | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"fault": name}
        if delay is not None:
            body["delay"] = delay
        response = requests.post(f"{self.control_url}/fault", json=body, timeout=_HTTP_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def clear_fault(self) -> dict[str, Any]:
        return self.set_fault("none")

    def fault(self) -> dict[str, Any]:
        response = requests.get(f"{self.control_url}/fault", timeout=_HTTP_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    # -- logs --------------------------------------------------------------------------------

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        """The gin request log (empty with ``log_file``)."""
        return self._read(self.stdout_path)

    def stderr_text(self) -> str:
        """slog lines and runner output (empty with ``log_file`` once started)."""
        return self._read(self.stderr_path)

    def log_text(self) -> str:
        """Everything the simulator logged: the log file, or stderr followed by stdout."""
        if self.log_file is not None:
            return self._read(self.log_file) + self.stderr_text()
        return self.stderr_text() + self.stdout_text()

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern`` (a regex); generous deadline, no timing."""
        regex = re.compile(pattern, re.MULTILINE)
        return wait_until(
            lambda: regex.search(self.log_text()), f"a log line matching {pattern!r}", timeout
        )


@pytest.fixture
def simulator_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., SimulatorProcess]]:
    """``factory(*args, **kwargs)`` starts a simulator; every one is stopped at teardown."""
    started: list[SimulatorProcess] = []

    def factory(*args: str, start: bool = True, **kwargs: Any) -> SimulatorProcess:
        sim = SimulatorProcess(tmp_path_factory.mktemp("sim"), args, **kwargs)
        started.append(sim)
        return sim.start() if start else sim

    try:
        yield factory
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def simulator(simulator_factory: Callable[..., SimulatorProcess]) -> SimulatorProcess:
    """One started simulator with default options (3 fake models, llama-server era)."""
    return simulator_factory()
