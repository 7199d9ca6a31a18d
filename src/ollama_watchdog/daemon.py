"""The daemon: wires collectors, the exporter, the restart watchdog and systemd together.

Threads (STYLE.md): one runner thread per collector (each on its own interval, with a deadline),
the exporter's HTTP server, the log follower's own thread, the restart command's thread, and the
main loop here. Collector results travel through the ``SnapshotStore``; probe outcomes that feed
the restart policy travel through a queue to the main loop, the only thread that touches the
``Watchdog``.

systemd (DESIGN.md "systemd"): ``READY=1`` once the exporter listens, ``WATCHDOG=1`` from the main
loop only while the loop and the liveness prober make progress (a wedged prober must get the
watchdog itself restarted, or nobody would notice Ollama hanging), ``STATUS=`` one sentence,
``STOPPING=1`` on shutdown. SIGTERM/SIGINT stop within 2 s; SIGHUP reloads the config: a bad new
config is refused with one error event and the old one stays in force.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.collectors import BackgroundCollector, Collector
from ollama_watchdog.collectors.api import ApiCollector, ProbeOutcome
from ollama_watchdog.config import Config, ConfigError, load_config
from ollama_watchdog.exporter.http import CollectorResult, Exporter, SnapshotStore, WebAuth
from ollama_watchdog.healing.watchdog import RestartAction, Watchdog
from ollama_watchdog.ollama.api import OllamaClient

log = structlog.get_logger()

# How often the main loop turns when systemd sets no WATCHDOG_USEC; also its upper bound.
_MAX_TICK = 1.0


@dataclass(frozen=True)
class Scheduled:
    """A collector with its cadence and deadline."""

    collector: Collector
    interval: float
    timeout: float


class CollectorRunner:
    """Runs one collector every ``interval`` on its own thread and publishes each result.

    A run that outlives ``timeout`` is published as failed at once (its families dropped, so no
    stale values are served) and logged once; the thread stays with the stuck call, and the
    run's own result is published whenever it finally returns. No new run starts meanwhile.
    """

    def __init__(self, item: Scheduled, store: SnapshotStore, stop: threading.Event) -> None:
        self.item = item
        self._store = store
        self._stop = stop
        self._halt = threading.Event()  # this runner only (config reload)
        self._wake = threading.Event()
        self.started_at: float | None = None  # monotonic start of the run in progress
        self.last_finished: float = time.monotonic()
        self._timed_out = False
        self._failing = False
        self._thread = threading.Thread(
            target=self._loop, name=f"collector-{item.collector.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.item.collector.name

    def start(self) -> None:
        self._thread.start()

    def run_now(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._halt.set()
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        # fixed cadence, start to start (a slow run does not push every later one back), so
        # failure_threshold failed probes take failure_threshold x interval, as documented
        next_run = time.monotonic()
        while not (self._stop.is_set() or self._halt.is_set()):
            self._run_once()
            next_run = max(next_run + self.item.interval, time.monotonic())
            self._wake.wait(max(0.0, next_run - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                next_run = time.monotonic()

    def _run_once(self) -> None:
        start = time.monotonic()
        self.started_at = start
        success = True
        families: Sequence[Metric] = ()
        try:
            families = self.item.collector.collect()
        except Exception as exc:  # a collector never takes the loop down
            success = False
            if not self._failing:
                log.error(
                    "collector_failed", collector=self.name, error=f"{type(exc).__name__}: {exc}"
                )
        else:
            if self._failing or self._timed_out:
                log.info("collector_recovered", collector=self.name)
        self._failing = not success
        self._timed_out = False
        end = time.monotonic()
        self.started_at = None
        self.last_finished = end
        if self._halt.is_set():
            return  # replaced by a reload meanwhile: its result must not land
        self._store.publish(
            CollectorResult(self.name, tuple(families), success, end - start, time.time())
        )

    def check_deadline(self, now: float) -> None:
        """Called by the main loop: publish a failure for a run past its deadline."""
        started = self.started_at
        if started is None or self._timed_out or now - started <= self.item.timeout:
            return
        self._timed_out = True
        log.error("collector_timeout", collector=self.name, timeout_s=self.item.timeout)
        self._store.publish(CollectorResult(self.name, (), False, now - started, time.time()))


class Notifier:
    """sd_notify through the ``sdnotify`` package; silent when NOTIFY_SOCKET is unset."""

    def __init__(self) -> None:
        import sdnotify

        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier()
        self._last_status = ""

    def send(self, text: str) -> None:
        if self._enabled:
            self._n.notify(text)

    def status(self, sentence: str) -> None:
        if sentence != self._last_status:
            self._last_status = sentence
            self.send("STATUS=" + sentence)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec for this process, or None when not supervised."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


def _status_sentence(api: ApiCollector, wd: Watchdog, config: Config) -> str:
    st = api.state
    live = st.liveness
    if live is None:
        head = "waiting for the first probe of " + config.ollama.url
    elif live.ok:
        models = (
            ""
            if st.loaded is None
            else f", {len(st.loaded)} model" + ("" if len(st.loaded) == 1 else "s") + " loaded"
        )
        head = f"ollama {st.version or '?'} up{models}, last probe {live.duration * 1000:.0f} ms"
    else:
        head = f"ollama down ({live.reason}: {live.error})"
    policy = wd.status()
    return head if not policy else f"{head}; {policy}"


class Daemon:
    """``ollama-watchdog run``."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        dry_run: bool = False,
        build_extra: Callable[[Config, Callable[[bool, str | None], None]], list[Scheduled]]
        | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.dry_run = dry_run
        self._build_extra = build_extra or default_extra_collectors
        self.store = SnapshotStore()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wakeup = threading.Event()
        self._liveness: queue.SimpleQueue[ProbeOutcome] = queue.SimpleQueue()
        self._deep: queue.SimpleQueue[tuple[bool, str | None]] = queue.SimpleQueue()
        self._notifier = Notifier()
        self._runners: list[CollectorRunner] = []
        self._background: list[BackgroundCollector] = []
        self._reload_ok = True
        self._reload_ok_at = time.time()
        self._loop_heartbeat = time.monotonic()
        self.exporter: Exporter | None = None
        self.watchdog = self._make_watchdog(config)
        self.api: ApiCollector | None = None
        self._client: OllamaClient | None = None

    # -- construction ---------------------------------------------------------------------------

    def _make_watchdog(self, config: Config) -> Watchdog:
        action = RestartAction.from_config(config.watchdog, dry_run=self.dry_run)
        return Watchdog(config.watchdog, action)

    def _start_collectors(self, config: Config) -> None:
        self._client = OllamaClient(config.ollama.url, config.ollama.timeout)
        self.api = ApiCollector(self._client, on_liveness=self._on_liveness)
        items = [Scheduled(self.api, config.probe.interval, config.ollama.timeout * 3 + 1)]
        items += self._build_extra(config, self._on_deep)
        for item in items:
            c = item.collector
            if isinstance(c, BackgroundCollector):
                c.start()
                self._background.append(c)
            runner = CollectorRunner(item, self.store, self._stop)
            self._runners.append(runner)
            runner.start()

    def _stop_collectors(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for bg in self._background:
            try:
                bg.stop()
            except Exception as exc:  # stopping must go on for the others
                log.error("collector_stop_failed", collector=bg.name, error=str(exc))
        for r in self._runners:
            r.join(max(0.0, deadline - time.monotonic()))
        for r in self._runners:
            self.store.remove(r.name)
        self._runners = []
        self._background = []
        if self._client is not None:
            self._client.close()

    def _web_auth(self, config: Config) -> WebAuth | None:
        if not config.exporter.web_config:
            return None
        from ollama_watchdog.exporter.webconfig import load_web_config

        return load_web_config(Path(config.exporter.web_config))

    # -- running --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Bind the exporter (raises OSError when the port is taken) — before anything starts."""
        self.exporter = Exporter(
            self.config.exporter.listen, self.store, self.health, self._web_auth(self.config)
        )

    def health(self) -> tuple[bool, str]:
        age = time.monotonic() - self._loop_heartbeat
        if age > max(10.0, _MAX_TICK * 10):
            return False, f"main loop stalled for {age:.0f}s"
        return True, "ok"

    def request_stop(self) -> None:
        self._stop.set()
        self._wakeup.set()

    def request_reload(self) -> None:
        self._reload.set()
        self._wakeup.set()

    # Probe outcomes wake the main loop at once: the restart decision is not left waiting for
    # the next tick (up to a second of detection latency otherwise).
    def _on_liveness(self, outcome: ProbeOutcome) -> None:
        self._liveness.put(outcome)
        self._wakeup.set()

    def _on_deep(self, ok: bool, error: str | None) -> None:
        self._deep.put((ok, error))
        self._wakeup.set()

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def run(self) -> int:
        if self.exporter is None:
            self.prepare()
        assert self.exporter is not None
        self.exporter.start()
        self._start_collectors(self.config)
        self._publish_self_metrics()
        log.info(
            "started",
            listen=f"{self.exporter.scheme}://{self.config.exporter.listen}",
            ollama=self.config.ollama.url,
            dry_run=self.dry_run,
            watchdog_enabled=self.config.watchdog.enabled,
        )
        self._notifier.send("READY=1")
        tick = min(_MAX_TICK, watchdog_interval() or _MAX_TICK)
        try:
            while not self._stop.is_set():
                self._turn()
                self._wakeup.wait(tick)
                self._wakeup.clear()
        finally:
            self._shutdown()
        return 0

    def _turn(self) -> None:
        now = time.monotonic()
        self._loop_heartbeat = now
        while True:
            try:
                outcome = self._liveness.get_nowait()
            except queue.Empty:
                break
            error = None if outcome.ok else f"{outcome.reason}: {outcome.error}"
            self.watchdog.observe_liveness(outcome.ok, error)
        while True:
            try:
                ok, err = self._deep.get_nowait()
            except queue.Empty:
                break
            self.watchdog.observe_deep(ok, err)
        self.watchdog.tick()
        for r in self._runners:
            r.check_deadline(now)
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload()
        self._publish_self_metrics()
        assert self.api is not None
        self._notifier.status(_status_sentence(self.api, self.watchdog, self.config))
        if self._prober_alive(now):
            self._notifier.send("WATCHDOG=1")

    def _prober_alive(self, now: float) -> bool:
        for r in self._runners:
            if r.item.collector is self.api:
                limit = r.item.interval + r.item.timeout + 10.0
                started = r.started_at
                return started is None or now - started <= limit
        return True

    def _publish_self_metrics(self) -> None:
        ok = GaugeMetricFamily(
            "ollama_watchdog_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded.",
        )
        ok.add_metric([], 1.0 if self._reload_ok else 0.0)
        at = GaugeMetricFamily(
            "ollama_watchdog_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully, as a Unix time.",
        )
        at.add_metric([], self._reload_ok_at)
        self.store.publish_extra("config", [ok, at])
        self.store.publish_extra("watchdog", self.watchdog.collect())

    def _do_reload(self) -> None:
        try:
            new = load_config(self.config_path)
            if new.exporter != self.config.exporter:
                # a new port or TLS setup needs a fresh socket; everything else applies now
                log.warning(
                    "reload_exporter_unchanged",
                    hint="exporter.listen and exporter.web_config take effect on restart",
                )
                new = replace(new, exporter=self.config.exporter)
        except ConfigError as exc:
            self._reload_ok = False
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            return
        self._stop_collectors(timeout=1.5)
        if new.watchdog != self.config.watchdog:
            self.watchdog.wait_for_restart(0)
            self.watchdog = self._make_watchdog(new)
        self.config = new
        self._start_collectors(new)
        self._reload_ok = True
        self._reload_ok_at = time.time()
        log.info("reloaded", config=str(self.config_path))

    def _shutdown(self) -> None:
        self._notifier.send("STOPPING=1")
        log.info("stopping")
        if self.exporter is not None:
            self.exporter.stop(timeout=0.5)
        self._stop_collectors(timeout=1.0)


def default_extra_collectors(
    config: Config, on_deep: Callable[[bool, str | None], None]
) -> list[Scheduled]:
    """Process, GPU, log and deep-probe collectors, as the config enables them."""
    from ollama_watchdog.collectors.gpu import GpuCollector
    from ollama_watchdog.collectors.logs import LogsCollector
    from ollama_watchdog.collectors.probe import DeepProbeCollector, DeepProbeResult
    from ollama_watchdog.collectors.process import ProcessCollector, SystemdMainPid

    main_pid = SystemdMainPid(config.ollama.unit) if config.ollama.unit else None
    process = ProcessCollector(config.ollama.models_dir, main_pid=main_pid)
    items = [Scheduled(process, config.probe.interval, 10.0)]
    if config.gpu.enabled != "false":
        gpu = GpuCollector(process.ollama_pids, required=config.gpu.enabled == "true")
        # NVML runs with its own deadline inside the collector; this one is a backstop
        items.append(Scheduled(gpu, config.probe.interval, 10.0))
    if config.logs.source != "none":
        logs = LogsCollector(
            config.logs.source,  # type: ignore[arg-type]  # validated by config.py
            path=config.logs.path,
            state_dir=config.logs.state_dir,
            models_dir=config.ollama.models_dir,
            unit=config.ollama.unit,
        )
        # collect() only copies counters: cheap, so as often as the probes
        items.append(Scheduled(logs, config.probe.interval, 5.0))
    if config.probe.deep_model:

        def forward(r: DeepProbeResult) -> None:
            on_deep(r.ok, None if r.ok else f"{r.reason}: {r.error}")

        deep = DeepProbeCollector(
            OllamaClient(config.ollama.url, config.probe.deep_timeout),
            config.probe.deep_model,
            config.probe.deep_timeout,
            on_result=forward,
        )
        items.append(Scheduled(deep, config.probe.deep_interval, config.probe.deep_timeout + 5))
    return items


__all__ = ["CollectorRunner", "Daemon", "Scheduled", "default_extra_collectors"]
