"""The deep probe: one tiny ``/api/generate`` with ``[probe] deep_model``.

``/api/version`` answers while the runner side is broken (a crashed llama-server, a GPU that
fell off the bus, a load that never finishes), so liveness alone misses the outages users feel.
The deep probe asks the model for a few tokens and exports what a user would experience: time
to first token, generation speed, and how long the model took to load.

The prompt is fixed and never logged, nor is the answer: the only text that leaves this module
is Ollama's own error message (bounded by ``OllamaClient``).

``keep_alive``: every request resets the model's expiry to the request's keep_alive. A probe
that loads a cold model uses a short one, so probing never pins memory; if the model is already
loaded, the probe passes the time that model had left, so it neither evicts a model early nor
keeps it longer than the users' own requests asked for.

The probe's own requests are counted (``ollama_watchdog_probe_requests_total{route,code}``): a
deep probe is a real ``POST /api/generate`` and lands in Ollama's request log like a user's, so
the inference SLIs in prometheus/recordings.yml subtract these counts to keep the watchdog's
traffic out of what users get. ``code`` is the HTTP status the probe received, or ``none`` when
no answer came (refused, or a timeout before the response headers).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ollama_watchdog.ollama.api import (
    PROBE_REASONS,
    GenerateResult,
    OllamaClient,
    ProbeError,
    ProbeReason,
)
from ollama_watchdog.signals import Signal, SignalKind

#: the fixed prompt: short, deterministic at temperature 0, nothing anyone would log
PROMPT = "Reply with the single word: ok"
#: tokens to generate: enough to measure a rate, few enough to cost nothing
NUM_PREDICT = 8
#: keep_alive when the model was not loaded before the probe
COLD_KEEP_ALIVE = "30s"
#: expires_at beyond this many seconds from now means "forever" (Ollama shows year 2318)
_FOREVER = 10 * 365 * 86400.0

PROBE = "generate"
#: the route a deep probe requests, as the request log's ``route`` label spells it
PROBE_ROUTE = "/api/generate"
#: ``code`` label of a probe request that got no HTTP answer
NO_ANSWER = "none"

log = structlog.get_logger()


def generation_refusal(model: str, capabilities: tuple[str, ...] | None) -> str | None:
    """Why ``model`` cannot be the deep model (it cannot generate), or None when it can.

    An embedding-only model answers ``/api/generate`` with 400 ("does not support generate"):
    a deep probe with it fails on a healthy server, and a watchdog that reads those failures
    as a hang restarts a healthy host over and over. ``capabilities`` None (Ollama before 0.30
    does not report them) cannot be judged and is accepted.
    """
    if capabilities is None or "completion" in capabilities:
        return None
    has = ", ".join(capabilities) or "none"
    return (
        f"probe.deep_model {model!r} cannot generate (capabilities: {has}): choose a model "
        "with the completion capability, e.g. the smallest chat model installed, or set "
        'deep_model = "" to turn the deep probe off'
    )


@dataclass(frozen=True, slots=True)
class DeepProbeResult:
    """The outcome of the last deep probe, for the watchdog policy and ``check``."""

    ok: bool
    #: ProbeError reason when not ok (timeout | refused | http_error | bad_response |
    #: local_error)
    reason: ProbeReason | None
    #: short error text (Ollama's own message), empty when ok
    error: str
    seconds: float
    #: wall-clock time of the end of the probe (unix seconds)
    at: float
    result: GenerateResult | None = None
    #: HTTP status received (``"200"``), or ``"none"``: what the request log may count
    code: str = NO_ANSWER


def keep_alive_for(client: OllamaClient, model: str, now: Callable[[], float] = time.time) -> str:
    """keep_alive that leaves the model's residency as it was (see the module docstring)."""
    try:
        loaded = client.ps()
    except ProbeError:
        return COLD_KEEP_ALIVE
    wanted = {model, model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"}
    for entry in loaded:
        if entry.name in wanted or entry.name.removesuffix(":latest") in wanted:
            if entry.expires_at is None:
                return COLD_KEEP_ALIVE
            left = entry.expires_at - now()
            if left > _FOREVER:
                return "-1m"  # negative = forever, as the users set it
            return f"{max(math.ceil(left), 1)}s"
    return COLD_KEEP_ALIVE


def run_deep_probe(client: OllamaClient, model: str, timeout: float) -> DeepProbeResult:
    """One deep probe; never raises for Ollama's failures (they are the result)."""
    start = time.monotonic()
    keep_alive = keep_alive_for(client, model)
    try:
        result = client.generate(
            model, PROMPT, num_predict=NUM_PREDICT, keep_alive=keep_alive, timeout=timeout
        )
    except ProbeError as exc:
        # a failure after the response headers (timeout, error chunk) keeps their status
        code = str(exc.status) if exc.status is not None else NO_ANSWER
        return DeepProbeResult(
            False, exc.reason, exc.detail, time.monotonic() - start, time.time(), None, code
        )
    return DeepProbeResult(True, None, "", time.monotonic() - start, time.time(), result, "200")


class DeepProbeCollector:
    """Collector ``probe``: runs one deep probe per ``collect()`` on its runner thread.

    Each result is emitted as a ``SignalKind.DEEP_PROBE`` signal for the healing side.
    """

    name = "probe"

    def __init__(
        self,
        client: OllamaClient,
        model: str,
        timeout: float,
        emit: Callable[[Signal], None] | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._timeout = timeout
        self._emit = emit
        self._failures = dict.fromkeys(PROBE_REASONS, 0)
        self._requests: dict[str, int] = {}
        self._last: DeepProbeResult | None = None
        self._lock = threading.Lock()
        # the model's capabilities are checked on first contact (Ollama may be down at start)
        self._checked = False
        self.disabled: str | None = None

    def close(self) -> None:
        self._client.close()

    @property
    def last_result(self) -> DeepProbeResult | None:
        with self._lock:
            return self._last

    def _check_model(self) -> None:
        try:
            caps = self._client.capabilities(self._model)
        except ProbeError:
            return  # not reachable or not answering: asked again next round
        self._checked = True
        self.disabled = generation_refusal(self._model, caps)
        if self.disabled is not None:
            log.error("deep_probe_disabled", model=self._model, error=self.disabled)

    def collect(self) -> Sequence[Metric]:
        if not self._checked:
            self._check_model()
        if self.disabled is not None:
            return []  # no probe, no signal: a model that cannot generate proves nothing
        outcome = run_deep_probe(self._client, self._model, self._timeout)
        with self._lock:
            self._last = outcome
            if outcome.reason is not None:
                self._failures[outcome.reason] += 1
            self._requests[outcome.code] = self._requests.get(outcome.code, 0) + 1
            failures = dict(self._failures)
            requests = dict(self._requests)
        if outcome.reason == "local_error":
            log.warning("probe_local_error", probe=PROBE, error=outcome.error)
        if self._emit is not None:
            self._emit(
                Signal(
                    SignalKind.DEEP_PROBE,
                    outcome.ok,
                    outcome.reason,
                    outcome.error,
                    model=self._model,
                )
            )
        return families(outcome, failures, requests)


def families(
    outcome: DeepProbeResult,
    failures: dict[ProbeReason, int],
    requests: dict[str, int] | None = None,
) -> list[Metric]:
    """The probe's metric families from its last outcome and cumulative counts.

    ``requests``: probe requests sent so far by HTTP status (``none``: no answer).
    """
    success = GaugeMetricFamily(
        "ollama_probe_success", "1 if the last probe succeeded.", labels=["probe"]
    )
    success.add_metric([PROBE], 1.0 if outcome.ok else 0.0)
    duration = GaugeMetricFamily(
        "ollama_probe_duration_seconds",
        "How long the last probe took, failed ones included.",
        labels=["probe"],
    )
    duration.add_metric([PROBE], outcome.seconds)
    failed = CounterMetricFamily(
        "ollama_probe_failures",
        "Failed probes by reason (timeout, refused, http_error, bad_response, local_error).",
        labels=["probe", "reason"],
    )
    for reason in PROBE_REASONS:
        failed.add_metric([PROBE, reason], float(failures[reason]))
    sent = CounterMetricFamily(
        "ollama_watchdog_probe_requests",
        "Requests the deep probe sent to Ollama, by route and HTTP status (none: no answer); "
        "subtracted from ollama_http_requests_total by the inference SLIs.",
        labels=["route", "code"],
    )
    for code, n in sorted((requests or {}).items()):
        sent.add_metric([PROBE_ROUTE, code], float(n))
    fams: list[Metric] = [success, duration, failed, sent]
    result = outcome.result
    if result is None:
        # no figures from a failed probe: an old value would look like a live measurement
        return fams
    if result.ttft_seconds is not None:
        ttft = GaugeMetricFamily(
            "ollama_probe_generate_ttft_seconds",
            "Time to the first token of the last deep probe (includes any model load).",
        )
        ttft.add_metric([], result.ttft_seconds)
        fams.append(ttft)
    tps = result.tokens_per_second
    if tps is not None:
        rate = GaugeMetricFamily(
            "ollama_probe_generate_tokens_per_second",
            "Generation speed of the last deep probe (eval_count / eval_duration).",
        )
        rate.add_metric([], tps)
        fams.append(rate)
    load = GaugeMetricFamily(
        "ollama_probe_generate_load_duration_seconds",
        "load_duration of the last deep probe (queueing plus loading; small when loaded).",
    )
    load.add_metric([], result.load_duration_s)
    fams.append(load)
    return fams


__all__ = [
    "COLD_KEEP_ALIVE",
    "NO_ANSWER",
    "NUM_PREDICT",
    "PROBE_ROUTE",
    "PROMPT",
    "DeepProbeCollector",
    "DeepProbeResult",
    "families",
    "generation_refusal",
    "keep_alive_for",
    "run_deep_probe",
]
