"""The healing stack with real runners, shared by tests/integration/test_healing_real_runner.py
and benchmarks/healing.py.

The simulator starts a real llama.cpp ``llama-server`` per loaded model and runs under the
demo's supervisor (systemd's ``Restart=always``); the watchdog's restart command kills it by its
pid file, so a server restart is a real one (a new server pid, every stream cut, every model
loaded again). The watchdog probes liveness every 500 ms and the deep model every second, with
``failure_threshold`` 2, and follows the simulator's log file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ollama_watchdog.commands.demo import SimulatorSupervisor
from support.daemon import quick_config
from support.tools import free_port


def supervised_simulator(
    work: Path, llama: Path, models: Mapping[str, Path], *extra: str
) -> SimulatorSupervisor:
    """The simulator (not started) with real runners for ``models`` (name -> GGUF file);
    ``extra``: more simulator flags (``--gpu-layers N``)."""
    work.mkdir(parents=True, exist_ok=True)
    args = [a for name, path in models.items() for a in ("--model", f"{name}={path}")]
    return SimulatorSupervisor(
        f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", work,
        ("--llama-server", str(llama), *args, *extra, "--tokens", "8"),
    )  # fmt: skip


def healing_config(
    sup: SimulatorSupervisor,
    tmp: Path,
    deep_model: str,
    *,
    startup_grace: str,
    deep_timeout: str = "3s",
    **healing: object,
) -> dict[str, dict[str, Any]]:
    """The watchdog of ``sup``: the deep probe on ``deep_model``, healing on, the demo's
    restart (kill the simulator by its pid file; the supervisor starts a new one)."""
    return quick_config(
        f"http://{sup.listen}",
        tmp,
        ollama={"unit": "", "models_dir": str(sup.simdir / "models"), "timeout": "2s"},
        logs={"source": "file", "path": str(sup.logfile)},
        probe={"interval": "500ms", "deep_model": deep_model, "deep_interval": "1s",
               "deep_timeout": deep_timeout},
        watchdog={
            "enabled": True,
            "failure_threshold": 2,
            "startup_grace": startup_grace,
            "backoff_initial": "1s",
            "restart_window": "10m",
            "restart_command": ["sh", "-c", f'kill -TERM "$(cat {sup.pidfile})"'],
            "restart_timeout": "10s",
        },
        healing={"unload_timeout": "15s", "kill_timeout": "5s", **healing},
    )  # fmt: skip
