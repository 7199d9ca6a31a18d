"""GpuCollector's logic against a small fake NVML module injected at the boundary.

The fake (tests/support/nvml.py) mirrors nvidia-ml-py's surface that the collector uses
(function names, units: mW, MHz, mJ, bytes; errors as ``NVMLError`` subclasses carrying
``value``). The real library is used too where this machine allows it: without a driver,
``pynvml.nvmlInit`` really fails, which is the absent state. Real-GPU agreement with
nvidia-smi is in ``tests/gpu``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry
from support.clock import FakeClock
from support.nvml import (
    DRIVER_NOT_LOADED,
    GIB,
    LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvml,
)
from support.registry import registry_of

from ollama_watchdog.collectors.gpu import (
    GpuCollector,
    GpuDevicesNotFound,
    NvmlDeadlineExceeded,
    NvmlRequired,
)


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


# ---------------------------------------------------------------- whose GPUs: [gpu] devices


def exported_gpus(reg: CollectorRegistry, metric: str) -> set[str]:
    return {
        s.labels["gpu"]
        for fam in reg.collect()
        for s in fam.samples
        if fam.name == metric and "gpu" in s.labels
    }


def test_devices_by_index_or_uuid_export_only_those_gpus(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    gpus = [FakeGpu(uuid=f"GPU-{x}") for x in "abc"]
    nvml = FakeNvml(gpus)
    # an index and a UUID (in upper case: UUIDs compare in any case); label gpu stays NVML's index
    c = make(collectors, nvml, clock, devices=["GPU-C", 0])
    reg = registry_of(c)
    reg = registry_of(c)  # the energy read scheduled by the first round shows now
    assert v(reg, "ollama_gpu_devices") == 2
    for metric in ("ollama_gpu_info", "ollama_gpu_up", "ollama_gpu_memory_used_bytes",
                   "ollama_gpu_ollama_memory_bytes", "ollama_gpu_energy_joules"):  # fmt: skip
        assert exported_gpus(reg, metric) == {"0", "2"}, metric
    assert v(reg, "ollama_gpu_info", gpu="2", uuid="GPU-c", name=gpus[2].name,
             driver="580.159.04") == 1  # fmt: skip
    # the other GPU is never read: NVML is asked about two GPUs per round, not three
    assert nvml.calls["utilization"] == 2 * 2
    assert nvml.calls["energy"] == 2


def test_one_watchdog_per_instance_splits_the_host_without_double_counting(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    # ollama@0 (server 100, runner 101) on GPU 0, ollama@1 (server 200, runner 201) on GPU 1;
    # runner 201 also spilled onto GPU 0; 555 is a stranger's job on GPU 1
    gpus = [
        FakeGpu(uuid="GPU-a", used=11 * GIB, procs=[(101, 8 * GIB), (201, 3 * GIB)]),
        FakeGpu(uuid="GPU-b", used=14 * GIB, procs=[(201, 12 * GIB), (555, 2 * GIB)]),
    ]
    nvml = FakeNvml(gpus)
    mine = {0: frozenset({100, 101}), 1: frozenset({200, 201})}
    split = [
        registry_of(make(collectors, nvml, clock, pids=lambda: mine[0], devices=[0])),
        registry_of(make(collectors, nvml, clock, pids=lambda: mine[1], devices=["GPU-b"])),
    ]
    assert [exported_gpus(r, "ollama_gpu_memory_used_bytes") for r in split] == [{"0"}, {"1"}]
    assert v(split[0], "ollama_gpu_ollama_memory_bytes", gpu="0") == 8 * GIB
    assert v(split[0], "ollama_gpu_other_memory_bytes", gpu="0") == 3 * GIB  # instance 1's
    assert v(split[1], "ollama_gpu_ollama_memory_bytes", gpu="1") == 12 * GIB
    assert v(split[1], "ollama_gpu_other_memory_bytes", gpu="1") == 2 * GIB

    def host_sum(regs: list[CollectorRegistry], metric: str) -> float:
        return sum(s.value for r in regs for f in r.collect() for s in f.samples
                   if f.name == metric)  # fmt: skip

    # summed over the instances (sum by (instance-free labels)), each GPU counts once
    assert host_sum(split, "ollama_gpu_memory_used_bytes") == 25 * GIB
    assert host_sum(split, "ollama_gpu_devices") == 2
    # left at the default, both export every GPU: the host's memory counts twice
    both = [
        registry_of(make(collectors, nvml, clock, pids=lambda: mine[0])),
        registry_of(make(collectors, nvml, clock, pids=lambda: mine[1])),
    ]
    assert host_sum(both, "ollama_gpu_memory_used_bytes") == 2 * 25 * GIB
    # attribution is by instance either way: instance 0 never counts instance 1's runner
    assert v(both[0], "ollama_gpu_ollama_memory_bytes", gpu="1") == 0
    assert v(both[0], "ollama_gpu_other_memory_bytes", gpu="1") == 14 * GIB


def test_a_named_gpu_nvml_lacks_fails_the_round_naming_both_and_is_looked_for_again(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", unopenable=True)])
    c = make(collectors, nvml, clock, devices=["GPU-c", 0], retry_interval=300.0)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(GpuDevicesNotFound) as err:
                c.collect()
            clock.now += 10
    assert str(err.value) == (
        "gpu.devices names GPU-c, which NVML does not have (it has 0 GPU-a, 1 (cannot be"
        " opened)); fix [gpu] devices (nvidia-smi -L lists index and UUID)"
    )
    assert [e["event"] for e in logs].count("gpu_devices_not_found") == 1
    # NVML was opened once and closed again; the next rounds did not touch it
    assert (nvml.calls["init"], nvml.calls["shutdown"], nvml.calls["utilization"]) == (1, 1, 0)
    # the GPU appears (a driver reload, a GPU added back): found at the next retry
    nvml.gpus.append(FakeGpu(uuid="GPU-c"))
    with pytest.raises(GpuDevicesNotFound):
        c.collect()  # not yet: the retry interval has not passed
    clock.now += 300
    reg = registry_of(c)
    assert exported_gpus(reg, "ollama_gpu_up") == {"0", "2"}
    assert v(reg, "ollama_gpu_up", gpu="2") == 1
    assert nvml.calls["init"] == 2


def test_a_gpu_named_by_index_that_cannot_be_opened_is_exported_down(
    collectors: list[GpuCollector], clock: FakeClock
) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-a"), FakeGpu(uuid="GPU-b", unopenable=True)])
    reg = registry_of(make(collectors, nvml, clock, devices=[1]))
    assert v(reg, "ollama_gpu_devices") == 1
    assert v(reg, "ollama_gpu_up", gpu="1") == 0
    assert exported_gpus(reg, "ollama_gpu_up") == {"1"}


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
