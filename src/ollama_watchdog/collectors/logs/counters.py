"""Events -> counters -> metric families: everything the logs collector counts.

Fed a batch of lines at a time by a follower thread (:meth:`LogCounters.feed`), read by
``collect()`` (:meth:`LogCounters.families`) from a copy taken under a lock held for
microseconds. A new kind of log line is recognised in :mod:`ollama_watchdog.ollama.logparse`
and counted here.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.ollama.logparse import (
    LEVELS,
    RUNNER_ERROR_KINDS,
    Event,
    Message,
    Request,
    Timing,
    parse_line,
)
from ollama_watchdog.ollama.routes import OTHER, STATUS_LABELS

#: request latency buckets (seconds): a HEAD / takes microseconds, a long generation minutes
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
_BUCKET_LABELS: Final = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")

#: prefill seconds per completion: vLLM's ``vllm:time_to_first_token_seconds`` buckets
PREFILL_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_PREFILL_LABELS: Final = (*(repr(b) for b in PREFILL_BUCKETS), "+Inf")
#: seconds per output token: vLLM's ``vllm:inter_token_latency_seconds`` buckets
TPOT_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
_TPOT_LABELS: Final = (*(repr(b) for b in TPOT_BUCKETS), "+Inf")

#: model label value when the owner of a timing line cannot be known
UNKNOWN_MODEL: Final = "unknown"
#: the model label takes at most this many distinct names (plus ``unknown``)
MAX_MODELS: Final = 64


@dataclass
class _RouteCounts:
    """The requests of one (method, route): a count per status code, a latency histogram."""

    #: by ``code`` label: a kept status code, or ``other``
    codes: dict[str, int]
    buckets: list[int]
    total: float = 0.0


@dataclass
class _Tokens:
    """One model's counters and latency histograms (bucket counts, not yet cumulative)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    completions: int = 0
    prefill: list[int] = field(default_factory=lambda: [0] * (len(PREFILL_BUCKETS) + 1))
    tpot: list[int] = field(default_factory=lambda: [0] * (len(TPOT_BUCKETS) + 1))
    tpot_sum: float = 0.0

    def copy(self) -> _Tokens:
        return replace(self, prefill=list(self.prefill), tpot=list(self.tpot))


class LogCounters:
    """Everything counted from the log; fed by a follower thread, read by ``collect()``.

    The model of a timing line is the model of the runner started last, and ``unknown`` while
    the scheduler reports more than one loaded runner (timing lines do not say which runner
    wrote them, FACTS.md §2.7).

    Latency, per completion that printed a timing block: its ``prompt eval time`` is one
    observation of ``ollama_log_prefill_seconds`` (llama-server measures it from the start of
    prompt processing until the first token is sampled: the runner's part of time to first
    token), and its ``eval time`` over the tokens after the first is one observation of
    ``ollama_log_time_per_output_token_seconds``. The eval time runs from the first token to
    the last, so it spans ``tokens - 1`` steps (the runner's own "ms per token" divides by that
    too); a completion of fewer than two tokens has no step and observes no TPOT.
    """

    def __init__(
        self,
        models: ModelNames | None = None,
        on_batch: Callable[[Sequence[str], Sequence[Event], Callable[[], str]], None] | None = None,
    ) -> None:
        #: called after each batch (follower thread) with its lines, its events and a function
        #: giving the model of a timing line: the healing side's activity tracker
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._models = models or ModelNames(None)
        self.lines = 0
        self.unparsed = 0
        # (method, route) -> counts: one lookup per request line for both metrics
        self._routes: dict[tuple[str, str], _RouteCounts] = {}
        self._levels: dict[str, int] = dict.fromkeys(LEVELS, 0)
        self._errors: dict[str, int] = dict.fromkeys(RUNNER_ERROR_KINDS, 0)
        self._tokens: dict[str, _Tokens] = {}
        # model tracking: touched by the follower thread only
        self._runner_blob: str | None = None
        self._loaded_runners = 0

    def feed(self, lines: Iterable[str]) -> None:
        """Parse and count a batch of lines (one lock acquisition per batch)."""
        # Parse outside the lock, so collect() never waits for it. Most lines give no event
        # (None) and are only counted.
        batch = lines if isinstance(lines, list) else list(lines)
        parsed = list(map(parse_line, batch))
        events = [event for event in parsed if event is not None]
        self._resolve_models(events)
        with self._lock:
            self.lines += len(parsed)
            self._count(events)
        if self._on_batch is not None:
            self._on_batch(batch, events, self._current_model)

    def count_overlong(self, n: int) -> None:
        """``n`` lines too long to keep (the follower dropped them): read, and unparsed."""
        with self._lock:
            self.lines += n
            self.unparsed += n

    def _count(self, events: list[Event]) -> None:
        # One loop per batch with the counters bound to locals: this runs for every event.
        routes, levels = self._routes, self._levels
        status_labels = STATUS_LABELS
        tokens: _Tokens | None = None  # of the current model, looked up once per batch
        for event in events:
            if isinstance(event, Request):
                method, route, code, seconds = event
                counts = routes.get((method, route))
                if counts is None:
                    counts = routes[method, route] = _RouteCounts(
                        {}, [0] * (len(DURATION_BUCKETS) + 1)
                    )
                code_label = status_labels.get(code, OTHER)
                counts.codes[code_label] = counts.codes.get(code_label, 0) + 1
                counts.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
                counts.total += seconds
            elif isinstance(event, Timing):
                phase, seconds, count = event
                if tokens is None:
                    tokens = self._tokens_for(self._current_model())
                if phase == "prompt":
                    tokens.prompt_tokens += count
                    tokens.prompt_seconds += seconds
                    tokens.prefill[bisect_left(PREFILL_BUCKETS, seconds)] += 1
                elif phase == "eval":
                    tokens.generated_tokens += count
                    tokens.generation_seconds += seconds
                    if count > 1:
                        per_token = seconds / (count - 1)
                        tokens.tpot[bisect_left(TPOT_BUCKETS, per_token)] += 1
                        tokens.tpot_sum += per_token
                else:
                    tokens.completions += 1
            elif isinstance(event, Message):
                level, error_kind, runner_blob, loaded_runners, server_start = event
                levels[level] += 1
                if error_kind is not None:
                    self._errors[error_kind] += 1
                if runner_blob is not None:
                    self._runner_blob = runner_blob
                    tokens = None  # the model may have changed
                if loaded_runners is not None:
                    self._loaded_runners = loaded_runners
                    tokens = None
                if server_start:
                    # a new server has no runners yet: whatever was live died with the old one
                    self._runner_blob = None
                    self._loaded_runners = 0
                    tokens = None
            else:  # Malformed
                self.unparsed += 1

    def _resolve_models(self, events: list[Event]) -> None:
        """Look up the model of every runner blob the batch may use, before taking the lock:
        a miss re-reads the manifests (rarely), which must not hold up collect()."""
        blobs = {e.runner_blob for e in events if isinstance(e, Message) and e.runner_blob}
        if self._runner_blob is not None:  # touched by the follower thread only, like feed()
            blobs.add(self._runner_blob)
        for blob in blobs:
            self._models.name_for(blob)

    def _current_model(self) -> str:
        if self._runner_blob is None or self._loaded_runners > 1:
            return UNKNOWN_MODEL
        # looked up by _resolve_models() outside the lock; never reads the manifests here
        return self._models.cached(self._runner_blob) or UNKNOWN_MODEL

    def _tokens_for(self, model: str) -> _Tokens:
        tokens = self._tokens.get(model)
        if tokens is None:
            if len(self._tokens) >= MAX_MODELS and model != UNKNOWN_MODEL:
                return self._tokens_for(UNKNOWN_MODEL)
            tokens = self._tokens[model] = _Tokens()
        return tokens

    def families(self) -> list[Metric]:
        """Complete metric families from a consistent copy of the counters."""
        with self._lock:
            lines, unparsed = self.lines, self.unparsed
            routes = {
                key: (dict(c.codes), list(c.buckets), c.total) for key, c in self._routes.items()
            }
            levels = dict(self._levels)
            errors = dict(self._errors)
            tokens = {m: t.copy() for m, t in self._tokens.items()}

        req = CounterMetricFamily(
            "ollama_http_requests",
            "Requests Ollama logged (gin request log), by method, route and status code.",
            labels=["method", "route", "code"],
        )
        for (method, route), (codes, _, _) in sorted(routes.items()):
            for code, n in sorted(codes.items()):
                req.add_metric([method, route, code], n)
        dur = HistogramMetricFamily(
            "ollama_http_request_duration_seconds",
            "Request latency as Ollama logged it (whole seconds above one minute).",
            labels=["method", "route"],
        )
        for (method, route), (_, buckets, total) in sorted(routes.items()):
            dur.add_metric([method, route], _cumulative(_BUCKET_LABELS, buckets), total)
        lvl = CounterMetricFamily(
            "ollama_log_messages", "Ollama server log messages by level.", labels=["level"]
        )
        for level in LEVELS:
            lvl.add_metric([level], levels[level])
        err = CounterMetricFamily(
            "ollama_runner_errors",
            "Model runner failures Ollama logged, by kind.",
            labels=["kind"],
        )
        for kind in RUNNER_ERROR_KINDS:
            err.add_metric([kind], errors[kind])

        def per_model(name: str, doc: str, field: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, t in sorted(tokens.items()):
                family.add_metric([model], getattr(t, field))
            return family

        prefill = HistogramMetricFamily(
            "ollama_log_prefill_seconds",
            "Prompt evaluation (prefill) time per completion, until the first token: the"
            " runner's part of time to first token (llama-server timing lines).",
            labels=["model"],
        )
        tpot = HistogramMetricFamily(
            "ollama_log_time_per_output_token_seconds",
            "Generation time per output token after the first, one observation per completion"
            " of two or more tokens (llama-server timing lines).",
            labels=["model"],
        )
        for model, t in sorted(tokens.items()):
            prefill.add_metric([model], _cumulative(_PREFILL_LABELS, t.prefill), t.prompt_seconds)
            tpot.add_metric([model], _cumulative(_TPOT_LABELS, t.tpot), t.tpot_sum)

        return [
            req,
            dur,
            lvl,
            err,
            per_model(
                "ollama_log_prompt_tokens",
                "Prompt tokens evaluated (llama-server timing lines; cache hits excluded).",
                "prompt_tokens",
            ),
            per_model(
                "ollama_log_generated_tokens",
                "Tokens generated (llama-server timing lines).",
                "generated_tokens",
            ),
            per_model(
                "ollama_log_prompt_eval_seconds",
                "Time spent evaluating prompts (llama-server timing lines).",
                "prompt_seconds",
            ),
            per_model(
                "ollama_log_generation_seconds",
                "Time spent generating tokens (llama-server timing lines).",
                "generation_seconds",
            ),
            per_model(
                "ollama_log_timed_completions",
                "Completions that ended normally and printed a timing block.",
                "completions",
            ),
            prefill,
            tpot,
            CounterMetricFamily("ollama_watchdog_log_lines", "Ollama log lines read.", value=lines),
            CounterMetricFamily(
                "ollama_watchdog_log_lines_unparsed",
                "Lines with a gin or slog marker that did not parse (Ollama's format moved), "
                "and lines too long to read (over 64 KiB).",
                value=unparsed,
            ),
        ]


def _cumulative(labels: tuple[str, ...], buckets: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts -> the cumulative ``(le, count)`` pairs of the exposition."""
    out: list[tuple[str, float]] = []
    running = 0
    for le, n in zip(labels, buckets, strict=True):
        running += n
        out.append((le, float(running)))
    return out


__all__ = [
    "DURATION_BUCKETS",
    "MAX_MODELS",
    "PREFILL_BUCKETS",
    "TPOT_BUCKETS",
    "UNKNOWN_MODEL",
    "LogCounters",
]
