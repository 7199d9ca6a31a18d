"""GpuCollector's logic against a small fake NVML module injected at the boundary.

The fake mirrors nvidia-ml-py's surface that the collector uses (function names, units: mW,
MHz, mJ, bytes; errors as ``NVMLError`` subclasses carrying ``value``). The real library is used
too where this machine allows it: without a driver, ``pynvml.nvmlInit`` really fails, which is
the absent state. Real-GPU agreement with nvidia-smi is in ``tests/gpu``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import structlog
from prometheus_client import CollectorRegistry
from support.clock import FakeClock
from support.registry import registry_of

from ollama_watchdog.collectors.gpu import (
    GpuCollector,
    NvmlDeadlineExceeded,
    NvmlRequired,
)

GIB = 1024**3
NOT_SUPPORTED, DRIVER_NOT_LOADED, LIBRARY_NOT_FOUND, GPU_IS_LOST = 3, 9, 12, 15


class FakeNVMLError(Exception):
    _text: ClassVar[dict[int, str]] = {
        NOT_SUPPORTED: "Not Supported",
        DRIVER_NOT_LOADED: "Driver Not Loaded",
        LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
        GPU_IS_LOST: "GPU is lost",
    }

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._text[self.value]


class NVMLError_NotSupported(FakeNVMLError):  # pynvml's own naming
    def __init__(self) -> None:
        super().__init__(NOT_SUPPORTED)


class NVMLError_GpuIsLost(FakeNVMLError):
    def __init__(self) -> None:
        super().__init__(GPU_IS_LOST)


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    util: int = 37
    used: int = 2 * GIB
    total: int = 80 * GIB
    reserved: int = 480 * 1024**2
    temp: int = 41
    power_mw: int = 123_456
    limit_mw: int = 700_000
    sm_mhz: int = 1980
    ecc: int = 0
    reasons: int = 0x1 | 0x4  # gpu_idle + sw_power_cap
    energy_mj: int = 5_000_000
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    lost: bool = False
    unopenable: bool = False  # NVML cannot open it (lost before initialisation)
    #: handles from NVML initialisations before this one are stale (the GPU was reset)
    valid_from: int = 0


@dataclass(frozen=True)
class FakeHandle:
    gpu: FakeGpu
    generation: int  # the NVML initialisation that opened it


class FakeNvml:
    """The part of ``pynvml`` the collector calls; counts calls; can hang like a wedged driver."""

    NVMLError = FakeNVMLError
    nvmlMemory_v2 = 0x02000028

    def __init__(
        self,
        gpus: Sequence[FakeGpu] = (),
        *,
        init_error: int | None = None,
        memory_v2: bool = True,
    ) -> None:
        self.gpus = list(gpus)
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.hang: threading.Event | None = None
        self.generation = 0
        if not memory_v2:
            self.nvmlMemory_v2 = None  # type: ignore[assignment]

    def reset(self, gpu: FakeGpu) -> None:
        """The GPU is back after a reset; handles opened before it no longer work."""
        gpu.lost = False
        gpu.valid_from = self.generation + 1

    def _dev(self, h: FakeHandle, what: str) -> FakeGpu:
        self.calls[what] += 1
        gpu = h.gpu
        if self.hang is not None and what == "utilization":
            self.hang.wait()
        if gpu.lost or h.generation < gpu.valid_from:
            raise NVMLError_GpuIsLost()
        if what in gpu.unsupported:
            raise NVMLError_NotSupported()
        return gpu

    def nvmlInit(self) -> None:
        self.calls["init"] += 1
        self.generation += 1
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls["shutdown"] += 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeHandle:
        return FakeHandle(self.gpus[i], self.generation)

    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str:
        if h.gpu.unopenable:
            raise NVMLError_GpuIsLost()
        return h.gpu.uuid

    def nvmlDeviceGetName(self, h: FakeHandle) -> bytes:
        return h.gpu.name.encode()  # older bindings return bytes

    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> Any:
        return SimpleNamespace(gpu=self._dev(h, "utilization").util, memory=3)

    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle, version: int | None = None) -> Any:
        g = self._dev(h, "memory")
        if version is None:  # v1: used includes the driver's reserved memory
            return SimpleNamespace(total=g.total, used=g.used + g.reserved, free=0)
        assert version == self.nvmlMemory_v2
        return SimpleNamespace(total=g.total, used=g.used, reserved=g.reserved, free=0)

    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        assert sensor == 0
        return self._dev(h, "temperature").temp

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        return self._dev(h, "power").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:
        return self._dev(h, "power_limit").limit_mw

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:
        assert clock == 1
        return self._dev(h, "sm_clock").sm_mhz

    def nvmlDeviceGetTotalEccErrors(self, h: FakeHandle, kind: int, counter: int) -> int:
        assert (kind, counter) == (1, 0)
        return self._dev(h, "ecc").ecc

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        return self._dev(h, "throttle_reasons").reasons

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[Any]:
        g = self._dev(h, "processes")
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in g.procs]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        return self._dev(h, "energy").energy_mj


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def collectors() -> Iterator[list[GpuCollector]]:
    made: list[GpuCollector] = []
    yield made
    for c in made:
        c.stop()


def make(collectors: list[GpuCollector], nvml: Any, clock: FakeClock, **kw: Any) -> GpuCollector:
    c = GpuCollector(kw.pop("pids", frozenset), nvml=nvml, clock=clock, **kw)
    collectors.append(c)
    return c


def v(reg: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return reg.get_sample_value(metric, labels)


# ---------------------------------------------------------------- absent is a state


def test_real_pynvml_without_driver_is_absent_not_failed(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver; the absent case needs one without")
    c = make(collectors, None, clock)  # None: the collector imports the real pynvml
    with structlog.testing.capture_logs() as logs:
        reg = registry_of(c)
    assert v(reg, "ollama_gpu_nvml_available") == 0
    assert v(reg, "ollama_gpu_devices") == 0
    assert v(reg, "ollama_gpu_memory_used_bytes", gpu="0") is None
    assert [e["event"] for e in logs] == ["gpu_absent"]


def test_absent_costs_nothing_until_the_retry_interval(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    nvml = FakeNvml(init_error=LIBRARY_NOT_FOUND)
    c = make(collectors, nvml, clock, retry_interval=300.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            assert v(registry_of(c), "ollama_gpu_nvml_available") == 0
            clock.now += 10
        assert nvml.calls["init"] == 1
        clock.now += 300
        registry_of(c)
        assert nvml.calls["init"] == 2
    absent = [e for e in logs if e["event"] == "gpu_absent"]
    assert len(absent) == 1  # same reason again: not logged again
    assert absent[0]["reason"] == "NVML init failed: NVML Shared Library Not Found"

    # the driver shows up later (module loaded after boot): metrics appear at the next retry
    nvml.init_error = None
    nvml.gpus = [FakeGpu(uuid="GPU-a")]
    clock.now += 300
    reg = registry_of(c)
    assert v(reg, "ollama_gpu_nvml_available") == 1
    assert v(reg, "ollama_gpu_devices") == 1


def test_no_gpu_is_absent(collectors: list[GpuCollector], clock: FakeClock) -> None:
    nvml = FakeNvml([])
    reg = registry_of(make(collectors, nvml, clock))
    assert v(reg, "ollama_gpu_nvml_available") == 0
    assert nvml.calls["shutdown"] == 1  # init succeeded, so it is undone


def test_required_gpu_absent_is_a_failure(collectors: list[GpuCollector], clock: FakeClock) -> None:
    c = make(collectors, FakeNvml(init_error=DRIVER_NOT_LOADED), clock, required=True)
    with pytest.raises(NvmlRequired, match="Driver Not Loaded"):
        c.collect()


# ---------------------------------------------------------------- values and units


def test_every_metric_in_prometheus_units(collectors: list[GpuCollector], clock: FakeClock) -> None:
    gpus = [FakeGpu(uuid="GPU-aaaa"), FakeGpu(uuid="GPU-bbbb", util=100, ecc=2, reasons=0x40)]
    c = make(collectors, FakeNvml(gpus), clock)
    reg = registry_of(c)
    assert v(reg, "ollama_gpu_nvml_available") == 1
    assert v(reg, "ollama_gpu_devices") == 2
    info = {"gpu": "1", "uuid": "GPU-bbbb", "name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"}
    assert v(reg, "ollama_gpu_info", **info) == 1
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="0") == 0.37
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="1") == 1.0
    # v2 memory: used excludes the reserved part, as nvidia-smi shows it
    assert v(reg, "ollama_gpu_memory_used_bytes", gpu="0") == 2 * GIB
    assert v(reg, "ollama_gpu_memory_reserved_bytes", gpu="0") == 480 * 1024**2
    assert v(reg, "ollama_gpu_memory_total_bytes", gpu="0") == 80 * GIB
    assert v(reg, "ollama_gpu_temperature_celsius", gpu="0") == 41
    assert v(reg, "ollama_gpu_power_watts", gpu="0") == 123.456
    assert v(reg, "ollama_gpu_power_limit_watts", gpu="0") == 700
    assert v(reg, "ollama_gpu_sm_clock_hertz", gpu="0") == 1.98e9
    assert v(reg, "ollama_gpu_ecc_uncorrected_errors_total", gpu="1") == 2
    assert v(reg, "ollama_gpu_throttle_reasons", gpu="0", reason="gpu_idle") == 1
    assert v(reg, "ollama_gpu_throttle_reasons", gpu="0", reason="sw_power_cap") == 1
    assert v(reg, "ollama_gpu_throttle_reasons", gpu="0", reason="hw_slowdown") == 0
    assert v(reg, "ollama_gpu_throttle_reasons", gpu="1", reason="hw_thermal_slowdown") == 1
    assert v(reg, "ollama_gpu_throttle_reasons", gpu="1", reason="gpu_idle") == 0


def test_memory_falls_back_to_v1_once_where_v2_is_missing(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    c = make(collectors, FakeNvml([FakeGpu(uuid="GPU-a")], memory_v2=False), clock)
    with structlog.testing.capture_logs() as logs:
        reg = registry_of(c)
        registry_of(c)
    assert v(reg, "ollama_gpu_memory_used_bytes", gpu="0") == 2 * GIB + 480 * 1024**2
    assert v(reg, "ollama_gpu_memory_reserved_bytes", gpu="0") is None
    assert [e["event"] for e in logs].count("gpu_memory_v1_fallback") == 1


def test_ollama_memory_is_attributed_by_pid(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [
        # 100 and 101 are Ollama's; 555 is someone else's; 9999 is a pid from another PID
        # namespace (a container) that the host cannot see; None: NVML could not tell
        FakeGpu(uuid="GPU-a", procs=[(100, 3 * GIB), (555, GIB), (9999, 2 * GIB), (101, None)]),
        FakeGpu(uuid="GPU-b", procs=[(101, 5 * GIB)]),
        FakeGpu(uuid="GPU-c", procs=[]),
    ]
    pids = {100, 101}
    reg = registry_of(make(collectors, FakeNvml(gpus), clock, pids=lambda: pids))
    assert v(reg, "ollama_gpu_ollama_memory_bytes", gpu="0") == 3 * GIB
    assert v(reg, "ollama_gpu_other_memory_bytes", gpu="0") == 3 * GIB
    assert v(reg, "ollama_gpu_ollama_memory_bytes", gpu="1") == 5 * GIB
    assert v(reg, "ollama_gpu_ollama_memory_bytes", gpu="2") == 0

    pids = {555}  # the pid set is read again each round
    reg2 = registry_of(collectors[-1])
    assert v(reg2, "ollama_gpu_ollama_memory_bytes", gpu="0") == GIB


# ---------------------------------------------------------------- errors are per metric


def test_unsupported_and_lost_gpu_drop_only_their_values(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [
        FakeGpu(uuid="GPU-a", unsupported={"ecc", "energy", "power_limit"}),
        FakeGpu(uuid="GPU-b"),
        FakeGpu(uuid="GPU-c"),
    ]
    nvml = FakeNvml(gpus)
    c = make(collectors, nvml, clock)
    with structlog.testing.capture_logs() as logs:
        registry_of(c)
        gpus[1].lost = True  # fell off the bus after start-up
        reg = registry_of(c)
        registry_of(c)
    assert v(reg, "ollama_gpu_ecc_uncorrected_errors_total", gpu="0") is None
    assert v(reg, "ollama_gpu_power_limit_watts", gpu="0") is None
    assert v(reg, "ollama_gpu_power_watts", gpu="0") == 123.456
    assert v(reg, "ollama_gpu_energy_joules_total", gpu="0") is None
    assert v(reg, "ollama_gpu_memory_used_bytes", gpu="1") is None
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="1") is None
    assert v(reg, "ollama_gpu_ecc_uncorrected_errors_total", gpu="2") == 0
    assert v(reg, "ollama_gpu_energy_joules_total", gpu="2") == 5000
    info = {"gpu": "1", "uuid": "GPU-b", "name": gpus[1].name, "driver": "580.159.04"}
    assert v(reg, "ollama_gpu_info", **info) == 1  # identity stays while values are missing

    unavailable = [(e["gpu"], e["metric"]) for e in logs if e["event"] == "gpu_metric_unavailable"]
    assert len(unavailable) == len(set(unavailable))  # each logged once over three rounds
    assert {(0, "ecc"), (0, "energy"), (0, "power_limit"), (1, "memory")} <= set(unavailable)
    assert not [m for g, m in unavailable if g == 2]


def test_a_gpu_nvml_no_longer_answers_is_down_the_others_up(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [
        FakeGpu(uuid="GPU-a", unsupported={"ecc", "energy", "power_limit", "temperature"}),
        FakeGpu(uuid="GPU-b"),
    ]
    c = make(collectors, FakeNvml(gpus), clock)
    reg = registry_of(c)
    assert v(reg, "ollama_gpu_up", gpu="0") == 1  # "not supported" is an answer
    assert v(reg, "ollama_gpu_up", gpu="1") == 1
    gpus[1].lost = True
    with structlog.testing.capture_logs() as logs:
        clock.now += 10
        reg = registry_of(c)
    assert v(reg, "ollama_gpu_up", gpu="0") == 1
    assert v(reg, "ollama_gpu_up", gpu="1") == 0
    assert [e["gpu"] for e in logs if e["event"] == "gpu_down"] == [1]
    # a lost GPU's memory error is its own: the others keep the v2 reading (used without
    # the driver's reserved memory), no fallback to v1 for all
    assert not [e for e in logs if e["event"] == "gpu_memory_v1_fallback"]
    assert v(reg, "ollama_gpu_memory_used_bytes", gpu="0") == 2 * GIB
    assert v(reg, "ollama_gpu_memory_reserved_bytes", gpu="0") == 480 * 1024**2
    gpus[1].lost = False  # a reset brought it back
    with structlog.testing.capture_logs() as logs:
        clock.now += 10
        reg = registry_of(c)
    assert v(reg, "ollama_gpu_up", gpu="1") == 1
    assert [e["gpu"] for e in logs if e["event"] == "gpu_up"] == [1]


def test_a_gpu_lost_before_start_is_counted_and_down(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [FakeGpu(uuid="GPU-a", unopenable=True), FakeGpu(uuid="GPU-b")]
    nvml = FakeNvml(gpus)
    c = make(collectors, nvml, clock)
    reg = registry_of(c)
    assert v(reg, "ollama_gpu_devices") == 2
    assert v(reg, "ollama_gpu_up", gpu="0") == 0
    assert v(reg, "ollama_gpu_up", gpu="1") == 1
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="1") == 0.37
    # no identity for the one NVML could not open, no call on it
    infos = next(s for s in reg.collect() if s.name == "ollama_gpu_info").samples
    assert [x.labels["gpu"] for x in infos] == ["1"]
    assert nvml.calls["utilization"] == 1


def test_a_gpu_down_for_the_retry_interval_reopens_nvml_once_per_interval(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b")]
    nvml = FakeNvml(gpus)
    c = make(collectors, nvml, clock, retry_interval=300.0)
    registry_of(c)
    gpus[0].lost = True
    for _ in range(30):  # the first of these rounds finds it down; 290 s later, not yet
        clock.now += 10
        assert v(registry_of(c), "ollama_gpu_up", gpu="0") == 0
    assert (nvml.calls["init"], nvml.calls["shutdown"]) == (1, 0)
    clock.now += 10  # 300 s: this round shuts NVML down, the next opens it again
    registry_of(c)
    assert (nvml.calls["init"], nvml.calls["shutdown"]) == (1, 1)
    clock.now += 10
    reg = registry_of(c)
    assert nvml.calls["init"] == 2
    assert v(reg, "ollama_gpu_up", gpu="0") == 0  # still lost: down, never dropped
    assert v(reg, "ollama_gpu_up", gpu="1") == 1
    nvml.reset(gpus[0])  # back, but the handle the collector holds is stale
    for _ in range(28):  # the last re-open was less than 300 s ago (280 s)
        clock.now += 10
        assert v(registry_of(c), "ollama_gpu_up", gpu="0") == 0
    assert nvml.calls["init"] == 2
    for _ in range(3):
        clock.now += 10
        reg = registry_of(c)
    assert nvml.calls["init"] == 3  # the next re-open found it back
    assert v(reg, "ollama_gpu_up", gpu="0") == 1
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="0") == 0.37


# ---------------------------------------------------------------- cost and deadlines


def test_energy_is_read_on_its_own_slower_cadence(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpu = FakeGpu(uuid="GPU-a")
    nvml = FakeNvml([gpu])
    c = make(collectors, nvml, clock, energy_interval=15.0)
    # the first round schedules the read after answering; its value shows from the next round
    assert v(registry_of(c), "ollama_gpu_energy_joules_total", gpu="0") is None
    for _ in range(5):
        clock.now += 2
        assert v(registry_of(c), "ollama_gpu_energy_joules_total", gpu="0") == 5000
    assert nvml.calls["energy"] == 1
    assert nvml.calls["utilization"] == 6
    gpu.energy_mj = 7_500_000
    clock.now += 15
    registry_of(c)  # schedules the second read
    assert v(registry_of(c), "ollama_gpu_energy_joules_total", gpu="0") == 7500
    assert nvml.calls["energy"] == 2


def test_wedged_driver_fails_rounds_without_piling_up_calls(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a")])
    c = make(collectors, nvml, clock, deadline=0.2)
    registry_of(c)
    nvml.hang = threading.Event()
    try:
        with pytest.raises(NvmlDeadlineExceeded, match="did not answer"):
            c.collect()
        for _ in range(3):
            with pytest.raises(NvmlDeadlineExceeded, match="has not returned"):
                c.collect()
        assert nvml.calls["utilization"] == 2  # no new call queued behind the stuck one
    finally:
        nvml.hang.set()
    nvml.hang = None
    # the stuck call returns eventually; then rounds work again
    for _ in range(50):
        try:
            reg = registry_of(c)
            break
        except NvmlDeadlineExceeded:
            threading.Event().wait(0.1)
    assert v(reg, "ollama_gpu_utilization_ratio", gpu="0") == 0.37


def test_stop_shuts_nvml_down(clock: FakeClock) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a")])
    c = GpuCollector(nvml=nvml, clock=clock)
    c.collect()
    c.stop()
    assert nvml.calls["shutdown"] == 1
