"""Start ``ollama-watchdog run`` as a real process for tests, and read its metrics."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from ollama_watchdog.procgroup import stop_process_group

from .tools import free_port
from .wait import wait_until


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    lines: list[str] = []
    for section, body in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in body.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def quick_config(
    ollama_url: str, tmp: Path, port: int | None = None, **overrides: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """A config for tests: fast probes, no GPU, no journald, a harmless restart command."""
    cfg: dict[str, dict[str, Any]] = {
        "ollama": {"url": ollama_url, "timeout": "1s", "models_dir": str(tmp / "models")},
        "exporter": {"listen": f"127.0.0.1:{port or free_port()}"},
        "probe": {"interval": "500ms"},
        "watchdog": {"enabled": False, "restart_command": ["true"]},
        "logs": {"source": "none", "state_dir": str(tmp / "state")},
        "gpu": {"enabled": "false"},
    }
    for section, body in overrides.items():
        cfg.setdefault(section, {}).update(body)
    return cfg


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class DaemonProcess:
    """``python -m ollama_watchdog run --config FILE`` with its stderr captured to a file."""

    def __init__(
        self,
        config: Mapping[str, Mapping[str, Any]],
        tmp: Path,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.config_path = write_config(tmp / "watchdog.toml", config)
        listen = str(config["exporter"]["listen"])
        self.url = f"http://{listen}"
        self.stderr_path = tmp / "watchdog.stderr"
        self._extra = extra_args
        self._env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> DaemonProcess:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.update(self._env or {})
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ollama_watchdog",
                    "run",
                    "--config",
                    str(self.config_path),
                    *self._extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        proc = self.proc
        assert proc is not None

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}: {self.stderr()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(healthy, "daemon ready", timeout=timeout, interval=0.1)
        except AssertionError:
            raise RuntimeError("daemon not ready: " + self.stderr()) from None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    @property
    def port(self) -> int:
        """The exporter's port (``/metrics``, ``/ready``: a balancer's health check)."""
        return int(self.url.rsplit(":", 1)[1])

    def ready(self) -> tuple[int, str]:
        """``/ready`` as a balancer sees it: status and body; ``(0, "unreachable")`` when
        nothing answers."""
        try:
            r = requests.get(self.url + "/ready", timeout=10)
        except requests.RequestException:
            return 0, "unreachable"
        return r.status_code, r.text.strip()

    def metrics_text(self, **kw: Any) -> str:
        r = requests.get(self.url + "/metrics", timeout=kw.pop("timeout", 5), **kw)
        r.raise_for_status()
        return r.text

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return parse_metrics(self.metrics_text())

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def wait_value(
        self, name: str, expected: float, timeout: float = 30.0, **labels: str
    ) -> float | None:
        """Poll until the sample equals ``expected``; returns the last value seen."""
        last = None

        def reached() -> bool:
            nonlocal last
            last = self.value(name, **labels)
            return last == expected

        with contextlib.suppress(AssertionError):  # the caller asserts on the value returned
            wait_until(reached, f"{name}{labels} == {expected}", timeout=timeout, interval=0.2)
        return last

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process_group(self.proc, 10.0, leader_only=True, reap_timeout=5.0)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
