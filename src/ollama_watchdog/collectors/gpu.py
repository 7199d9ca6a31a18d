"""NVIDIA GPUs through NVML (nvidia-ml-py, module ``pynvml``).

Replaces the old monitor loop's ``nvidia-smi`` greps. Per GPU index: static info, utilization,
memory used/total/reserved, temperature, power and its limit, SM clock, uncorrected ECC errors,
clock-event ("throttle") reasons, the memory held by Ollama's own processes and, where the GPU
reports it, total energy as a counter.

Three rules shape the code (measured facts are in the team's NVML.md):

* **Absent is a state.** No nvidia-ml-py, no driver or no GPU: the collector succeeds and says
  ``ollama_gpu_nvml_available 0``; it tries again only every ``retry_interval``. With
  ``required=True`` (config ``gpu.enabled = "true"``) absence is a failure instead.
* **Errors are per metric.** ``NotSupported`` on one GPU, or a GPU that fell off the bus, drops
  those values only (logged once per GPU, metric and error); the other GPUs keep reporting.
  A GPU none of whose readings NVML answered in a round is down (``ollama_gpu_up 0``), the
  state a page is made of; one NVML fails to open at initialisation is down from the start.
  A GPU down for ``retry_interval`` makes the collector shut NVML down and initialise it again
  (at most once per ``retry_interval``): after a GPU reset or a driver reload, stale handles
  are replaced and the GPU comes back; a GPU still lost stays down.
* **A wedged driver must not wedge the daemon.** Every NVML call runs on one daemon thread of
  this collector; ``collect()`` waits at most ``deadline`` and while a call is stuck, later
  rounds fail at once instead of piling up threads. Total energy costs about 4 ms per call (the
  driver busy-waits), so it is read on the same thread after a round, every ``energy_interval``,
  and the round itself only reads the last value.

Memory comes from the v2 structure, which agrees with nvidia-smi (v1 ``used`` includes the
driver's reserved memory); without v2 we fall back to v1 and log it once.

**Whose GPUs, whose processes.** With several Ollama instances on one host (one per GPU, each
watched by its own ``ollama-watchdog@N``), ``devices`` (config ``[gpu] devices``) names the GPUs
this watchdog exports, by NVML index or UUID; the others are never read, so two watchdogs do not
both export the host's GPUs. A GPU compute process counts as Ollama's when its pid is one of this
instance's (``ollama_pids``: the server this watchdog watches, its runners, and runners whose
server is gone); every other process, another instance's runner included, is "other". Named GPUs
NVML does not have fail the round with the list of those it has, and are looked for again every
``retry_interval``.
"""

from __future__ import annotations

import functools
import importlib
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = structlog.get_logger(__name__)

T = TypeVar("T")

_ERROR_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED: an answer, just not this reading
# NOT_SUPPORTED, FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH: the driver has no v2 memory
_V2_MISSING = (_ERROR_NOT_SUPPORTED, 13, 25)
# NVML constants we rely on, with their ABI values, so a fake module in tests need not define
# them and an old nvidia-ml-py without a name still works.
_TEMPERATURE_GPU = 0  # NVML_TEMPERATURE_GPU
_CLOCK_SM = 1  # NVML_CLOCK_SM
_MEMORY_ERROR_UNCORRECTED = 1  # NVML_MEMORY_ERROR_TYPE_UNCORRECTED
_VOLATILE_ECC = 0  # NVML_VOLATILE_ECC: since the driver loaded, so resets look like resets

#: nvmlClocksEventReason* bits (formerly ClocksThrottleReason*), exported as a labelled set
THROTTLE_REASONS: tuple[tuple[str, int], ...] = (
    ("gpu_idle", 0x1),
    ("applications_clocks_setting", 0x2),
    ("sw_power_cap", 0x4),
    ("hw_slowdown", 0x8),
    ("sync_boost", 0x10),
    ("sw_thermal_slowdown", 0x20),
    ("hw_thermal_slowdown", 0x40),
    ("hw_power_brake_slowdown", 0x80),
    ("display_clock_setting", 0x100),
)

# Metric names: DESIGN.md "GPU", plus our additions (power limit, SM clock, ECC, throttle
# reasons, reserved and other processes' memory, NVML availability and device count).
GPU_INFO = "ollama_gpu_info"
GPU_UTILIZATION = "ollama_gpu_utilization_ratio"
GPU_MEMORY_USED = "ollama_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "ollama_gpu_memory_total_bytes"
GPU_MEMORY_RESERVED = "ollama_gpu_memory_reserved_bytes"
GPU_TEMPERATURE = "ollama_gpu_temperature_celsius"
GPU_POWER = "ollama_gpu_power_watts"
GPU_POWER_LIMIT = "ollama_gpu_power_limit_watts"
GPU_ENERGY = "ollama_gpu_energy_joules"  # CounterMetricFamily appends _total
GPU_SM_CLOCK = "ollama_gpu_sm_clock_hertz"
GPU_ECC = "ollama_gpu_ecc_uncorrected_errors"  # counter: _total
GPU_THROTTLE = "ollama_gpu_throttle_reasons"
GPU_OLLAMA_MEMORY = "ollama_gpu_ollama_memory_bytes"
GPU_OTHER_MEMORY = "ollama_gpu_other_memory_bytes"
GPU_UP = "ollama_gpu_up"
GPU_NVML_AVAILABLE = "ollama_gpu_nvml_available"
GPU_DEVICES = "ollama_gpu_devices"


class NvmlDeadlineExceeded(RuntimeError):
    """An NVML call did not return within the deadline (a wedged driver)."""


class NvmlRequired(RuntimeError):
    """``required=True`` but NVML or a GPU is absent."""


class _Absent(Exception):
    """NVML cannot be used on this host; the message says why."""


class GpuDevicesNotFound(RuntimeError):
    """``devices`` names a GPU NVML does not have; the message lists those it has."""


#: a ``devices`` entry: an NVML index (as nvidia-smi numbers GPUs) or a GPU UUID
DeviceSelector = int | str


@dataclass(frozen=True)
class GpuDevice:
    """A GPU as found at NVML initialisation (uuid and name empty if NVML could not open it)."""

    index: int
    uuid: str
    name: str


@dataclass(frozen=True)
class GpuSample:
    """One GPU's readings in one round; None where NVML could not give a value."""

    index: int
    #: NVML answered at least one reading (a value, or "not supported on this GPU")
    up: bool = True
    utilization_ratio: float | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    memory_reserved: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    sm_clock_hertz: float | None = None
    ecc_uncorrected: int | None = None
    throttle_reasons: int | None = None
    ollama_memory: int | None = None
    other_memory: int | None = None
    #: (pid, bytes) of each Ollama process NVML lists on this GPU (the healing side's evidence)
    ollama_processes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class GpuSnapshot:
    """Everything one round of :class:`GpuCollector` knows."""

    available: bool
    driver: str = ""
    devices: tuple[GpuDevice, ...] = ()
    samples: tuple[GpuSample, ...] = ()
    #: joules per GPU index from the energy reader's last pass (absent where unsupported)
    energy_joules: Mapping[int, float] = field(default_factory=dict)


class _NvmlThread:
    """One daemon thread that runs every NVML call, in order.

    A daemon thread, not a ThreadPoolExecutor: the executor's workers are joined at interpreter
    exit, so a call stuck in the driver would keep the watchdog from ever exiting.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nvml", daemon=True)
            self._thread.start()
        fut: Future[T] = Future()
        self._jobs.put((fn, fut))
        return fut

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # handed to the waiting collect(), which re-raises
                fut.set_exception(exc)


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returned bytes before 11.x and str since
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuCollector:
    """NVML metrics per GPU; see the module docstring for the rules.

    ``ollama_pids`` gives the pids of Ollama's processes (the process collector's
    :meth:`~ollama_watchdog.collectors.process.ProcessCollector.ollama_pids`); a GPU compute
    process whose pid is not among them counts as "other" (pids from another PID namespace
    included). ``devices`` limits the GPUs exported to those named (NVML index or UUID); empty:
    all. ``nvml`` is the NVML module; None imports ``pynvml`` on first use; tests pass a fake
    module object.
    """

    name = "gpu"

    def __init__(
        self,
        ollama_pids: Callable[[], Set[int]] = frozenset,
        *,
        nvml: Any | None = None,
        devices: Sequence[DeviceSelector] = (),
        required: bool = False,
        deadline: float = 2.0,
        energy_interval: float = 30.0,
        retry_interval: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ollama_pids = ollama_pids
        self._nvml: Any = nvml  # None until _init imports pynvml
        self.devices: tuple[DeviceSelector, ...] = tuple(devices)  # empty: every GPU
        self._not_found: str | None = None  # why the last initialisation found no match
        self._required = required
        self._deadline = deadline
        self._energy_interval = energy_interval
        self._retry_interval = retry_interval
        self._clock = clock
        self._worker = _NvmlThread()
        self._busy: tuple[Future[Any], float] | None = None
        self._energy_job: Future[None] | None = None
        self._energy_due = float("-inf")
        self._energy: dict[int, float] = {}
        self._initialized = False
        self._absent_reason: str | None = None
        self._retry_at = float("-inf")
        self._driver = ""
        self._devices: tuple[GpuDevice, ...] = ()
        self._handles: tuple[Any, ...] = ()
        self._memory_v2 = True
        self._logged: set[tuple[int, str, str]] = set()
        self._answered = 0  # readings NVML answered in the current _sample (NVML thread)
        self._down_since: dict[int, float] = {}  # GPU index -> first round it was down
        self._reinit_at = float("-inf")
        self.snapshot: GpuSnapshot | None = None

    # ----- the collector protocol -----

    def start(self) -> None:
        """Nothing to do: NVML starts lazily in the first round, so start-up never waits on it."""

    def stop(self) -> None:
        """Shut NVML down (best effort, bounded by the deadline) and end the worker thread."""
        if self._initialized and self._busy is None:
            self._shutdown()
        self._initialized = False
        self._worker.stop()

    def collect(self) -> Sequence[Metric]:
        self.snapshot = self.read()
        return gpu_families(self.snapshot)

    def process_memory(self, timeout: float = 2.0) -> dict[int, int] | None:
        """GPU memory per pid over every GPU, read now on the NVML thread (for the healing side:
        is a killed runner's memory back?); None without NVML or past ``timeout``."""
        if not self._initialized:
            return None
        nvml, handles = self._nvml, self._handles

        def read() -> dict[int, int]:
            out: dict[int, int] = {}
            for handle in handles:
                if handle is None:
                    continue
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    out[int(p.pid)] = out.get(int(p.pid), 0) + int(p.usedGpuMemory or 0)
            return out

        try:
            return self._worker.submit(read).result(timeout)
        except Exception:  # NVML error, or the driver did not answer in time
            return None

    # ----- one round -----

    def read(self) -> GpuSnapshot:
        """One round: initialise if needed, sample every GPU, schedule the energy reader."""
        now = self._clock()
        if not self._initialized:
            if self._absent_reason is not None and now < self._retry_at:
                return self._absent_snapshot()
            if self._not_found is not None and now < self._retry_at:
                raise GpuDevicesNotFound(self._not_found)
            try:
                self._run(self._init)
            except _Absent as exc:
                return self._became_absent(str(exc), now)
            except GpuDevicesNotFound as exc:
                if str(exc) != self._not_found:
                    log.error("gpu_devices_not_found", error=str(exc))
                self._not_found = str(exc)
                self._retry_at = now + self._retry_interval
                raise
            self._initialized = True
            self._absent_reason = self._not_found = None
            log.info("nvml_ready", driver=self._driver, gpus=len(self._devices))

        pids = frozenset(self._ollama_pids())
        samples = self._run(lambda: tuple(self._sample(i, h, pids) for i, h in self._indexed()))
        snapshot = GpuSnapshot(
            available=True,
            driver=self._driver,
            devices=self._devices,
            samples=samples,
            energy_joules=dict(self._energy),
        )
        if self._track_down(samples, now):
            self._shutdown()
        elif now >= self._energy_due and (self._energy_job is None or self._energy_job.done()):
            self._energy_due = now + self._energy_interval
            self._energy_job = self._worker.submit(self._read_energy)
        return snapshot

    def _track_down(self, samples: Sequence[GpuSample], now: float) -> bool:
        """Note which GPUs are down; True if one has been down long enough to reopen NVML."""
        for sample in samples:
            if sample.up:
                if self._down_since.pop(sample.index, None) is not None:
                    log.info("gpu_up", gpu=sample.index)
            elif sample.index not in self._down_since:
                self._down_since[sample.index] = now
                log.error("gpu_down", gpu=sample.index, note="NVML answered none of its readings")
        overdue = [i for i, t in self._down_since.items() if now - t >= self._retry_interval]
        if overdue and now >= self._reinit_at:
            self._reinit_at = now + self._retry_interval
            log.warning("nvml_reinit", gpus_down=sorted(self._down_since))
            return True
        return False

    def _shutdown(self) -> None:
        """nvmlShutdown on the NVML thread, bounded by the deadline; the next round (if any)
        initialises NVML again and reopens every GPU. A driver in trouble may refuse or hang
        here too: that is logged, never raised."""
        nvml = self._nvml
        try:
            self._run(lambda: nvml.nvmlShutdown())
        except Exception as exc:  # shutting down anyway: note it, never block on it
            log.warning("nvml_shutdown_failed", error=str(exc))
        self._initialized = False

    def _indexed(self) -> list[tuple[int, Any]]:
        # a GPU NVML could not open at initialisation has the handle None
        return [(d.index, h) for d, h in zip(self._devices, self._handles, strict=True)]

    def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the NVML thread and wait at most the deadline."""
        if self._busy is not None:
            stuck, since = self._busy
            if not stuck.done():
                raise NvmlDeadlineExceeded(
                    f"an NVML call has not returned for {self._clock() - since:.0f}s"
                )
            self._busy = None
        fut = self._worker.submit(fn)
        try:
            return fut.result(timeout=self._deadline)
        except FutureTimeout:
            self._busy = (fut, self._clock())
            log.error("nvml_deadline_exceeded", deadline_s=self._deadline)
            raise NvmlDeadlineExceeded(f"NVML did not answer within {self._deadline:g}s") from None

    def _became_absent(self, reason: str, now: float) -> GpuSnapshot:
        if reason != self._absent_reason:
            log.info("gpu_absent", reason=reason, retry_in_s=self._retry_interval)
        self._absent_reason = reason
        self._retry_at = now + self._retry_interval
        return self._absent_snapshot()

    def _absent_snapshot(self) -> GpuSnapshot:
        if self._required:
            raise NvmlRequired(f"gpu.enabled is true but {self._absent_reason}")
        return GpuSnapshot(available=False)

    # ----- on the NVML thread -----

    def _init(self) -> None:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise _Absent(f"nvidia-ml-py is not installed ({exc})") from None
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:  # no library, no driver, no permission
            raise _Absent(f"NVML init failed: {exc}") from None
        try:
            count = int(nvml.nvmlDeviceGetCount())
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise _Absent(f"NVML query failed: {exc}") from None
        if count == 0:
            nvml.nvmlShutdown()
            raise _Absent("NVML found no GPU")
        devices: list[GpuDevice] = []
        handles: list[Any] = []
        for index in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
                name = _text(nvml.nvmlDeviceGetName(handle))
            except nvml.NVMLError as exc:  # e.g. a GPU lost before we started: down from now
                log.error("gpu_unavailable", gpu=index, error=str(exc))
                devices.append(GpuDevice(index=index, uuid="", name=""))
                handles.append(None)
                continue
            devices.append(GpuDevice(index=index, uuid=uuid, name=name))
            handles.append(handle)
        try:
            own = select_devices(devices, self.devices)
        except GpuDevicesNotFound:
            nvml.nvmlShutdown()
            raise
        self._driver = driver
        self._devices = tuple(devices[i] for i in own)
        self._handles = tuple(handles[i] for i in own)

    def _value(self, gpu: int, metric: str, fn: Callable[[], T]) -> T | None:
        """One NVML reading; an NVML error drops this value alone and is logged once."""
        nvml = self._nvml
        try:
            result = fn()
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == _ERROR_NOT_SUPPORTED:
                self._answered += 1
            key = (gpu, metric, type(exc).__name__)
            if key not in self._logged:
                self._logged.add(key)
                log.warning("gpu_metric_unavailable", gpu=gpu, metric=metric, error=str(exc))
            return None
        self._answered += 1
        return result

    def _sample(self, gpu: int, handle: Any, pids: frozenset[int]) -> GpuSample:
        if handle is None:
            return GpuSample(index=gpu, up=False)
        nvml = self._nvml
        self._answered = 0
        util = self._value(gpu, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = self._value(gpu, "memory", lambda: self._memory(handle))
        temperature = self._value(
            gpu, "temperature", lambda: nvml.nvmlDeviceGetTemperature(handle, _TEMPERATURE_GPU)
        )
        power = self._value(gpu, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        limit = self._value(
            gpu, "power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle)
        )
        clock = self._value(gpu, "sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, _CLOCK_SM))
        ecc = self._value(
            gpu,
            "ecc",
            lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle, _MEMORY_ERROR_UNCORRECTED, _VOLATILE_ECC
            ),
        )
        reasons = self._value(gpu, "throttle_reasons", lambda: self._throttle(handle))
        procs = self._value(
            gpu, "processes", lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        )
        ollama_mem = other_mem = None
        ours: list[tuple[int, int]] = []
        if procs is not None:
            ollama_mem = other_mem = 0
            for p in procs:
                # usedGpuMemory is None where NVML cannot tell (NVML_VALUE_NOT_AVAILABLE)
                used = int(p.usedGpuMemory or 0)
                if p.pid in pids:
                    ollama_mem += used
                    ours.append((int(p.pid), used))
                else:
                    other_mem += used
        return GpuSample(
            index=gpu,
            up=self._answered > 0,
            utilization_ratio=None if util is None else util.gpu / 100.0,
            memory_used=None if memory is None else int(memory.used),
            memory_total=None if memory is None else int(memory.total),
            memory_reserved=None if memory is None else getattr(memory, "reserved", None),
            temperature_celsius=None if temperature is None else float(temperature),
            power_watts=None if power is None else power / 1000.0,  # mW
            power_limit_watts=None if limit is None else limit / 1000.0,  # mW
            sm_clock_hertz=None if clock is None else clock * 1e6,  # MHz
            ecc_uncorrected=None if ecc is None else int(ecc),
            throttle_reasons=None if reasons is None else int(reasons),
            ollama_memory=ollama_mem,
            other_memory=other_mem,
            ollama_processes=tuple(ours),
        )

    def _memory(self, handle: Any) -> Any:
        nvml = self._nvml
        if self._memory_v2:
            version = getattr(nvml, "nvmlMemory_v2", None)
            try:
                if version is None:
                    raise AttributeError("nvidia-ml-py has no nvmlMemory_v2")
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except (nvml.NVMLError, AttributeError, TypeError) as exc:
                # only a driver or binding without v2 is a reason to stop asking for it; any
                # other NVML error (a GPU lost, say) is this reading's alone
                if getattr(exc, "value", _V2_MISSING[0]) not in _V2_MISSING:
                    raise
                self._memory_v2 = False
                log.warning("gpu_memory_v1_fallback", error=str(exc), note="used includes reserved")
        return nvml.nvmlDeviceGetMemoryInfo(handle)

    def _throttle(self, handle: Any) -> int:
        nvml = self._nvml
        fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is None:  # renamed in newer NVML; the old name still exists in older bindings
            fn = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return int(fn(handle))

    def _read_energy(self) -> None:
        nvml = self._nvml
        energy: dict[int, float] = {}
        for gpu, handle in self._indexed():
            if handle is None:
                continue
            mj = self._value(
                gpu, "energy", functools.partial(nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            )
            if mj is not None:
                energy[gpu] = mj / 1000.0  # mJ
        self._energy = energy  # swapped whole: collect() reads it from another thread


def select_devices(devices: Sequence[GpuDevice], selectors: Sequence[DeviceSelector]) -> list[int]:
    """Positions in ``devices`` that ``selectors`` name (all when there are none), in NVML
    order. An int is an NVML index, a string a UUID (any case); a GPU NVML could not open has
    no UUID, so only its index names it."""
    if not selectors:
        return list(range(len(devices)))
    by_index = {d.index: i for i, d in enumerate(devices)}
    by_uuid = {d.uuid.lower(): i for i, d in enumerate(devices) if d.uuid}
    chosen: set[int] = set()
    missing: list[str] = []
    for sel in selectors:
        found = by_index.get(sel) if isinstance(sel, int) else by_uuid.get(sel.lower())
        if found is None:
            missing.append(str(sel))
        else:
            chosen.add(found)
    if missing:
        seen = ", ".join(f"{d.index} {d.uuid or '(cannot be opened)'}" for d in devices)
        raise GpuDevicesNotFound(
            f"gpu.devices names {', '.join(missing)}, which NVML does not have (it has {seen});"
            " fix [gpu] devices (nvidia-smi -L lists index and UUID)"
        )
    return sorted(chosen)


def gpu_families(snap: GpuSnapshot) -> list[Metric]:
    """Metric families of one snapshot (pure)."""
    available = GaugeMetricFamily(
        GPU_NVML_AVAILABLE, "1 if NVML is usable and found at least one GPU; 0: no driver/GPU"
    )
    available.add_metric([], 1.0 if snap.available else 0.0)
    devices = GaugeMetricFamily(
        GPU_DEVICES, "GPUs this watchdog exports: all NVML reports, or those of gpu.devices"
    )
    devices.add_metric([], float(len(snap.devices)))
    out: list[Metric] = [available, devices]
    if not snap.available:
        return out

    info = GaugeMetricFamily(
        GPU_INFO, "GPU identity; value 1", labels=["gpu", "uuid", "name", "driver"]
    )
    for d in snap.devices:
        if d.uuid:  # one NVML could not open has no identity to show
            info.add_metric([str(d.index), d.uuid, d.name, snap.driver], 1.0)
    up = GaugeMetricFamily(
        GPU_UP,
        "1 if NVML answered for this GPU in the last round; 0: lost from the bus or the driver "
        "failing",
        labels=["gpu"],
    )
    for s in snap.samples:
        up.add_metric([str(s.index)], 1.0 if s.up else 0.0)
    out += [info, up]

    gauges: list[tuple[str, str, Callable[[GpuSample], float | int | None]]] = [
        (GPU_UTILIZATION, "GPU busy ratio over NVML's last sample period",
         lambda s: s.utilization_ratio),
        (GPU_MEMORY_USED, "GPU memory used (NVML v2: excludes driver-reserved memory)",
         lambda s: s.memory_used),
        (GPU_MEMORY_TOTAL, "GPU memory total", lambda s: s.memory_total),
        (GPU_MEMORY_RESERVED, "GPU memory reserved by the driver", lambda s: s.memory_reserved),
        (GPU_TEMPERATURE, "GPU core temperature", lambda s: s.temperature_celsius),
        (GPU_POWER, "GPU power draw", lambda s: s.power_watts),
        (GPU_POWER_LIMIT, "GPU enforced power limit", lambda s: s.power_limit_watts),
        (GPU_SM_CLOCK, "GPU SM clock", lambda s: s.sm_clock_hertz),
        (GPU_OLLAMA_MEMORY, "GPU memory held by Ollama's processes (server, runners, orphans)",
         lambda s: s.ollama_memory),
        (GPU_OTHER_MEMORY, "GPU memory held by compute processes that are not Ollama's",
         lambda s: s.other_memory),
    ]  # fmt: skip
    for name, doc, get in gauges:
        fam = GaugeMetricFamily(name, doc, labels=["gpu"])
        for s in snap.samples:
            v = get(s)
            if v is not None:
                fam.add_metric([str(s.index)], float(v))
        out.append(fam)

    ecc = CounterMetricFamily(
        GPU_ECC, "Uncorrected ECC errors since the driver loaded (volatile)", labels=["gpu"]
    )
    throttle = GaugeMetricFamily(
        GPU_THROTTLE, "1 if this reason is holding the GPU's clocks down", labels=["gpu", "reason"]
    )
    for s in snap.samples:
        if s.ecc_uncorrected is not None:
            ecc.add_metric([str(s.index)], float(s.ecc_uncorrected))
        if s.throttle_reasons is not None:
            for reason, bit in THROTTLE_REASONS:
                throttle.add_metric(
                    [str(s.index), reason], 1.0 if s.throttle_reasons & bit else 0.0
                )
    energy = CounterMetricFamily(
        GPU_ENERGY, "Energy used by the GPU since the driver loaded (NVML total energy)",
        labels=["gpu"],
    )  # fmt: skip
    for index, joules in sorted(snap.energy_joules.items()):
        energy.add_metric([str(index)], joules)
    out += [ecc, throttle, energy]
    return out


__all__ = [
    "THROTTLE_REASONS",
    "DeviceSelector",
    "GpuCollector",
    "GpuDevice",
    "GpuDevicesNotFound",
    "GpuSample",
    "GpuSnapshot",
    "NvmlDeadlineExceeded",
    "NvmlRequired",
    "gpu_families",
    "select_devices",
]
