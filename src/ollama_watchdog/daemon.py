"""The daemon: wiring only — the registered collectors, the exporter, the healing side, systemd.

Threads (STYLE.md): one runner thread per collector (each on its own interval, with a deadline),
the exporter's HTTP server, the HAProxy agent's (``[fleet] agent_listen``), the log follower's
own thread, the restart action's worker, and the main loop here. Every collector's result (the
healing side's own ``watchdog`` families included) is measured the same way (:func:`measure`)
and published on the ``SnapshotBoard``.
Signals for the healing side travel through one queue to the main loop, the only thread that
touches the ``Watchdog``. After every turn the loop also computes the host's readiness for load
balancers (``healing.readiness``: the latest liveness probe and the watchdog's state) and swaps
it in; ``/ready`` and the HAProxy agent only read that value.

systemd (DESIGN.md "systemd"): ``READY=1`` once the exporter listens; the keep-alive
``WATCHDOG=1`` from the main loop only while the loop and every collector registered with
``keepalive`` (the liveness prober) make progress — a wedged prober must get the daemon itself
restarted, or nobody would notice Ollama hanging; ``STATUS=`` one sentence; ``STOPPING=1`` on
shutdown. SIGTERM/SIGINT stop within 2 s; SIGHUP reloads the config: a bad new config is refused
with one error event and the old one stays in force.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog import statefile
from ollama_watchdog.collectors import (
    REGISTRY,
    BackgroundCollector,
    Closable,
    Collector,
    CollectorPlan,
    Registration,
    StatusSource,
    build_collectors,
)
from ollama_watchdog.collectors.evidence import SystemdUnitState
from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.process import ProcessCollector
from ollama_watchdog.config import Config, ConfigError, LogSource, load_config
from ollama_watchdog.exporter.agent import HaproxyAgent
from ollama_watchdog.exporter.http import CollectorResult, Exporter, SnapshotBoard, WebAuth
from ollama_watchdog.healing.actions import RemedyActions, RestartAction
from ollama_watchdog.healing.fleet import FleetView
from ollama_watchdog.healing.readiness import STARTING, Readiness, readiness
from ollama_watchdog.healing.watchdog import Watchdog
from ollama_watchdog.ollama.api import OllamaClient
from ollama_watchdog.signals import Signal, SignalKind

log = structlog.get_logger()

# How often the main loop turns when systemd sets no WATCHDOG_USEC; also its upper bound.
_MAX_TICK = 1.0


def measure(collector: Collector) -> tuple[CollectorResult, Exception | None]:
    """One run of ``collector``, timed: its result, and the exception if it raised."""
    start = time.monotonic()
    error: Exception | None = None
    families: Sequence[Metric] = ()
    try:
        families = collector.collect()
    except Exception as exc:  # a collector never takes the loop down
        error = exc
    end = time.monotonic()
    result = CollectorResult(
        collector.name, tuple(families), error is None, end - start, time.time()
    )
    return result, error


class CollectorRunner:
    """Runs one collector every ``interval`` on its own thread and publishes each result.

    A run that outlives ``timeout`` is published as failed at once (its families dropped, so no
    stale values are served) and logged once; the thread stays with the stuck call, and the
    run's own result is published whenever it finally returns. No new run starts meanwhile.
    """

    def __init__(self, plan: CollectorPlan, board: SnapshotBoard, stop: threading.Event) -> None:
        self.plan = plan
        self._board = board
        self._stop = stop
        self._halt = threading.Event()  # this runner only (config reload)
        self._wake = threading.Event()
        self.started_at: float | None = None  # monotonic start of the run in progress
        self.last_finished: float = time.monotonic()
        self._timed_out = False
        self._failing = False
        self._thread = threading.Thread(
            target=self._loop, name=f"collector-{plan.collector.name}", daemon=True
        )

    @property
    def name(self) -> str:
        return self.plan.collector.name

    def start(self) -> None:
        self._thread.start()

    def run_now(self) -> None:
        self._wake.set()

    def replan(self, plan: CollectorPlan) -> None:
        """A reload kept this runner's collector: take the new cadence and deadline, keep the
        thread (a run in progress is never doubled by a second thread on the same collector)."""
        assert plan.collector is self.plan.collector
        changed = plan.interval != self.plan.interval
        self.plan = plan
        if changed:
            self._wake.set()  # the next run on the new cadence, not after the old interval

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
            next_run = max(next_run + self.plan.interval, time.monotonic())
            self._wake.wait(max(0.0, next_run - time.monotonic()))
            if self._wake.is_set():
                self._wake.clear()
                next_run = time.monotonic()

    def _run_once(self) -> None:
        self.started_at = time.monotonic()
        result, error = measure(self.plan.collector)
        if error is not None:
            if not self._failing:
                log.error(
                    "collector_failed",
                    collector=self.name,
                    error=f"{type(error).__name__}: {error}",
                )
        elif self._failing or self._timed_out:
            log.info("collector_recovered", collector=self.name)
        self._failing = error is not None
        self._timed_out = False
        self.started_at = None
        self.last_finished = time.monotonic()
        if self._halt.is_set():
            return  # replaced by a reload meanwhile: its result must not land
        self._board.publish(result)

    def check_deadline(self, now: float) -> None:
        """Called by the main loop: publish a failure for a run past its deadline."""
        started = self.started_at
        if started is None or self._timed_out or now - started <= self.plan.timeout:
            return
        self._timed_out = True
        log.error("collector_timeout", collector=self.name, timeout_s=self.plan.timeout)
        self._board.publish(CollectorResult(self.name, (), False, now - started, time.time()))

    def making_progress(self, now: float) -> bool:
        """False once a run has gone on well past its interval and deadline together."""
        started = self.started_at
        limit = self.plan.interval + self.plan.timeout + 10.0
        return started is None or now - started <= limit


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


def keepalive_interval() -> float | None:
    """Half of systemd's ``WatchdogSec`` for this process (how often ``WATCHDOG=1`` is due), or
    None when systemd supervises no keep-alive."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


class DaemonSelf:
    """Collector ``watchdog``: the daemon's own families — the configuration's reload state and
    the healing side's (``Watchdog.collect``). Run by the main loop, which owns both."""

    name = "watchdog"

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Sequence[Metric]:
        d = self._daemon
        ok = GaugeMetricFamily(
            "ollama_watchdog_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded.",
        )
        ok.add_metric([], 1.0 if d.reload_ok else 0.0)
        at = GaugeMetricFamily(
            "ollama_watchdog_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully, as a Unix time.",
        )
        at.add_metric([], d.reload_ok_at)
        ready = GaugeMetricFamily(
            "ollama_watchdog_ready",
            "1 while /ready answers 200: Ollama answers and the host is not draining, in "
            "maintenance, remediating or restarting.",
        )
        ready.add_metric([], 1.0 if d.readiness.ready else 0.0)
        return [ok, at, ready, *statefile.families(), *d.watchdog.collect()]


class Daemon:
    """``ollama-watchdog run``."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        dry_run: bool = False,
        registry: tuple[Registration, ...] = REGISTRY,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.dry_run = dry_run
        self._registry = registry
        self.board = SnapshotBoard()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wakeup = threading.Event()
        self._signals: queue.SimpleQueue[Signal] = queue.SimpleQueue()
        self._notifier = Notifier()
        self._runners: list[CollectorRunner] = []
        self._collectors: list[Collector] = []
        self.reload_ok = True
        self.reload_ok_at = time.time()
        self._loop_heartbeat = time.monotonic()
        self.exporter: Exporter | None = None
        self._pending_watchdog: Config | None = None
        self.agent: HaproxyAgent | None = None
        #: the latest liveness outcome and when it arrived (monotonic); None before the first
        self._live: bool | None = None
        self._live_at = 0.0
        #: read by /ready and the agent from their own threads: replaced whole, never mutated
        self.readiness: Readiness = STARTING
        self.watchdog = self._make_watchdog(config)
        self._self = DaemonSelf(self)

    # -- construction ---------------------------------------------------------------------------

    def _make_watchdog(self, config: Config) -> Watchdog:
        action = RestartAction.from_config(config.watchdog, dry_run=self.dry_run)
        remedies = RemedyActions(
            OllamaClient(config.ollama.url, config.ollama.timeout),
            config.ollama.models_dir,
            config.healing,
            server_pid=self._server_pid,
            gpu_memory=self._gpu_memory,
            dry_run=self.dry_run,
        )
        unit_state = SystemdUnitState(config.ollama.unit) if config.ollama.unit else None
        fleet = FleetView.from_config(config)

        def unit_stopped() -> str | None:
            state = unit_state() if unit_state is not None else None
            if state is None or not state.stopped_on_purpose:
                return None
            return f"{config.ollama.unit} was stopped on purpose ({state.text()})"

        return Watchdog(
            config.watchdog,
            action,
            healing=config.healing,
            remedies=remedies,
            dry_run=self.dry_run,
            state_dir=config.logs.state_dir,
            unit_stopped=unit_stopped,
            progress_known=config.logs.source != LogSource.NONE,
            busy_lookback=config.probe.deep_timeout,
            on_finished=self._probe_now,
            fleet=fleet,
            max_unavailable=config.fleet.max_unavailable,
            drain_timeout=config.fleet.drain_timeout if fleet is not None else None,
            settle=config.fleet.settle,
        )

    def _server_pid(self) -> int | None:
        for c in self._collectors:
            if isinstance(c, ProcessCollector):
                snap = c.snapshot
                return snap.server.pid if snap is not None and snap.server is not None else None
        return None

    def _gpu_memory(self) -> dict[int, int] | None:
        for c in self._collectors:
            if isinstance(c, GpuCollector):
                return c.process_memory()
        return None

    def _probe_now(self) -> None:
        """After an action: probe (and gather evidence) at once, not an interval later."""
        for r in self._runners:
            if r.name in ("api", "probe", "process", "evidence"):
                r.run_now()

    def _start_collectors(self, config: Config, previous: Config | None = None) -> None:
        """Build and start the collectors of ``config``. On a reload (``previous``), those whose
        settings did not change are kept with their runners; the others are stopped first."""
        old_runners = {r.name: r for r in self._runners}
        old = {c.name: c for c in self._collectors}
        plans = build_collectors(
            config,
            self.emit,
            self._registry,
            previous=(previous, old) if previous is not None else None,
        )
        kept = {p.collector.name for p in plans if p.kept}
        self._stop_collectors(timeout=1.5, keep=kept)
        collectors: list[Collector] = []
        runners: list[CollectorRunner] = []
        for plan in plans:
            c = plan.collector
            collectors.append(c)
            if plan.kept:
                runner = old_runners[c.name]
                runner.replan(plan)
            else:
                if isinstance(c, BackgroundCollector):
                    c.start()
                runner = CollectorRunner(plan, self.board, self._stop)
                runner.start()
            runners.append(runner)
        self._collectors = collectors
        self._runners = runners
        if previous is not None:
            log.info("collectors_reloaded", kept=sorted(kept), rebuilt=sorted(set(old) - kept))

    def _stop_collectors(
        self, timeout: float, keep: frozenset[str] | set[str] = frozenset()
    ) -> None:
        """Stop (and close) every collector but those named in ``keep``."""
        deadline = time.monotonic() + timeout
        collectors = [c for c in self._collectors if c.name not in keep]
        runners = [r for r in self._runners if r.name not in keep]
        for c in collectors:
            if isinstance(c, BackgroundCollector):
                try:
                    c.stop()
                except Exception as exc:  # stopping must go on for the others
                    log.error("collector_stop_failed", collector=c.name, error=str(exc))
        for r in runners:
            r.join(max(0.0, deadline - time.monotonic()))
        for r in runners:
            self.board.remove(r.name)
        for c in collectors:
            if isinstance(c, Closable):
                c.close()
        self._runners = [r for r in self._runners if r.name in keep]
        self._collectors = [c for c in self._collectors if c.name in keep]

    def _web_auth(self, config: Config) -> WebAuth | None:
        if not config.exporter.web_config:
            return None
        from ollama_watchdog.exporter.webconfig import load_web_config

        return load_web_config(Path(config.exporter.web_config))

    # -- running --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Bind the exporter and the HAProxy agent (raises OSError when a port is taken) —
        before anything starts."""
        self.exporter = Exporter(
            self.config.exporter.listen,
            self.board,
            self.health,
            self._web_auth(self.config),
            max_connections=self.config.exporter.max_connections,
            request_timeout=self.config.exporter.request_timeout,
            readiness=lambda: self.readiness.as_tuple(),
        )
        if self.config.fleet.agent_listen:
            try:
                self.agent = HaproxyAgent(
                    self.config.fleet.agent_listen, lambda: str(self.readiness.agent_word)
                )
            except BaseException as exc:
                self.exporter.stop(timeout=0.5)
                self.exporter = None
                if isinstance(exc, OSError):
                    # the address travels as filename: the CLI names the right key
                    raise OSError(exc.errno, exc.strerror, self.config.fleet.agent_listen) from exc
                raise

    def _update_readiness(self, now: float) -> None:
        live = self._live
        # a prober wedged past its own deadline must not leave the host "ready" for ever
        stale_after = 3 * self.config.probe.interval + self.config.ollama.timeout
        if live and now - self._live_at > stale_after:
            live = False
        self.readiness = readiness(str(self.watchdog.snapshot().state), live)

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

    def emit(self, sig: Signal) -> None:
        """The signal channel: any collector's thread puts, the main loop takes. A signal wakes
        the loop at once, so a decision is not left waiting for the next tick."""
        self._signals.put(sig)
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
        if self.agent is not None:
            self.agent.start()
        self._start_collectors(self.config)
        self._publish_self()
        log.info(
            "started",
            listen=f"{self.exporter.scheme}://{self.config.exporter.listen}",
            ollama=self.config.ollama.url,
            dry_run=self.dry_run,
            watchdog_enabled=self.config.watchdog.enabled,
            haproxy_agent=self.config.fleet.agent_listen or None,
        )
        self._notifier.send("READY=1")
        tick = min(_MAX_TICK, keepalive_interval() or _MAX_TICK)
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
                sig = self._signals.get_nowait()
            except queue.Empty:
                break
            if sig.kind is SignalKind.LIVENESS:
                self._live, self._live_at = sig.ok, now
            self.watchdog.observe(sig)
        self.watchdog.tick()
        self._swap_watchdog()
        for r in self._runners:
            r.check_deadline(now)
        if self._reload.is_set():
            self._reload.clear()
            self._do_reload()
        self._update_readiness(now)
        self._publish_self()
        self._notifier.status(self._status_sentence())
        if all(r.making_progress(now) for r in self._runners if r.plan.keepalive):
            self._notifier.send("WATCHDOG=1")

    def _status_sentence(self) -> str:
        parts = [c.status() for c in self._collectors if isinstance(c, StatusSource)]
        policy = self.watchdog.status()
        if policy:
            parts.append(policy)
        return "; ".join(p for p in parts if p)

    def _publish_self(self) -> None:
        result, error = measure(self._self)
        if error is not None:
            log.error("collector_failed", collector=self._self.name, error=str(error))
        self.board.publish(result)

    def _do_reload(self) -> None:
        try:
            new = load_config(self.config_path)
            if new.exporter != self.config.exporter:
                # a new port or TLS setup needs a fresh socket; everything else applies now
                log.warning(
                    "reload_exporter_unchanged",
                    hint="[exporter] settings take effect on restart",
                )
                new = replace(new, exporter=self.config.exporter)
            if new.fleet.agent_listen != self.config.fleet.agent_listen:
                log.warning(
                    "reload_agent_unchanged",
                    hint="fleet.agent_listen takes effect on restart",
                )
                new = replace(
                    new, fleet=replace(new.fleet, agent_listen=self.config.fleet.agent_listen)
                )
            view = FleetView.from_config(new)  # a password file that cannot be read: refused
            if view is not None:
                view.close()
        except ConfigError as exc:
            self.reload_ok = False
            log.error("reload_failed", error=str(exc), kept="previous configuration")
            return
        if self._healing_changed(new):
            self._pending_watchdog = new
        self._swap_watchdog()
        previous, self.config = self.config, new
        self._start_collectors(new, previous)
        self.reload_ok = True
        self.reload_ok_at = time.time()
        log.info("reloaded", config=str(self.config_path))

    def _healing_changed(self, new: Config) -> bool:
        old = self.config
        return (
            new.watchdog != old.watchdog
            or new.healing != old.healing
            or new.ollama != old.ollama
            or new.probe.deep_timeout != old.probe.deep_timeout
            or new.logs != old.logs
            or new.fleet != old.fleet
        )

    def _swap_watchdog(self) -> None:
        """Start the new policy once no action is running: a policy that does not know of a
        restart in flight would decide a second one on top of it."""
        pending = self._pending_watchdog
        if pending is None or self.watchdog.busy:
            return
        self._pending_watchdog = None
        fresh = self._make_watchdog(pending)
        fresh.carry_over(self.watchdog)
        self.watchdog = fresh
        log.info("policy_reloaded")

    def _shutdown(self) -> None:
        self._notifier.send("STOPPING=1")
        log.info("stopping")
        if self.exporter is not None:
            self.exporter.stop(timeout=0.5)
        if self.agent is not None:
            self.agent.stop(timeout=0.5)
        self._stop_collectors(timeout=1.0)


__all__ = ["CollectorRunner", "Daemon", "DaemonSelf", "keepalive_interval", "measure"]
