"""A small fake NVML module (the part of nvidia-ml-py the GPU collector calls), for tests.

It mirrors nvidia-ml-py's surface: function names, units (mW, MHz, mJ, bytes), errors as
``NVMLError`` subclasses carrying ``value``, handles that go stale when a GPU is reset. It
counts calls and can hang like a wedged driver. Injected at the boundary with
``GpuCollector(nvml=FakeNvml(...))``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, ClassVar

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
