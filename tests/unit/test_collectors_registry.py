"""The collector table: what runs by default, and that every row builds what it names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ollama_watchdog.collectors import REGISTRY, Closable, build_collectors
from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.config import Config, GpuConfig, GpuMode, LogsConfig, LogSource, ProbeConfig
from ollama_watchdog.signals import Signal


def test_names_are_unique_and_the_defaults_are_the_documented_ones() -> None:
    names = [r.name for r in REGISTRY]
    assert len(names) == len(set(names))
    defaults = Config()
    assert [r.name for r in REGISTRY if r.enabled(defaults)] == [
        r.name for r in REGISTRY if r.default
    ]
    assert [r.name for r in REGISTRY if r.default] == ["api", "process", "gpu", "evidence", "logs"]
    # the liveness prober, and only it, holds systemd's keep-alive
    assert [r.name for r in REGISTRY if r.keepalive] == ["api"]


def test_every_row_builds_the_collector_it_names(tmp_path: Path) -> None:
    config = replace(
        Config(),
        probe=ProbeConfig(deep_model="tiny:latest"),
        logs=LogsConfig(
            source=LogSource.FILE, path=str(tmp_path / "ollama.log"), state_dir=tmp_path
        ),
    )
    emitted: list[Signal] = []
    plans = build_collectors(config, emitted.append)
    try:
        assert [p.collector.name for p in plans] == [r.name for r in REGISTRY]
        for plan, reg in zip(plans, REGISTRY, strict=True):
            assert plan.interval == reg.interval(config) > 0
            assert plan.timeout == reg.timeout(config) > 0
    finally:
        for plan in plans:
            if isinstance(plan.collector, Closable):
                plan.collector.close()
    assert emitted == []  # building measures nothing


def test_the_configuration_turns_collectors_off() -> None:
    config = replace(
        Config(), logs=LogsConfig(source=LogSource.NONE), gpu=GpuConfig(enabled=GpuMode.FALSE)
    )
    plans = build_collectors(config, lambda s: None)
    assert [p.collector.name for p in plans] == ["api", "process", "evidence"]
    # the healing side's evidence goes with the watchdog
    off = replace(config, watchdog=replace(config.watchdog, enabled=False))
    plans = build_collectors(off, lambda s: None)
    assert [p.collector.name for p in plans] == ["api", "process"]


def test_the_gpu_collector_gets_the_configured_devices() -> None:
    uuid = "GPU-8a8e2e0c-5cd1-6d5c-0b8a-7a7d0f3c9e21"
    config = replace(
        Config(), logs=LogsConfig(source=LogSource.NONE), gpu=GpuConfig(devices=(1, uuid))
    )
    plans = build_collectors(config, lambda s: None)
    gpu = next(p.collector for p in plans if p.collector.name == "gpu")
    assert isinstance(gpu, GpuCollector)
    assert gpu.devices == (1, uuid)
