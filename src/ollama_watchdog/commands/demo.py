"""``ollama-watchdog demo``: the simulator and the daemon together, no real Ollama needed.

The simulator runs as a child process under a small supervisor that plays systemd's part
(``Restart=always``): when the simulator exits, it is started again. The daemon's restart
command stops the simulator through its pid file, so a hang injected on the control port is
detected, the simulator is really restarted, and health returns — the whole story in one
terminal.

What the operator sees: on a terminal, one live status line (state, up, inference requests/s,
5xx answers, restarts) redrawn in place, the watchdog's JSON log going to a file; not on a
terminal, the JSON log lines on stderr as before. ``--tour`` walks through four faults (hang,
busy, runner crash, out of memory) and for each reads the daemon's ``/metrics`` before and after
and names the alerts of ``prometheus/alerts.yml`` built on what moved; ``--prometheus`` also
runs a real Prometheus with the shipped rules scraping the demo every second, and prints the
alerts it fires. A little traffic (one short generation a second) keeps the request counters
moving.

The timings are the demo's, not production's (``DEMO_TIMINGS``; README "The demo").

The simulator is started through the stand-in ``ollama`` script (``simulator.standin``) in the
work dir, so its argv reads ``python .../ollama serve`` and the process collector finds it and
its runners as it would find Ollama. The script serves in-process (no extra fork), so the pid
in the pid file is the simulator's own.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import requests
import yaml

from ollama_watchdog.config import (
    Config,
    ExporterConfig,
    GpuConfig,
    GpuMode,
    HealingConfig,
    LogsConfig,
    LogSource,
    OllamaConfig,
    ProbeConfig,
    WatchdogConfig,
    parse_listen,
)
from ollama_watchdog.exporter.scrape import Samples, sample, scrape, total
from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.simulator.protocol import SCHEDULED_ROUTES
from ollama_watchdog.simulator.standin import write_standin

#: the demo's timings next to production's defaults (``[probe]``/``[watchdog]``), for the banner
#: and the README: the demo acts in seconds so that a fault's whole story fits in a minute
DEMO_TIMINGS: tuple[tuple[str, str, str], ...] = (
    ("probe.interval", "2s", "10s"),
    ("watchdog.failure_threshold", "3", "3"),
    ("watchdog.startup_grace", "5s", "30s"),
    ("watchdog.backoff_initial", "5s", "10s"),
    ("watchdog.restart_window", "10m", "30m"),
    ("Prometheus scrape/evaluation (--prometheus)", "1s", "15s-60s"),
)


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
        # the simulator's models report size_vram 0: on a host with GPUs that would read as a
        # CPU fallback and restart the demo's Ollama for no fault of the tour's
        healing=HealingConfig(cpu_fallback=False),
    )


# --------------------------------------------------------------------------------------------
# reading the daemon back


@dataclass(frozen=True, slots=True)
class Status:
    """What the status line shows, from one scrape of the daemon's /metrics."""

    state: str
    up: float | None
    inference_requests: float
    errors: float
    restarts: float
    at: float


def inference_requests(samples: Samples) -> float:
    """Requests to the routes that run a model (generate, chat, embed), any status."""
    return sum(total(samples, "ollama_http_requests_total", route=r) for r in SCHEDULED_ROUTES)


def server_errors(samples: Samples, *, inference_only: bool = False) -> float:
    """Requests answered 5xx (all routes, or the inference routes only)."""
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "ollama_http_requests_total"
        and dict(labels).get("code", "").startswith("5")
        and (not inference_only or dict(labels).get("route") in SCHEDULED_ROUTES)
    )


def watchdog_state(samples: Samples) -> str:
    for (name, labels), value in samples.items():
        if name == "ollama_watchdog_state" and value == 1:
            return dict(labels).get("state", "?")
    return "?"


def read_status(samples: Samples, at: float) -> Status:
    return Status(
        state=watchdog_state(samples),
        up=sample(samples, "ollama_up"),
        inference_requests=inference_requests(samples),
        errors=server_errors(samples),
        restarts=total(samples, "ollama_watchdog_restarts_total"),
        at=at,
    )


def render_status(now: Status, before: Status | None, firing: Sequence[str] = ()) -> str:
    """The one status line: ``state healthy | up 1 | 1.0 req/s | 5xx 0 | restarts 0``."""
    rate = 0.0
    if before is not None and now.at > before.at:
        rate = max(0.0, now.inference_requests - before.inference_requests) / (now.at - before.at)
    up = "?" if now.up is None else f"{now.up:g}"
    line = (
        f"state {now.state:<11} | up {up} | {rate:4.1f} req/s | 5xx {now.errors:g} | "
        f"restarts {now.restarts:g}"
    )
    if firing:
        line += " | firing: " + ", ".join(firing)
    return line


# --------------------------------------------------------------------------------------------
# the alerts that are built on a metric


def find_rules_dir(explicit: Path | None = None) -> Path | None:
    """prometheus/ of the source tree, or where the installer puts it."""
    candidates = [explicit] if explicit is not None else [
        Path(__file__).resolve().parents[3] / "prometheus",
        Path("/usr/share/ollama-watchdog/prometheus"),
    ]
    for directory in candidates:
        if directory is not None and (directory / "alerts.yml").is_file():
            return directory
    return None


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    severity: str
    hold: str  # the rule's `for:`, "" when it fires at once
    expr: str


def load_rules(rules_dir: Path) -> tuple[list[AlertRule], dict[str, str]]:
    """(alerts, recording rules by name) of alerts.yml and recordings.yml."""
    alerts: list[AlertRule] = []
    records: dict[str, str] = {}
    for name in ("alerts.yml", "recordings.yml"):
        path = rules_dir / name
        if not path.is_file():
            continue
        doc = yaml.safe_load(path.read_text()) or {}
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                if "alert" in rule:
                    alerts.append(AlertRule(
                        str(rule["alert"]), str((rule.get("labels") or {}).get("severity", "")),
                        str(rule.get("for", "")), str(rule.get("expr", "")),
                    ))  # fmt: skip
                elif "record" in rule:
                    records[str(rule["record"])] = str(rule.get("expr", ""))
    return alerts, records


def _mentions(expr: str, metric: str) -> bool:
    return re.search(rf"(?<![\w:]){re.escape(metric)}(?![\w:])", expr) is not None


def alerts_on(metric: str, alerts: Sequence[AlertRule], records: dict[str, str]) -> list[AlertRule]:
    """Alerts whose expression uses ``metric``, directly or through a recording rule."""
    via = [r for r, expr in records.items() if _mentions(expr, metric)]
    return [
        a for a in alerts
        if _mentions(a.expr, metric) or any(_mentions(a.expr, r) for r in via)
    ]  # fmt: skip


def describe_alert(a: AlertRule) -> str:
    hold = f"once it holds {a.hold}" if a.hold else "at once"
    return f"{a.name} ({a.severity or 'no severity'}, {hold})"


# --------------------------------------------------------------------------------------------
# traffic: one short generation a second, so that requests/s and errors mean something


class Traffic:
    """A client sending one small generation every ``interval`` seconds (never its text out)."""

    def __init__(self, url: str, interval: float = 1.0) -> None:
        self.url = url
        self.interval = interval
        self.model = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)
        self._session = requests.Session()

    def start(self) -> None:
        self._thread.start()

    def _pick_model(self) -> str:
        try:
            models = self._session.get(self.url + "/api/tags", timeout=5).json()["models"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return ""
        names = [str(m.get("name", "")) for m in models if isinstance(m, dict)]
        chat = [n for n in names if n and "embed" not in n]
        return chat[0] if chat else ""

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.model:
                self.model = self._pick_model()
            if self.model:
                with contextlib.suppress(requests.RequestException):
                    self._session.post(
                        self.url + "/api/generate",
                        json={"model": self.model, "prompt": "Say hi.", "stream": False,
                              "options": {"num_predict": 4}},
                        timeout=10,
                    ).close()  # fmt: skip
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(12)
        self._session.close()


# --------------------------------------------------------------------------------------------
# Prometheus with the shipped rules (--prometheus)


class DemoPrometheus:
    """A real Prometheus: the shipped rules, the demo's exporter scraped every second."""

    def __init__(self, binary: str, rules_dir: Path, target: str, listen: str, work: Path) -> None:
        self.url = f"http://{listen}"
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_dir / "recordings.yml"), str(rules_dir / "alerts.yml")],
            "scrape_configs": [
                {"job_name": "ollama-watchdog", "static_configs": [{"targets": [target]}]}
            ],
        }, sort_keys=False))  # fmt: skip
        self.log = work / "prometheus.log"
        self.argv = [
            binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address={listen}",
        ]  # fmt: skip
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self._proc.returncode}: {self._tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout:g}s: {self._tail()}")

    def wait_scraping(self, target: str, timeout: float, stop: threading.Event) -> bool:
        """Until Prometheus holds two samples of the target: a counter's first sample must
        come before the fault, or ``increase()`` never sees it move."""
        query = f'count_over_time(up{{job="ollama-watchdog",instance="{target}"}}[1m]) >= 2'
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.is_set():
            with contextlib.suppress(requests.RequestException, ValueError, KeyError, TypeError):
                doc = requests.get(
                    self.url + "/api/v1/query", params={"query": query}, timeout=5
                ).json()
                if doc["data"]["result"]:
                    return True
            stop.wait(0.5)
        return False

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " / ".join(text.strip().splitlines()[-3:])

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts about a problem (``/api/v1/alerts``); [] when it does not
        answer. Alerts of severity ``none`` (the always-firing OllamaDeadMansSwitch heartbeat,
        OllamaMaintenance) are for Alertmanager, not news about a fault, and are left out."""
        try:
            doc = requests.get(self.url + "/api/v1/alerts", timeout=5).json()
            alerts = doc["data"]["alerts"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return []
        return [
            a
            for a in alerts
            if isinstance(a, dict) and (a.get("labels") or {}).get("severity") != "none"
        ]

    def firing(self) -> list[str]:
        return sorted({
            str(a.get("labels", {}).get("alertname", "?"))
            for a in self.alerts() if a.get("state") == "firing"
        })  # fmt: skip

    def stop(self) -> None:
        if self._proc is not None:
            stop_process_group(self._proc, 5.0)


def describe_firing(alert: dict[str, Any]) -> str:
    labels = dict(alert.get("labels") or {})
    name = labels.pop("alertname", "?")
    for noise in ("instance", "job"):
        labels.pop(noise, None)
    shown = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    summary = str((alert.get("annotations") or {}).get("summary", ""))
    return f"{str(alert.get('state', '?')).upper()} {name}{{{shown}}}: {summary}"


# --------------------------------------------------------------------------------------------
# the tour


@dataclass(frozen=True, slots=True)
class Watch:
    """A metric the fault moves: how to read it, and what counts as moved."""

    label: str
    metric: str
    read: Callable[[Samples], float]
    moved: Callable[[float, float], bool]  # (before, now)


def _watch_counter(label: str, metric: str, read: Callable[[Samples], float]) -> Watch:
    return Watch(label, metric, read, lambda before, now: now > before)


def _up(samples: Samples) -> float:
    value = sample(samples, "ollama_up")
    return -1.0 if value is None else value


@dataclass(frozen=True, slots=True)
class Step:
    fault: str
    title: str
    story: str
    watches: tuple[Watch, ...]
    lesson: str
    unload_first: bool = False


STEPS: tuple[Step, ...] = (
    Step(
        "hang", "hang: Ollama accepts connections and never answers",
        "the classic wedge (GPU discovery stuck, a runner deadlock): systemd sees a running "
        "process, so Restart=always does nothing",
        (
            Watch("ollama_up", "ollama_up", _up, lambda before, now: now == 0),
            _watch_counter(
                'ollama_watchdog_restarts_total{reason="liveness"}',
                "ollama_watchdog_restarts_total",
                lambda s: total(s, "ollama_watchdog_restarts_total", reason="liveness"),
            ),
        ),
        "failure_threshold failed probes, then one restart; the restarted Ollama answers "
        "again (demo: 2s probes; production: 10s probes and 30s start-up grace, so about a "
        "minute from hang to restart)",
    ),
    Step(
        "busy", "busy: the queue is full, every generation gets 503",
        "users are down while /api/version still answers: liveness stays green",
        (
            _watch_counter(
                'ollama_http_requests_total{code="503"} on inference routes',
                "ollama_http_requests_total",
                lambda s: sum(
                    total(s, "ollama_http_requests_total", route=r, code="503")
                    for r in SCHEDULED_ROUTES
                ),
            ),
        ),
        "no restart (a restart would not empty a queue of real users); only the request "
        "counters, read from Ollama's log, show the outage",
    ),
    Step(
        "runner_crash", "runner crash: the model's runner process dies",
        "the server stays up; requests using the model get 500 until it is loaded again",
        (
            _watch_counter(
                "ollama_runner_errors_total", "ollama_runner_errors_total",
                lambda s: total(s, "ollama_runner_errors_total"),
            ),
            _watch_counter(
                "5xx answers on inference routes", "ollama_http_requests_total",
                lambda s: server_errors(s, inference_only=True),
            ),
        ),
        "Ollama reloads the model on the next request; the error counters keep the evidence",
    ),
    Step(
        "oom", "out of memory: the model no longer fits when it is loaded again",
        "the model is unloaded, and its next load fails for memory (cudaMalloc / "
        "ggml_backend alloc failed)",
        (
            _watch_counter(
                'ollama_runner_errors_total{kind="out_of_memory"}', "ollama_runner_errors_total",
                lambda s: total(s, "ollama_runner_errors_total", kind="out_of_memory"),
            ),
        ),
        "a smaller model, a lower num_ctx or fewer parallel requests fix it; a restart does not",
        unload_first=True,
    ),
)

STEP_NAMES = tuple(step.fault for step in STEPS)


class DemoStack:
    """The running demo as the tour and the status line use it."""

    def __init__(
        self,
        metrics_url: str,
        ollama_url: str,
        control_url: str,
        traffic: Traffic,
        prometheus: DemoPrometheus | None,
        stop: threading.Event,
    ) -> None:
        self.metrics_url = metrics_url
        #: host:port Prometheus scrapes
        self.target = metrics_url.removeprefix("http://").removesuffix("/metrics")
        self.ollama_url = ollama_url
        self.control_url = control_url
        self.traffic = traffic
        self.prometheus = prometheus
        self.stop = stop

    def samples(self) -> Samples:
        got, _ = scrape(self.metrics_url, 5.0)
        return got or {}

    def set_fault(self, name: str, timeout: float = 20.0) -> bool:
        """Set the simulator's fault; retried while it restarts (its control port is down)."""
        deadline = time.monotonic() + timeout
        while not self.stop.is_set():
            try:
                requests.post(self.control_url + "/fault", json={"fault": name}, timeout=5).close()
                return True
            except requests.RequestException:
                if time.monotonic() > deadline:
                    return False
                self.stop.wait(0.5)
        return False

    def unload(self, model: str) -> None:
        with contextlib.suppress(requests.RequestException):
            requests.post(
                self.ollama_url + "/api/generate",
                json={"model": model, "keep_alive": 0, "stream": False}, timeout=10,
            ).close()  # fmt: skip

    def wait(self, ready: Callable[[Samples], bool], timeout: float) -> Samples | None:
        """Poll /metrics until ``ready``; the samples then, or None at the deadline/stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop.is_set():
            got = self.samples()
            if got and ready(got):
                return got
            self.stop.wait(0.5)
        return None

    def healthy(self, samples: Samples) -> bool:
        return _up(samples) == 1 and watchdog_state(samples) == "healthy"


def changed_series(before: Samples, after: Samples, metric: str) -> list[str]:
    """``name{labels} old -> new`` for each series of ``metric`` whose value changed."""
    out: list[str] = []
    for (name, labels), value in sorted(after.items()):
        if name != metric:
            continue
        old = before.get((name, labels), 0.0)
        if old != value:
            shown = ",".join(f'{k}="{v}"' for k, v in labels)
            out.append(f"{name}{{{shown}}} {old:g} -> {value:g}")
    return out


def _moved_from(watch: Watch, before: float) -> Callable[[Samples], bool]:
    def moved(samples: Samples) -> bool:
        return watch.moved(before, watch.read(samples))

    return moved


def run_tour(
    stack: DemoStack,
    steps: Sequence[Step],
    alerts: Sequence[AlertRule],
    records: dict[str, str],
    out: IO[str],
    step_timeout: float = 90.0,
) -> int:
    """Each fault in turn: inject, show what moved (before → after), name the alerts, heal."""

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("tour: waiting for the watchdog to see a healthy Ollama ...")
    if stack.wait(stack.healthy, step_timeout) is None:
        say("tour: Ollama never became healthy; stopping")
        return 1
    if stack.prometheus is not None:
        say("tour: waiting for Prometheus to scrape the demo ...")
        if not stack.prometheus.wait_scraping(stack.target, step_timeout, stack.stop):
            say(f"tour: Prometheus does not scrape {stack.target}; stopping")
            return 1
    for number, step in enumerate(steps, 1):
        say()
        say(f"[{number}/{len(steps)}] {step.title}")
        say(f"      {step.story}")
        before = stack.samples()
        if not stack.set_fault(step.fault):
            say(f"      the simulator's control port {stack.control_url} does not answer; stopping")
            return 1
        if step.unload_first:
            stack.unload(stack.traffic.model)  # its next load meets the fault
        say(f"      fault injected: {step.fault}")
        started = time.monotonic()
        for watch in step.watches:
            was = watch.read(before)
            got = stack.wait(_moved_from(watch, was), step_timeout)
            if got is None:
                say(f"      {watch.label}: did not move from {was:g} in {step_timeout:g}s")
                stack.set_fault("none")
                return 1
            now = watch.read(got)
            say(
                f"      metric moved: {watch.label}  {was:g} -> {now:g}  "
                f"(after {time.monotonic() - started:.0f}s)"
            )
            if watch.label == watch.metric:  # a sum over labels: say which series moved
                for series in changed_series(before, got, watch.metric)[:4]:
                    say(f"        {series}")
        latest = stack.samples()
        if step.fault != "hang":
            up, state = _up(latest), watchdog_state(latest)
            say(
                f"      ollama_up is {up:g} and the watchdog state {state}: liveness "
                f"{'still passes' if up == 1 else 'fails'}"
            )
        names = sorted({a.name for w in step.watches for a in alerts_on(w.metric, alerts, records)})
        rules = [a for a in alerts if a.name in names]
        if rules:
            say("      alerts built on it (prometheus/alerts.yml): "
                + "; ".join(describe_alert(a) for a in rules))  # fmt: skip
        else:
            say("      alerts built on it: none found (no prometheus/alerts.yml: --rules DIR)")
        if stack.prometheus is not None:
            seen = [describe_firing(a) for a in stack.prometheus.alerts()]
            say("      Prometheus now: " + ("; ".join(seen) if seen else "no alert pending"))
        say(f"      {step.lesson}")
        stack.set_fault("none")
        if stack.wait(stack.healthy, step_timeout) is None:
            say("      Ollama did not come back healthy; stopping")
            return 1
        say("      cleared: healthy again")
    say()
    if stack.prometheus is not None:
        say("tour: waiting for Prometheus to fire an alert (rules as shipped, 1s evaluation) ...")
        deadline = time.monotonic() + step_timeout
        firing: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not stack.stop.is_set():
            firing = [a for a in stack.prometheus.alerts() if a.get("state") == "firing"]
            if firing:
                break
            stack.stop.wait(1.0)
        if not firing:
            say("tour: no alert fired")
            return 1
        for alert in firing:
            say("  " + describe_firing(alert))
        say(f"  (from {stack.prometheus.url}/api/v1/alerts)")
    say("tour: done")
    return 0


# --------------------------------------------------------------------------------------------
# the live status line


#: seconds over which the status line's requests/s is taken
RATE_WINDOW = 10.0


def run_status_line(stack: DemoStack, out: IO[str], interval: float = 1.0) -> None:
    """Redraw one line in place until ``stack.stop``; state changes stay as lines above it."""
    # the request counters move when the log collector has read the lines (every couple of
    # seconds): the rate is taken over the last 10 s, not between two scrapes
    history: deque[Status] = deque()
    last_state = ""
    while not stack.stop.is_set():
        samples = stack.samples()
        if samples:
            now = read_status(samples, time.monotonic())
            if last_state not in ("", "?") and now.state != last_state:
                stamp = time.strftime("%H:%M:%S")
                out.write(f"\r\x1b[K{stamp} state {last_state} -> {now.state}\n")
            last_state = now.state
            while history and history[0].at < now.at - RATE_WINDOW:
                history.popleft()
            firing = stack.prometheus.firing() if stack.prometheus is not None else []
            before = history[0] if history else None
            out.write("\r\x1b[K" + render_status(now, before, firing))
            out.flush()
            history.append(now)
        stack.stop.wait(interval)
    out.write("\n")
    out.flush()


def _banner(args: argparse.Namespace, config: Config, sup: SimulatorSupervisor,
            log_path: Path | None, prometheus: DemoPrometheus | None) -> str:
    ctl_host, ctl_port = parse_listen(args.control_listen)
    lines = [
        "",
        "ollama-watchdog demo",
        f"  metrics:    http://{args.listen}/metrics",
        f"  simulator:  {config.ollama.url} (a stand-in for Ollama; its log: {sup.logfile})",
    ]
    if log_path is not None:
        lines.append(f"  watchdog log (JSON lines): {log_path}")
    if prometheus is not None:
        lines.append(f"  prometheus: {prometheus.url} (shipped rules; alerts: /alerts)")
    lines += [
        "  timings are the demo's, not production's: "
        + ", ".join(f"{k} {demo} (production {prod})" for k, demo, prod in DEMO_TIMINGS[:3]),
    ]
    if not args.tour:
        lines += [
            "  inject a fault (hang, busy, runner_crash, oom, none) and watch the watchdog:",
            f'    curl -X POST -d \'{{"fault":"hang"}}\' http://{ctl_host}:{ctl_port}/fault',
            "  or run `ollama-watchdog demo --tour`. Ctrl-C stops the demo.",
        ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ollama-watchdog demo``."""
    parser.add_argument(
        "--listen", default="127.0.0.1:9778", help="exporter address (default %(default)s)"
    )
    parser.add_argument(
        "--ollama-listen",
        default="127.0.0.1:11434",
        help="simulator address (default %(default)s)",
    )
    parser.add_argument(
        "--control-listen",
        default="127.0.0.1:11435",
        help="simulator fault-control address (default %(default)s)",
    )
    parser.add_argument(
        "--tour",
        nargs="?",
        const=",".join(STEP_NAMES),
        default=None,
        metavar="STEPS",
        help="walk through the faults, saying which metric moves and which alert would fire, "
        f"then stop; STEPS: a comma list of {', '.join(STEP_NAMES)} (default all)",
    )
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus (`prometheus` on PATH) with the shipped rules scraping the "
        "demo every second, and show the alerts it fires",
    )
    parser.add_argument(
        "--prometheus-listen",
        default="127.0.0.1:9090",
        help="Prometheus address for --prometheus (default %(default)s)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory with alerts.yml and recordings.yml (default: the source tree's "
        "prometheus/, else /usr/share/ollama-watchdog/prometheus)",
    )
    parser.add_argument(
        "--no-traffic", action="store_true", help="send no generations of its own"
    )


def _steps(spec: str | None) -> list[Step]:
    if spec is None:
        return []
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in STEP_NAMES]
    if unknown or not wanted:
        raise ValueError(
            f"--tour {spec!r}: unknown step {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(STEP_NAMES)}"
        )
    return [step for step in STEPS if step.fault in wanted]


@contextlib.contextmanager
def _running(daemon: Any) -> Iterator[threading.Thread]:
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(daemon.run()), name="demo-daemon", daemon=True
    )
    thread.start()
    try:
        yield thread
    finally:
        daemon.request_stop()
        thread.join(15)


def run_demo(args: argparse.Namespace) -> int:
    from ollama_watchdog.daemon import Daemon
    from ollama_watchdog.logging import configure_logging

    try:
        steps = _steps(args.tour)
    except ValueError as exc:
        print(f"ollama-watchdog demo: {exc}", file=sys.stderr)
        return 2
    rules_dir = find_rules_dir(args.rules)
    if args.rules is not None and rules_dir is None:
        print(f"ollama-watchdog demo: no alerts.yml in {args.rules}", file=sys.stderr)
        return 2
    prometheus_bin = shutil.which("prometheus") if args.prometheus else None
    if args.prometheus and prometheus_bin is None:
        print(
            "ollama-watchdog demo: --prometheus needs `prometheus` on PATH "
            "(apt-get install prometheus)",
            file=sys.stderr,
        )
        return 1
    if args.prometheus and rules_dir is None:
        print("ollama-watchdog demo: --prometheus needs the rules: --rules DIR", file=sys.stderr)
        return 2
    interactive = sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="ollama-watchdog-demo-") as tmp, \
            contextlib.ExitStack() as cleanup:  # fmt: skip
        work = Path(tmp)
        log_path: Path | None = None
        if steps or interactive:
            # the status line or the tour is the story; the JSON log goes to a file
            log_path = work / "watchdog.log"
            log_file = cleanup.enter_context(log_path.open("a"))
            configure_logging(stream=log_file, json=True)
        else:
            configure_logging()
        sup = SimulatorSupervisor(args.ollama_listen, args.control_listen, work)
        config = demo_config(args.listen, args.ollama_listen, sup.pidfile, sup.logfile, work)
        daemon = Daemon(config, None)
        try:
            daemon.prepare()
        except OSError as exc:
            print(f"ollama-watchdog demo: cannot listen on {args.listen}: {exc}", file=sys.stderr)
            return 1
        stop = threading.Event()

        def on_stop(signum: int, frame: FrameType | None) -> None:
            stop.set()
            daemon.request_stop()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        sup.start()
        cleanup.callback(sup.stop)
        prometheus: DemoPrometheus | None = None
        if prometheus_bin is not None and rules_dir is not None:
            prometheus = DemoPrometheus(
                prometheus_bin, rules_dir, args.listen, args.prometheus_listen, work
            )
            cleanup.callback(prometheus.stop)
            try:
                prometheus.start()
            except RuntimeError as exc:
                print(f"ollama-watchdog demo: {exc}", file=sys.stderr)
                return 1
        traffic = Traffic(config.ollama.url)
        if not args.no_traffic:
            traffic.start()
            cleanup.callback(traffic.stop)
        ctl_host, ctl_port = parse_listen(args.control_listen)
        stack = DemoStack(
            f"http://{args.listen}/metrics", config.ollama.url,
            f"http://{ctl_host or '127.0.0.1'}:{ctl_port}", traffic, prometheus, stop,
        )  # fmt: skip
        print(_banner(args, config, sup, log_path, prometheus), flush=True)
        with _running(daemon) as thread:
            if steps:
                alerts, records = load_rules(rules_dir) if rules_dir is not None else ([], {})
                return run_tour(stack, steps, alerts, records, sys.stdout)
            if interactive:
                run_status_line(stack, sys.stdout)
                return 0
            while thread.is_alive() and not stop.is_set():
                thread.join(0.5)
            return 0


__all__ = [
    "DEMO_TIMINGS",
    "STEPS",
    "AlertRule",
    "DemoPrometheus",
    "SimulatorSupervisor",
    "Status",
    "add_arguments",
    "alerts_on",
    "demo_config",
    "load_rules",
    "read_status",
    "render_status",
    "run_demo",
    "run_tour",
]
