"""Collectors: one module per source, all registered in one table here.

In node_exporter's spirit, :data:`REGISTRY` lists every collector the daemon knows: its name, a
factory, whether it is on with the default configuration, what in the configuration turns it on
or off, and its cadence and deadline. The daemon builds and runs whatever the table and the
configuration enable, each the same way (its own runner thread, a deadline, and
``ollama_watchdog_collector_success`` / ``_duration_seconds``); no collector is special-cased.

To add a collector: write ``collectors/<source>.py`` (a class with ``name`` and ``collect()``,
see ``collectors.base``), then add one :class:`Registration` row below. A collector with evidence
for the healing side emits :class:`~ollama_watchdog.signals.Signal` values through
``Context.emit``.

==========  =========  ==============================================  ========================
name        default    on when                                          source
==========  =========  ==============================================  ========================
api         on         always                                           /api/version, tags, ps
process     on         always                                           /proc (psutil), disk
gpu         on (auto)  ``[gpu] enabled`` is not ``false``               NVML
evidence    on         ``[watchdog] enabled``                           api/process/gpu, systemd
logs        on         ``[logs] source`` is not ``none``                journald or a log file
probe       off        ``[probe] deep_model`` is set                    one tiny /api/generate
==========  =========  ==============================================  ========================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from ollama_watchdog.collectors.api import ApiCollector
from ollama_watchdog.collectors.base import (
    BackgroundCollector,
    Closable,
    Collector,
    StatusSource,
)
from ollama_watchdog.collectors.evidence import EvidenceCollector, SystemdUnitState
from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.logs import LogsCollector
from ollama_watchdog.collectors.probe import DeepProbeCollector
from ollama_watchdog.collectors.process import ProcessCollector, SystemdMainPid
from ollama_watchdog.config import Config, GpuMode, LogSource
from ollama_watchdog.ollama.api import OllamaClient
from ollama_watchdog.signals import Signal


@dataclass(frozen=True)
class Context:
    """What a factory may use: the configuration, the signal channel, earlier collectors."""

    config: Config
    #: puts one signal on the daemon's queue to the healing side (thread-safe, never blocks)
    emit: Callable[[Signal], None]
    #: the collectors built before this one, by name (the GPU collector asks for ``process``)
    built: Mapping[str, Collector]


@dataclass(frozen=True)
class Registration:
    """One row of the table: a collector the daemon can run."""

    name: str
    factory: Callable[[Context], Collector]
    #: on with the default configuration (documentation, and pinned by a test)
    default: bool
    #: whether this configuration turns it on
    enabled: Callable[[Config], bool]
    #: seconds from the start of one run to the start of the next
    interval: Callable[[Config], float]
    #: a run past this many seconds is published as failed
    timeout: Callable[[Config], float]
    #: systemd's keep-alive (``WATCHDOG=1``) is sent only while this collector makes progress:
    #: a wedged liveness prober must get the daemon itself restarted, or nobody would notice
    keepalive: bool = False
    #: the settings the factory reads: a reload whose configuration gives the same value keeps
    #: the built collector (its counters, its log position, its threads). Left out: the whole
    #: configuration, so any change builds it anew (always right, if wasteful)
    settings: Callable[[Config], object] = lambda c: c
    #: the collectors of ``Context.built`` the factory takes: one of them built anew builds
    #: this one anew too (it holds the old one)
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class CollectorPlan:
    """A built collector with its cadence and deadline: what one runner thread runs."""

    collector: Collector
    interval: float
    timeout: float
    keepalive: bool = False
    #: True when a reload kept this collector from the previous configuration
    kept: bool = False


def _api(ctx: Context) -> Collector:
    cfg = ctx.config
    return ApiCollector(OllamaClient(cfg.ollama.url, cfg.ollama.timeout), emit=ctx.emit)


def _process(ctx: Context) -> Collector:
    cfg = ctx.config
    main_pid = SystemdMainPid(cfg.ollama.unit) if cfg.ollama.unit else None
    url = urlsplit(cfg.ollama.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    return ProcessCollector(cfg.ollama.models_dir, main_pid=main_pid, listen_port=port)


def _gpu(ctx: Context) -> Collector:
    process = ctx.built.get("process")
    pids = process.ollama_pids if isinstance(process, ProcessCollector) else frozenset
    gpu = ctx.config.gpu
    return GpuCollector(pids, devices=gpu.devices, required=gpu.enabled == GpuMode.TRUE)


def _evidence(ctx: Context) -> Collector:
    cfg = ctx.config
    process, api, gpu = (ctx.built.get(n) for n in ("process", "api", "gpu"))
    return EvidenceCollector(
        ctx.emit,
        process=process if isinstance(process, ProcessCollector) else None,
        api=api if isinstance(api, ApiCollector) else None,
        gpu=gpu if isinstance(gpu, GpuCollector) else None,
        models_dir=cfg.ollama.models_dir,
        unit_state=SystemdUnitState(cfg.ollama.unit) if cfg.ollama.unit else None,
        vram_min_bytes=cfg.healing.vram_min_bytes,
    )


def _logs(ctx: Context) -> Collector:
    cfg = ctx.config
    return LogsCollector(
        cfg.logs.source,  # type: ignore[arg-type]  # not NONE: the row is off then
        path=cfg.logs.path,
        state_dir=cfg.logs.state_dir,
        models_dir=cfg.ollama.models_dir,
        unit=cfg.ollama.unit,
        emit=ctx.emit,
    )


def _probe(ctx: Context) -> Collector:
    cfg = ctx.config.probe
    return DeepProbeCollector(
        OllamaClient(ctx.config.ollama.url, cfg.deep_timeout),
        cfg.deep_model,
        cfg.deep_timeout,
        emit=ctx.emit,
    )


def _always(config: Config) -> bool:
    return True


REGISTRY: Final[tuple[Registration, ...]] = (
    Registration(
        "api",
        _api,
        default=True,
        enabled=_always,
        interval=lambda c: c.probe.interval,
        # three probes in a row, each bounded by the client's timeout
        timeout=lambda c: c.ollama.timeout * 3 + 1,
        keepalive=True,
        settings=lambda c: (c.ollama.url, c.ollama.timeout),
    ),
    Registration(
        "process",
        _process,
        default=True,
        enabled=_always,
        interval=lambda c: c.probe.interval,
        timeout=lambda c: 10.0,
        settings=lambda c: (c.ollama.models_dir, c.ollama.unit, c.ollama.url),
    ),
    Registration(
        "gpu",
        _gpu,
        default=True,
        enabled=lambda c: c.gpu.enabled != GpuMode.FALSE,
        interval=lambda c: c.probe.interval,
        # NVML runs with its own deadline inside the collector; this one is a backstop
        timeout=lambda c: 10.0,
        settings=lambda c: (c.gpu.enabled, c.gpu.devices),
        needs=("process",),
    ),
    Registration(
        "evidence",
        _evidence,
        default=True,
        enabled=lambda c: c.watchdog.enabled,
        interval=lambda c: c.probe.interval,
        # reads snapshots; the one call out is systemctl show, bounded at 2 s
        timeout=lambda c: 5.0,
        settings=lambda c: (c.ollama.models_dir, c.ollama.unit, c.healing.vram_min_bytes),
        needs=("process", "api", "gpu"),
    ),
    Registration(
        "logs",
        _logs,
        default=True,
        enabled=lambda c: c.logs.source != LogSource.NONE,
        # collect() only copies counters: cheap, so as often as the probes
        interval=lambda c: c.probe.interval,
        timeout=lambda c: 5.0,
        settings=lambda c: (c.logs, c.ollama.models_dir, c.ollama.unit),
    ),
    Registration(
        "probe",
        _probe,
        default=False,
        enabled=lambda c: bool(c.probe.deep_model),
        interval=lambda c: c.probe.deep_interval,
        timeout=lambda c: c.probe.deep_timeout + 5,
        settings=lambda c: (c.ollama.url, c.probe.deep_model, c.probe.deep_timeout),
    ),
)


def build_collectors(
    config: Config,
    emit: Callable[[Signal], None],
    registry: tuple[Registration, ...] = REGISTRY,
    *,
    previous: tuple[Config, Mapping[str, Collector]] | None = None,
) -> list[CollectorPlan]:
    """Build every collector the table and ``config`` enable, in table order.

    ``previous`` (a reload): the configuration in force and its collectors by name. A
    collector whose row gives the same ``settings`` for both configurations, and none of whose
    ``needs`` was built anew, is kept (``CollectorPlan.kept``): a SIGHUP loses no counter and no
    log line. The caller stops and closes the previous collectors that were not kept.
    """
    built: dict[str, Collector] = {}
    fresh: set[str] = set()
    plans: list[CollectorPlan] = []
    for reg in registry:
        if not reg.enabled(config):
            continue
        collector: Collector | None = None
        if previous is not None:
            old_config, old = previous
            same = reg.settings(old_config) == reg.settings(config)
            if same and reg.name in old and not fresh.intersection(reg.needs):
                collector = old[reg.name]
        kept = collector is not None
        if collector is None:
            collector = reg.factory(Context(config, emit, dict(built)))
            fresh.add(reg.name)
        if collector.name != reg.name:
            raise ValueError(f"collector {collector.name!r} registered as {reg.name!r}")
        built[reg.name] = collector
        plans.append(
            CollectorPlan(
                collector, reg.interval(config), reg.timeout(config), reg.keepalive, kept=kept
            )
        )
    return plans


__all__ = [
    "REGISTRY",
    "BackgroundCollector",
    "Closable",
    "Collector",
    "CollectorPlan",
    "Context",
    "Registration",
    "StatusSource",
    "build_collectors",
]
