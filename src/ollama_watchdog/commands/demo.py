"""``ollama-watchdog demo``: the simulator and the daemon together, no real Ollama needed.

The simulator runs as a child process under a small supervisor that plays systemd's part
(``Restart=always``): when the simulator exits, it is started again. The daemon's restart
command stops the simulator through its pid file, so a hang injected on the control port is
detected, the simulator is really restarted, and health returns — the whole story in one
terminal.

The simulator is started through the stand-in ``ollama`` script (``simulator.standin``) in the
work dir, so its argv reads ``python .../ollama serve`` and the process collector finds it and
its runners as it would find Ollama. The script serves in-process (no extra fork), so the pid
in the pid file is the simulator's own.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from ollama_watchdog.config import (
    Config,
    ExporterConfig,
    GpuConfig,
    GpuMode,
    LogsConfig,
    LogSource,
    OllamaConfig,
    ProbeConfig,
    WatchdogConfig,
    parse_listen,
)
from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.simulator.standin import write_standin


class SimulatorSupervisor:
    """Keeps one simulator process running, like systemd's Restart=always."""

    def __init__(
        self, listen: str, control: str, workdir: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.listen = listen
        #: extra simulator arguments for the next start (tests change them: a crash loop, a fix)
        self.args = args
        self.control = control
        self.pidfile = workdir / "simulator.pid"
        self.logfile = workdir / "ollama.log"
        self.simdir = workdir / "sim"  # runner scripts and the fake model store
        self.readyfile = workdir / "simulator.ready"
        self.script = workdir / "bin" / "ollama"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-supervisor", daemon=True)
        self.starts = 0

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.readyfile.unlink(missing_ok=True)
        log = self.logfile.open("ab")
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(self.script),
                    "serve",
                    "--listen",
                    self.listen,
                    "--control",
                    self.control,
                    "--log-file",
                    str(self.logfile),
                    "--work-dir",
                    str(self.simdir),
                    "--ready-file",
                    str(self.readyfile),
                    # fake models in the work dir, not the store of $OLLAMA_MODELS
                    "--models",
                    "3",
                    *self.args,
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.pidfile.write_text(f"{proc.pid}\n")
        self.starts += 1
        return proc

    def start(self, ready_timeout: float = 15.0) -> None:
        write_standin(self.script, sys.executable)
        self._proc = self._spawn()
        # the first probe should meet a serving simulator, not a half-started one
        deadline = time.monotonic() + ready_timeout
        while not self.readyfile.exists() and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            time.sleep(0.05)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            proc = self._proc
            if proc is not None and proc.poll() is not None and not self._stop.is_set():
                time.sleep(0.5)  # RestartSec
                self._proc = self._spawn()
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        proc = self._proc
        if proc is not None:
            stop_process_group(proc, 3.0)


def demo_config(
    exporter_listen: str, ollama_listen: str, pidfile: Path, logfile: Path, state_dir: Path
) -> Config:
    host, port = parse_listen(ollama_listen)
    return Config(
        ollama=OllamaConfig(
            url=f"http://{host or '127.0.0.1'}:{port}",
            timeout=2.0,
            unit="",  # no systemd unit: the process is found by its command line
            models_dir=state_dir / "sim" / "models",
        ),
        exporter=ExporterConfig(listen=exporter_listen),
        probe=ProbeConfig(interval=2.0),
        watchdog=WatchdogConfig(
            failure_threshold=3,
            startup_grace=5.0,
            backoff_initial=5.0,
            backoff_max=60.0,
            max_restarts=5,
            restart_window=600.0,
            # kill by pid file; the supervisor brings it back, as systemd would
            restart_command=("sh", "-c", f'kill -TERM "$(cat {pidfile})"'),
            restart_timeout=10.0,
        ),
        logs=LogsConfig(source=LogSource.FILE, path=str(logfile), state_dir=state_dir),
        gpu=GpuConfig(enabled=GpuMode.AUTO),
    )


def run_demo(args: argparse.Namespace) -> int:
    from ollama_watchdog.daemon import Daemon
    from ollama_watchdog.logging import configure_logging

    configure_logging()
    with tempfile.TemporaryDirectory(prefix="ollama-watchdog-demo-") as tmp:
        work = Path(tmp)
        sup = SimulatorSupervisor(args.ollama_listen, args.control_listen, work)
        config = demo_config(args.listen, args.ollama_listen, sup.pidfile, sup.logfile, work)
        daemon = Daemon(config, None)
        try:
            daemon.prepare()
        except OSError as exc:
            print(f"ollama-watchdog demo: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        sup.start()

        def on_stop(signum: int, frame: FrameType | None) -> None:
            daemon.request_stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        ctl_host, ctl_port = parse_listen(args.control_listen)
        print(
            "\nollama-watchdog demo\n"
            f"  metrics:   http://{args.listen}/metrics\n"
            f"  simulator: {config.ollama.url} (a stand-in for Ollama; log in {sup.logfile})\n"
            "  inject a hang and watch the watchdog restart it (ollama_up, "
            "ollama_watchdog_restarts_total):\n"
            f'    curl -X POST -d \'{{"fault":"hang"}}\' http://{ctl_host}:{ctl_port}/fault\n'
            "  Ctrl-C stops the demo.\n",
            flush=True,
        )
        try:
            return daemon.run()
        finally:
            sup.stop()


__all__ = ["SimulatorSupervisor", "demo_config", "run_demo"]
