"""The shipped haproxy/haproxy.cfg, run by the real ``haproxy`` in front of test backends.

``HaproxyProcess`` renders the example for servers on 127.0.0.1 (each Ollama simulator with its
watchdog's exporter port for the ``/ready`` check and, when given, its agent port), a throw-away
certificate and a real password hash, and runs ``haproxy -db`` in its own process group.
``status(server)`` reads the server's state (UP, DOWN, MAINT, DRAIN, ...) from the stats page
the example ships, so tests wait for what HAProxy itself decided.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from ollama_watchdog.procgroup import stop_process_group

from .tools import free_port, require_tool
from .wait import wait_until

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "alice", "correct horse battery staple"
WAIT = 60.0


@dataclass(frozen=True)
class Backend:
    """One Ollama host as HAProxy sees it."""

    name: str
    ollama_port: int
    #: the watchdog's exporter port: the /ready check
    check_port: int
    #: the watchdog's HAProxy agent port; None: no agent for this server
    agent_port: int | None = None


class HaproxyProcess:
    """``haproxy -db -f <rendered haproxy.cfg>``; use as a context manager."""

    def __init__(
        self, tmp: Path, backends: Sequence[Backend], *, health_check: bool = True
    ) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.backends = list(backends)
        self.health_check = health_check
        self.port = free_port()
        self.stats_port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = tmp / "haproxy.crt"
        self.log = tmp / "haproxy.log"
        self.config = tmp / "haproxy.cfg"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- rendering ------------------------------------------------------------------------------

    def _certificate(self) -> Path:
        openssl = require_tool("openssl")
        key = self.tmp / "haproxy.key"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.ca)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        pem = self.tmp / "haproxy.pem"
        pem.write_text(self.ca.read_text() + key.read_text())
        return pem

    def _password_hash(self) -> str:
        return subprocess.run(
            [require_tool("openssl"), "passwd", "-6", "-stdin"],
            input=PASSWORD, check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()  # fmt: skip

    def render(self) -> Path:
        conf = (REPO / "haproxy" / "haproxy.cfg").read_text()
        # a foreground child of the test: no chroot, no user switch, no daemon, no syslog
        for line in ("chroot /var/lib/haproxy", "user haproxy", "group haproxy", "daemon"):
            conf = re.sub(rf"(?m)^\s*{re.escape(line)}\n", "", conf)
        conf = conf.replace("log /dev/log local0", "log stdout format raw local0")
        conf = conf.replace(
            "stats socket /run/haproxy/admin.sock", f"stats socket {self.tmp / 'admin.sock'}"
        )
        conf = conf.replace(
            "bind :443 ssl crt /etc/haproxy/tls/ollama.pem",
            f"bind 127.0.0.1:{self.port} ssl crt {self._certificate()}",
        )
        conf = conf.replace("bind 127.0.0.1:8404", f"bind 127.0.0.1:{self.stats_port}")
        conf = re.sub(r"(?m)^(\s*user alice password ).*$",
                      lambda m: m.group(1) + self._password_hash(), conf)  # fmt: skip
        examples = re.findall(r"(?m)^\s*server (\S+) 10\.0\.0\.\d+:11434$", conf)
        assert len(examples) >= 1, "haproxy.cfg has no example server lines"
        servers = []
        for b in self.backends:
            line = f"    server {b.name} 127.0.0.1:{b.ollama_port} port {b.check_port}"
            line += f" agent-port {b.agent_port}" if b.agent_port else " no-agent-check"
            if not self.health_check:
                line += " no-check"
            servers.append(line)
        conf = re.sub(r"(?m)(^\s*server \S+ 10\.0\.0\.\d+:11434\n)+", "\n".join(servers) + "\n",
                      conf)  # fmt: skip
        self.config.write_text(conf)
        return self.config

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> HaproxyProcess:
        haproxy = require_tool("haproxy")
        self.render()
        check = subprocess.run(
            [haproxy, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [haproxy, "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ},
            )

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                requests.get(f"http://127.0.0.1:{self.stats_port}/stats", timeout=2)
            except requests.ConnectionError:
                return False
            return True

        wait_until(listening, "haproxy listening", timeout=WAIT, interval=0.1)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 10.0)

    def __enter__(self) -> HaproxyProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what HAProxy decided -------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, str]]:
        """The stats CSV of backend ``ollama``, by server name."""
        text = requests.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=10).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            r["svname"]: r for r in rows if r["pxname"] == "ollama" and r["svname"] != "BACKEND"
        }

    def status(self, server: str) -> str:
        """UP, DOWN, MAINT, DRAIN, ... (HAProxy's words, transitions like "UP 1/2" included)."""
        return self.stats()[server]["status"]

    def sent(self, server: str) -> int:
        """Requests HAProxy has sent to the server so far (its ``stot``)."""
        return int(self.stats()[server]["stot"])

    def wait_status(self, server: str, prefix: str, timeout: float = WAIT) -> str:
        """Wait until the server's status starts with ``prefix``; returns the status."""
        return wait_until(
            lambda: (s := self.status(server)).startswith(prefix) and s,
            f"haproxy server {server} {prefix}",
            timeout=timeout,
            interval=0.2,
        )

    # -- a client of the proxy ------------------------------------------------------------------

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", WAIT)
        return requests.request(
            method, self.url + path, auth=(USER, PASSWORD), verify=str(self.ca), **kw
        )
