"""A real ``prometheus`` for tests: scrape configs in, a temp TSDB, its own process group.

``PrometheusProcess(tmp, scrape_configs)`` writes the config (1 s scrape and evaluation
intervals unless the scrape configs say otherwise), optionally a ``--web.config.file`` (TLS,
basic auth), starts the server on a free port and waits for ``/-/ready``. ``query`` and
``wait_query`` go through ``/api/v1/query``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

from ollama_watchdog.procgroup import stop_process_group

from .tools import free_port, require_tool
from .wait import wait_until

WAIT = 90.0


class PrometheusProcess:
    def __init__(
        self,
        tmp: Path,
        scrape_configs: Sequence[Mapping[str, Any]],
        *,
        rule_files: Sequence[Path] = (),
        web_config: str | None = None,
        scheme: str = "http",
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log = tmp / "prometheus.log"
        self.config = tmp / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in rule_files],
                    "scrape_configs": list(scrape_configs),
                }
            )
        )
        self.web_config: Path | None = None
        if web_config is not None:
            self.web_config = tmp / "web.yml"
            self.web_config.write_text(web_config)
        self.proc: subprocess.Popen[bytes] | None = None
        #: how the test itself talks to it (TLS CA, basic auth) when a web config is in force
        self.client_kwargs: dict[str, Any] = {}

    def start(self) -> PrometheusProcess:
        binary = require_tool("prometheus")
        argv = [
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        if self.web_config is not None:
            argv.append(f"--web.config.file={self.web_config}")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.wait(
            lambda: requests.get(f"{self.url}/-/ready", timeout=2, **self.client_kwargs).ok,
            "ready",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 15.0, reap_timeout=5.0)

    def __enter__(self) -> PrometheusProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def wait(self, condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        """Wait for ``condition`` (an unreachable prometheus is "not yet"); fail with its log."""

        def check() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "prometheus exited"
            try:
                return bool(condition())
            except requests.RequestException:
                return False

        try:
            wait_until(check, f"prometheus {what}", timeout=timeout, interval=0.25)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log.read_text()[-2000:]}") from None

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(
            f"{self.url}/api/v1/query", params={"query": expr}, timeout=30, **self.client_kwargs
        )
        body: dict[str, Any] = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result
