"""Collector ``evidence``: what the healing side needs to know besides the probes.

It reads the latest snapshots of the ``api``, ``process`` and ``gpu`` collectors (never Ollama
or NVML itself, so it costs microseconds) and asks systemd for the Ollama unit's state, then
emits one evidence signal of each kind per round (``signals.EVIDENCE``):

* ``runner`` per model process of this instance, once it has been seen for two rounds: ``ok``
  when it spent CPU time since the previous round and is not stopped (SIGSTOP, a debugger).
  A generating runner spends CPU even on a GPU (its thread drives the kernels); a wedged or
  stopped one does not, so traffic to *other* models cannot make its wedge look busy.
* ``orphans``: the model processes whose parent is not the current server (the process
  collector's rule), by pid and start time.
* ``cpu_fallback``, where NVML sees GPUs: a loaded model with ``size_vram`` 0 in ``/api/ps``, or
  a runner of this instance, seen for two rounds, that holds no GPU memory at all.
* ``vram_held``, where NVML sees GPUs: Ollama's processes hold at least ``vram_min_bytes`` of
  GPU memory while ``/api/ps`` lists no model (memory not released after an unload or crash).
* ``unit``: the Ollama unit is loaded and ``inactive`` after a clean stop (``Result=success``),
  or still ``deactivating`` in such a stop: an operator stopped it on purpose, and nothing may
  start it again. ``failed`` is not on
  purpose, and neither is a unit systemd does not know (``LoadState=not-found``).

It exports no families of its own (its success and duration are recorded like every
collector's).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog
from prometheus_client.metrics_core import Metric

from ollama_watchdog.collectors.api import ApiCollector
from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.collectors.process import ProcessCollector
from ollama_watchdog.ollama.names import normalize_name
from ollama_watchdog.signals import Proc, Signal, SignalKind

log = structlog.get_logger()

#: CPU seconds a runner must spend between two rounds to count as making progress
_CPU_EPSILON: Final = 0.005
_MIB: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UnitState:
    """The parts of ``systemctl show`` that tell an operator's stop from a failure."""

    active: str
    sub: str
    result: str
    #: ``LoadState``: a unit systemd does not know (``not-found``: Ollama runs outside systemd
    #: while ``[ollama] unit`` keeps its default) reads "inactive, success" too, and is no stop
    load: str = "loaded"

    @property
    def stopped_on_purpose(self) -> bool:
        """Inactive after a clean stop, or ``deactivating`` with no failure: a stop someone
        asked for is under way (the server may be gone while runners exit or a stop hook runs,
        for up to ``TimeoutStopSec``), and a restart then would undo it. A crash is not: it
        sets ``Result`` (``signal``, ``exit-code``) before the unit deactivates."""
        return (
            self.load == "loaded"
            and self.active in {"inactive", "deactivating"}
            and self.result == "success"
        )

    def text(self) -> str:
        return f"{self.active}/{self.sub}, result {self.result}"


class SystemdUnitState:
    """``systemctl show -p ActiveState,SubState,Result UNIT``, bounded by ``timeout``."""

    def __init__(self, unit: str, *, timeout: float = 2.0, systemctl: str | None = None) -> None:
        self.unit = unit
        self._timeout = timeout
        self._systemctl = systemctl or shutil.which("systemctl")
        self._warned = False

    def __call__(self) -> UnitState | None:
        if self._systemctl is None:
            return None
        try:
            out = subprocess.run(
                [self._systemctl, "show", "-p", "LoadState", "-p", "ActiveState", "-p",
                 "SubState", "-p", "Result", self.unit],
                capture_output=True, text=True, timeout=self._timeout, check=True,
            ).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("unit_state_unavailable", unit=self.unit, error=str(exc))
            return None
        fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        active = fields.get("ActiveState", "")
        if not active:
            return None
        return UnitState(
            active, fields.get("SubState", ""), fields.get("Result", ""),
            fields.get("LoadState", ""),
        )  # fmt: skip


class EvidenceCollector:
    """Evidence signals from the other collectors' snapshots; see the module docstring."""

    name = "evidence"

    def __init__(
        self,
        emit: Callable[[Signal], None],
        *,
        process: ProcessCollector | None,
        api: ApiCollector | None,
        gpu: GpuCollector | None,
        models_dir: Path | None,
        unit_state: Callable[[], UnitState | None] | None = None,
        vram_min_bytes: int = 256 * _MIB,
    ) -> None:
        self._emit = emit
        self._process = process
        self._api = api
        self._gpu = gpu
        self._names = ModelNames(models_dir)
        self._unit_state = unit_state
        self._vram_min = vram_min_bytes
        # (pid, start time) -> CPU seconds at the previous round: runners seen before
        self._cpu: dict[Proc, float] = {}

    def collect(self) -> Sequence[Metric]:
        for signal in self.signals():
            self._emit(signal)
        return []

    def signals(self) -> list[Signal]:
        """This round's evidence (also what ``collect`` emits)."""
        out: list[Signal] = []
        seen: set[Proc] = set()  # this instance's runners seen for two rounds
        snap = self._process.snapshot if self._process is not None else None
        if snap is not None:
            cpu: dict[Proc, float] = {}
            orphans: list[Proc] = []
            for r in snap.runners:
                proc = Proc(r.pid, r.start_time)
                if r.pid in snap.orphan_pids:
                    orphans.append(proc)
                    continue
                cpu[proc] = r.cpu_seconds
                before = self._cpu.get(proc)
                if before is None:
                    continue
                seen.add(proc)
                name = self._names.name_for(r.model_digest) if r.model_digest else None
                if name:
                    advanced = r.cpu_seconds - before >= _CPU_EPSILON and not r.stopped
                    out.append(
                        Signal(SignalKind.RUNNER, advanced, model=normalize_name(name),
                               procs=(proc,))
                    )  # fmt: skip
            self._cpu = cpu
            out.append(Signal(SignalKind.ORPHANS, not orphans, procs=tuple(orphans)))
        out.extend(self._gpu_evidence(seen))
        if self._unit_state is not None:
            state = self._unit_state()
            if state is not None:
                out.append(Signal(SignalKind.UNIT, not state.stopped_on_purpose,
                                  detail=state.text()))  # fmt: skip
        return out

    def _gpu_evidence(self, runners: set[Proc]) -> list[Signal]:
        gsnap = self._gpu.snapshot if self._gpu is not None else None
        loaded = self._api.state.loaded if self._api is not None else None
        if gsnap is None or not gsnap.available or not gsnap.devices or loaded is None:
            return []  # no GPU, or nothing to compare with: no evidence either way
        on_cpu = sorted(m.name for m in loaded if m.size > 0 and m.size_vram == 0)
        detail = ""
        if on_cpu:
            detail = f"{len(on_cpu)} loaded model(s) with no GPU memory (size_vram 0): " + (
                ", ".join(on_cpu[:3])
            )
        listed = all(s.ollama_memory is not None for s in gsnap.samples if s.up)
        if not detail and listed and runners:
            on_gpu = {pid for s in gsnap.samples for pid, used in s.ollama_processes if used > 0}
            bare = sorted(p.pid for p in runners if p.pid not in on_gpu)
            if bare:
                detail = "runner pid(s) holding no GPU memory: " + ", ".join(map(str, bare[:3]))
        out = [Signal(SignalKind.CPU_FALLBACK, not detail, detail=detail)]
        held = sum(s.ollama_memory or 0 for s in gsnap.samples)
        if not loaded and held >= self._vram_min and self._vram_min >= 0:
            text = f"{held // _MIB} MiB of GPU memory held by Ollama with no model loaded"
            out.append(Signal(SignalKind.VRAM_HELD, False, detail=text, count=float(held)))
        else:
            out.append(Signal(SignalKind.VRAM_HELD, True, count=float(held)))
        return out


__all__ = ["EvidenceCollector", "SystemdUnitState", "UnitState"]
