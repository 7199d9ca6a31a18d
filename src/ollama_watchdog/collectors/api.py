"""Ollama's API: liveness (/api/version), available models (/api/tags), loaded models (/api/ps).

One round is three probes, run in order on the collector's runner thread. When liveness fails, the
other two are not attempted (each would wait its own timeout on a hung server, stretching the round
past the interval); they are reported as not successful but their failure counters are not bumped,
since nothing was measured. Model series are omitted — not zeroed — when their probe did not
succeed, so a graph shows a gap instead of a false "0 models".

Each liveness result is also evidence for the healing side: it is emitted as a
``SignalKind.LIVENESS`` signal, its failure reason kept typed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.ollama.api import (
    PROBE_REASONS,
    LoadedModel,
    ModelInfo,
    OllamaClient,
    ProbeResult,
    timed_probe,
)
from ollama_watchdog.signals import Signal, SignalKind

API_PROBES = ("version", "tags", "ps")
# Ollama keeps at most OLLAMA_MAX_LOADED_MODELS (default 3 per GPU) loaded; a store rarely holds
# hundreds of models. The cap keeps a misbehaving server from exploding the series count.
MAX_MODEL_SERIES = 100

log = structlog.get_logger()


@dataclass(frozen=True)
class ApiState:
    """What the last round saw; read by the daemon for STATUS= and the restart policy."""

    liveness: ProbeResult | None = None
    version: str | None = None
    tags: tuple[ModelInfo, ...] | None = None
    loaded: tuple[LoadedModel, ...] | None = None
    finished_at: float = 0.0


@dataclass
class _Counters:
    failures: dict[tuple[str, str], int] = field(
        default_factory=lambda: {(p, r): 0 for p in API_PROBES for r in PROBE_REASONS}
    )


class ApiCollector:
    """Probes /api/version, /api/tags and /api/ps."""

    name = "api"

    def __init__(
        self,
        client: OllamaClient,
        emit: Callable[[Signal], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._emit = emit
        self._clock = clock
        self._counters = _Counters()
        self.state = ApiState()
        self._last_liveness_ok: bool | None = None

    def _measure(self, probe: str, call: Callable[[], object]) -> tuple[ProbeResult, object]:
        outcome, value = timed_probe(probe, call, self._clock)
        if outcome.reason is not None:
            self._counters.failures[(probe, outcome.reason)] += 1
        return outcome, value

    def collect(self) -> Sequence[Metric]:
        outcomes: dict[str, ProbeResult] = {}
        live, version = self._measure("version", self._client.version)
        outcomes["version"] = live
        self._log_transition(live)
        if self._emit is not None:
            self._emit(
                Signal(SignalKind.LIVENESS, live.ok, live.reason, live.error or "")
            )
        tags: list[ModelInfo] | None = None
        loaded: list[LoadedModel] | None = None
        if live.ok:
            o, value = self._measure("tags", self._client.tags)
            outcomes["tags"] = o
            tags = value if isinstance(value, list) else None
            o, value = self._measure("ps", self._client.ps)
            outcomes["ps"] = o
            loaded = value if isinstance(value, list) else None
        self.state = ApiState(
            liveness=live,
            version=version if isinstance(version, str) else self.state.version,
            tags=tuple(tags) if tags is not None else None,
            loaded=tuple(loaded) if loaded is not None else None,
            finished_at=time.time(),
        )
        return self._families(outcomes, version if isinstance(version, str) else None, tags, loaded)

    def status(self) -> str:
        """The head of ``STATUS=``: is Ollama up, its version, models loaded, probe time."""
        st = self.state
        live = st.liveness
        if live is None:
            return "waiting for the first probe of " + self._client.base_url
        if not live.ok:
            return f"ollama down ({live.reason}: {live.error})"
        models = ""
        if st.loaded is not None:
            n = len(st.loaded)
            models = f", {n} model" + ("" if n == 1 else "s") + " loaded"
        return f"ollama {st.version or '?'} up{models}, last probe {live.duration * 1000:.0f} ms"

    def close(self) -> None:
        self._client.close()

    def _log_transition(self, live: ProbeResult) -> None:
        if live.reason == "local_error":
            # the watchdog's own exhaustion says nothing about Ollama: logged each time, and
            # not an ollama_down (the healing policy does not count it either)
            log.warning("probe_local_error", probe="version", error=live.error)
            return
        # one event per state change, not per probe
        if live.ok and self._last_liveness_ok is not True:
            log.info("ollama_up", duration_ms=round(live.duration * 1000, 1))
        elif not live.ok and self._last_liveness_ok is not False:
            log.warning("ollama_down", reason=live.reason, error=live.error)
        self._last_liveness_ok = live.ok

    def _families(
        self,
        outcomes: dict[str, ProbeResult],
        version: str | None,
        tags: list[ModelInfo] | None,
        loaded: list[LoadedModel] | None,
    ) -> list[Metric]:
        up = GaugeMetricFamily(
            "ollama_up", "1 if the last liveness probe (GET /api/version) succeeded."
        )
        up.add_metric([], 1.0 if outcomes["version"].ok else 0.0)
        fams: list[Metric] = [up]

        if version is not None:
            info = GaugeMetricFamily(
                "ollama_build_info", "Ollama's version, from /api/version.", labels=["version"]
            )
            info.add_metric([version[:64]], 1.0)
            fams.append(info)

        success = GaugeMetricFamily(
            "ollama_probe_success", "1 if the last probe succeeded.", labels=["probe"]
        )
        duration = GaugeMetricFamily(
            "ollama_probe_duration_seconds",
            "How long the last probe took, failed ones included.",
            labels=["probe"],
        )
        for probe in API_PROBES:
            o = outcomes.get(probe)
            success.add_metric([probe], 1.0 if o is not None and o.ok else 0.0)
            if o is not None:
                duration.add_metric([probe], o.duration)
        failures = CounterMetricFamily(
            "ollama_probe_failures",
            "Failed probes by reason (timeout, refused, http_error, bad_response, local_error).",
            labels=["probe", "reason"],
        )
        for (probe, reason), n in sorted(self._counters.failures.items()):
            failures.add_metric([probe, reason], float(n))
        fams += [success, duration, failures]

        if tags is not None:
            avail = GaugeMetricFamily("ollama_models_available", "Models in the store (/api/tags).")
            avail.add_metric([], float(len(tags)))
            size = GaugeMetricFamily(
                "ollama_models_size_bytes", "Total size of the models in the store (/api/tags)."
            )
            size.add_metric([], float(sum(m.size for m in tags)))
            fams += [avail, size]

        if loaded is not None:
            fams += _loaded_families(loaded)
        return fams


def _loaded_families(loaded: list[LoadedModel]) -> list[Metric]:
    count = GaugeMetricFamily("ollama_models_loaded", "Models loaded in memory now (/api/ps).")
    count.add_metric([], float(len(loaded)))
    is_loaded = GaugeMetricFamily(
        "ollama_model_loaded", "1 for each model loaded now.", labels=["model"]
    )
    memory = GaugeMetricFamily(
        "ollama_model_memory_bytes",
        "Memory of a loaded model, RAM and VRAM together (size in /api/ps).",
        labels=["model"],
    )
    vram = GaugeMetricFamily(
        "ollama_model_vram_bytes", "GPU memory of a loaded model (size_vram).", labels=["model"]
    )
    expires = GaugeMetricFamily(
        "ollama_model_expires_timestamp_seconds",
        "When a loaded model will be unloaded (keep_alive), as a Unix time.",
        labels=["model"],
    )
    seen: set[str] = set()
    for m in loaded[:MAX_MODEL_SERIES]:
        name = m.name[:200]
        if name in seen:
            continue
        seen.add(name)
        is_loaded.add_metric([name], 1.0)
        memory.add_metric([name], float(m.size))
        vram.add_metric([name], float(m.size_vram))
        if m.expires_at is not None:
            expires.add_metric([name], m.expires_at)
    return [count, is_loaded, memory, vram, expires]


__all__ = ["API_PROBES", "ApiCollector", "ApiState"]
