"""A real Prometheus and a real Alertmanager for tests, each in its own process group.

``PrometheusProcess`` scrapes given targets (or whole scrape configs) every second with the given
rule files, optionally behind a ``--web.config.file`` (TLS, basic auth);
``AlertmanagerProcess`` runs ``prometheus-alertmanager`` (Debian's name) with clustering off.
``shorten`` rewrites durations (``for:``, range selectors, Alertmanager's timers) by a factor,
so the shipped files can be evaluated in seconds with their proportions kept.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import requests
import yaml

from ollama_watchdog.procgroup import stop_process_group

from .tools import free_port, require_tool
from .wait import wait_until

WAIT = 90.0  # generous: a deadline for waiting, never an assertion on speed

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_RANGE = re.compile(r"\[((?:\d+(?:ms|s|m|h|d|w|y))+)(:(?:(?:\d+(?:ms|s|m|h|d|w|y))+)?)?\]")


def duration_seconds(text: str) -> float:
    """``1h30m`` -> 5400.0 (Prometheus' duration syntax)."""
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * _UNITS[u] for n, u in parts)


def short_duration(text: str, factor: float) -> str:
    """``text`` divided by ``factor``, in whole seconds, at least 1s."""
    return f"{max(1, round(duration_seconds(text) / factor))}s"


def shorten_rules(path: Path, factor: float) -> dict[str, Any]:
    """A rule file with every ``for:`` and range selector divided by ``factor``."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())

    def ranges(expr: str) -> str:
        def one(m: re.Match[str]) -> str:
            step = m.group(2) or ""
            if len(step) > 1:
                step = ":" + short_duration(step[1:], factor)
            return f"[{short_duration(m.group(1), factor)}{step}]"

        return _RANGE.sub(one, expr)

    for group in data["groups"]:
        for rule in group["rules"]:
            rule["expr"] = ranges(rule["expr"])
            if "for" in rule:
                rule["for"] = short_duration(rule["for"], factor)
    return data


def shorten_timers(route: dict[str, Any], factor: float) -> None:
    """Alertmanager's group_wait/group_interval/repeat_interval divided by ``factor``."""
    for key in ("group_wait", "group_interval", "repeat_interval"):
        if key in route:
            seconds = duration_seconds(route[key]) if route[key] != "0s" else 0.0
            route[key] = f"{round(seconds / factor)}s" if seconds else "0s"
            if key != "group_wait" and route[key] == "0s":
                route[key] = "1s"
    for child in route.get("routes", []):
        shorten_timers(child, factor)


class _Process:
    """A server process with a log file and a readiness URL."""

    name = "process"

    def __init__(self, tmp: Path, scheme: str = "http") -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.log = tmp / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: how the test itself talks to it (TLS CA, basic auth) when a web config is in force
        self.client_kwargs: dict[str, Any] = {}

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Process:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.wait(
            lambda: requests.get(f"{self.url}/-/ready", timeout=2, **self.client_kwargs).ok,
            "ready",
        )
        return self

    def wait(self, condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
        """Wait for ``condition`` (an unreachable server is "not yet"); fail with its log."""

        def check() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"{self.name} exited"
            try:
                return bool(condition())
            except requests.RequestException:
                return False

        try:
            wait_until(check, f"{self.name} {what}", timeout=timeout, interval=0.5)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{self.log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, 15.0, reap_timeout=5.0)

    def __enter__(self) -> _Process:
        return self.start() if self.proc is None else self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PrometheusProcess(_Process):
    """A real prometheus with a temp storage dir, scraping ``targets`` (one job) or
    ``scrape_configs`` (as written) every second."""

    name = "prometheus"

    def __init__(
        self,
        tmp: Path,
        targets: Sequence[str] = (),
        rule_files: Sequence[Path] = (),
        *,
        job: str = "ollama-watchdog",
        alertmanager: str | None = None,
        history: Mapping[str, float] | None = None,
        history_seconds: float = 4 * 3600,
        scrape_configs: Sequence[Mapping[str, Any]] | None = None,
        web_config: str | None = None,
        scheme: str = "http",
    ) -> None:
        """``history``: series (``name{labels}``) backfilled with a constant value over the
        last ``history_seconds``, so windows longer than the test see a host that was fine.
        """
        super().__init__(tmp, scheme)
        self._history = dict(history or {})
        self._history_seconds = history_seconds
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": (
                [dict(c) for c in scrape_configs]
                if scrape_configs is not None
                else [{"job_name": job, "static_configs": [{"targets": list(targets)}]}]
            ),
        }
        if alertmanager is not None:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]
            }
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.storage = tmp / "tsdb"
        self.web_config: Path | None = None
        if web_config is not None:
            self.web_config = tmp / "web.yml"
            self.web_config.write_text(web_config)

    def start(self) -> PrometheusProcess:
        if self._history:
            self._backfill()
        super().start()
        return self

    def _backfill(self) -> None:
        """Write the history as TSDB blocks with ``promtool tsdb create-blocks-from``."""
        now = int(time.time())
        lines: list[str] = []
        for name in sorted({series.split("{", 1)[0] for series in self._history}):
            lines.append(f"# TYPE {name} gauge")
            for series, value in self._history.items():
                if series.split("{", 1)[0] == name:
                    start = now - int(self._history_seconds)
                    # every second, as the tests scrape: avg_over_time weighs samples, not time
                    lines += [f"{series} {value} {t}" for t in range(start, now - 2)]
        lines.append("# EOF")
        source = self.tmp / "history.om"
        source.write_text("\n".join(lines) + "\n")
        subprocess.run(
            [require_tool("promtool", "prometheus"), "tsdb", "create-blocks-from", "openmetrics",
             str(source), str(self.storage)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def command(self) -> list[str]:
        return [
            require_tool("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # alerts go out again every second while firing (default 1m)
            "--rules.alert.resend-delay=1s",
            *([f"--web.config.file={self.web_config}"] if self.web_config is not None else []),
        ]

    def query(self, expr: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.url}/api/v1/query", params={"query": expr}, timeout=30, **self.client_kwargs
        )
        body: dict[str, Any] = response.json()
        return body

    def result(self, expr: str) -> list[dict[str, Any]]:
        """The ``result`` vector of an instant query that must succeed."""
        body = self.query(expr)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def firing(self) -> set[str]:
        """Names of the alerts firing now."""
        body = requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"}


class AlertmanagerProcess(_Process):
    """``prometheus-alertmanager`` with ``config`` (a dict), clustering off."""

    name = "alertmanager"

    def __init__(self, tmp: Path, config: Mapping[str, Any]) -> None:
        super().__init__(tmp)
        self.config = tmp / "alertmanager.yml"
        self.config.write_text(yaml.safe_dump(dict(config)))
        self.storage = tmp / "am-data"

    def command(self) -> list[str]:
        binary = require_tool("prometheus-alertmanager", "prometheus-alertmanager")
        return [
            binary,
            f"--config.file={self.config}",
            f"--storage.path={self.storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.url}/api/v2/alerts", timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result

    def post(self, alerts: list[dict[str, Any]]) -> None:
        requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=10).raise_for_status()
