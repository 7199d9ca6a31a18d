"""``ollama-watchdog check``: one probe round now, as a Nagios/Icinga plugin.

Exit codes follow the plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The output is
one line, ``OLLAMA <STATE> - <summary> | <perfdata>``, with perfdata in the plugin format
(``'label'=value[UOM];warn;crit;min;max``), or a JSON document with ``--json``.

What makes which state:

* CRITICAL: ``/api/version`` fails (nothing else is tried: it would fail the same way, slowly),
  or the deep probe (``[probe] deep_model``) fails: Ollama answers but cannot generate.
* WARNING: ``/api/tags`` or ``/api/ps`` fail while the server answers, or no model is installed
  (an Ollama with no models serves nobody).
* WARNING/CRITICAL also when ``--warning``/``--critical`` (Nagios ranges) match the response
  time: the deep probe's time to first token when a deep model is probed (what a user waits
  for), else ``/api/version``'s response time. The ranges appear in that perfdata item.
* UNKNOWN: the check itself could not run: a config error (the line names the key and the
  fix), a bad threshold, or an unexpected error here, not in Ollama.

A deep probe answered with 503 (Ollama's "server busy": the queue is full) is CRITICAL: users
get the same answer. Without a deep model the line says that generation was not checked.
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ollama_watchdog.collectors.probe import DeepProbeResult, run_deep_probe
from ollama_watchdog.ollama.api import (
    LoadedModel,
    ModelInfo,
    OllamaClient,
    ProbeResult,
    timed_probe,
)

if TYPE_CHECKING:
    from ollama_watchdog.config import Config


class Status(enum.IntEnum):
    """Nagios plugin states; the value is the exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3


class RangeError(ValueError):
    """A threshold that is not a Nagios range; the message says what is accepted."""


_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE_RE = re.compile(rf"(@)?(?:(~|{_NUMBER})?:)?({_NUMBER})?")


@dataclass(frozen=True, slots=True)
class NagiosRange:
    """A threshold range in the Nagios plugin syntax (``[@]start:end``).

    ``10`` alerts outside 0..10 (below 0 or above 10); ``10:`` below 10; ``~:10`` above 10;
    ``10:20`` outside 10..20; ``@10:20`` inside 10..20 (bounds included).
    """

    text: str
    start: float
    end: float
    inside: bool

    @classmethod
    def parse(cls, text: str) -> NagiosRange:
        raw = text.strip()
        m = _RANGE_RE.fullmatch(raw)
        help_text = (
            f"threshold {text!r} is not a Nagios range: use 10 (alert above 10), 10: (below 10), "
            "~:10 (above 10), 10:20 (outside 10..20) or @10:20 (inside), in seconds"
        )
        if not raw or m is None or (m.group(3) is None and ":" not in raw):
            raise RangeError(help_text)
        start_text = m.group(2)
        if start_text is None:
            start = 0.0
        elif start_text == "~":
            start = -math.inf
        else:
            start = float(start_text)
        end = float(m.group(3)) if m.group(3) is not None else math.inf
        if start > end:
            raise RangeError(f"threshold {text!r}: the start {start:g} is above the end {end:g}")
        return cls(raw, start, end, m.group(1) is not None)

    def alerts(self, value: float) -> bool:
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def describe(self) -> str:
        if self.inside:
            return f"range @{self.text.lstrip('@')}: inside {self.start:g}..{self.end:g}s"
        if self.end == math.inf:
            return f"range {self.text}: below {self.start:g}s"
        if self.start <= 0:
            # a duration is never negative: "10" and "~:10" both mean above 10 s
            return f"range {self.text}: above {self.end:g}s"
        return f"range {self.text}: outside {self.start:g}..{self.end:g}s"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``--warning``/``--critical`` ranges on the response time (seconds)."""

    warning: NagiosRange | None = None
    critical: NagiosRange | None = None

    @classmethod
    def parse(cls, warning: str | None, critical: str | None) -> Thresholds:
        return cls(
            NagiosRange.parse(warning) if warning else None,
            NagiosRange.parse(critical) if critical else None,
        )


NO_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True)
class CheckResult:
    """Everything one round found; rendered as a line or JSON."""

    status: Status
    summary: str
    probes: tuple[ProbeResult, ...]
    version: str | None = None
    models: tuple[str, ...] | None = None
    loaded: tuple[str, ...] | None = None
    deep_model: str = ""
    deep: DeepProbeResult | None = None
    thresholds: Thresholds = NO_THRESHOLDS
    #: the perfdata label the thresholds were judged on (ttft_seconds or version_seconds)
    measured: str = ""


def run_check(
    client: OllamaClient,
    deep_model: str,
    deep_timeout: float,
    thresholds: Thresholds = NO_THRESHOLDS,
) -> CheckResult:
    """One round: version, then tags and ps, then the deep probe when a model is configured."""
    url = client.base_url
    version_outcome, version = timed_probe("version", client.version)
    if version is None:
        return CheckResult(
            Status.CRITICAL,
            f"Ollama is not answering at {url}: {version_outcome.reason} "
            f"({version_outcome.error})",
            (version_outcome,),
            deep_model=deep_model,
            thresholds=thresholds,
        )
    tags_outcome, tags = timed_probe("tags", client.tags)
    ps_outcome, loaded = timed_probe("ps", client.ps)
    outcomes = [version_outcome, tags_outcome, ps_outcome]
    deep: DeepProbeResult | None = None
    if deep_model:
        deep = run_deep_probe(client, deep_model, deep_timeout)
        outcomes.append(
            ProbeResult("generate", deep.ok, deep.seconds, deep.reason, deep.error or None)
        )
    return _judge(url, version, tags, loaded, tuple(outcomes), deep_model, deep, thresholds)


def _judge(
    url: str,
    version: str,
    tags: list[ModelInfo] | None,
    loaded: list[LoadedModel] | None,
    outcomes: tuple[ProbeResult, ...],
    deep_model: str,
    deep: DeepProbeResult | None,
    thresholds: Thresholds = NO_THRESHOLDS,
) -> CheckResult:
    facts = [f"Ollama {version} at {url}"]
    if tags is not None:
        facts.append(f"{len(tags)} models")
    if loaded is not None:
        facts.append(f"{len(loaded)} loaded")
    problems: list[tuple[Status, str]] = []
    if deep is not None:
        if deep.ok and deep.result is not None:
            tps = deep.result.tokens_per_second
            rate = f", {tps:.1f} tokens/s" if tps is not None else ""
            ttft = deep.result.ttft_seconds
            first = f", first token {ttft:.2f}s" if ttft is not None else ""
            facts.append(f"{deep_model} generates{first}{rate}")
        elif deep.error.startswith("HTTP 503"):
            problems.append(
                (
                    Status.CRITICAL,
                    f"Ollama refuses inference: generate with {deep_model} at {url} answered "
                    f"{deep.error} (users get the same; the queue is full or the server is "
                    "stuck: OLLAMA_MAX_QUEUE, OLLAMA_NUM_PARALLEL)",
                )
            )
        else:
            problems.append(
                (
                    Status.CRITICAL,
                    f"generate with {deep_model} at {url} failed: {deep.reason} ({deep.error})",
                )
            )
    else:
        facts.append("generation not checked (set [probe] deep_model or --model)")
    for outcome in outcomes:
        if outcome.probe in ("tags", "ps") and not outcome.ok:
            problems.append(
                (
                    Status.WARNING,
                    f"{url}/api/{outcome.probe} failed: {outcome.reason} ({outcome.error})",
                )
            )
    if tags is not None and not tags:
        problems.append((Status.WARNING, "no models installed"))
    measured, seconds = _response_time(outcomes, deep)
    bounds = ((Status.CRITICAL, thresholds.critical), (Status.WARNING, thresholds.warning))
    for level, bound in bounds:
        if bound is not None and bound.alerts(seconds):
            what = "first token" if measured == "ttft_seconds" else "/api/version answered"
            problems.append(
                (level, f"{what} after {seconds:.3g}s ({level.name.lower()} {bound.describe()})")
            )
            break
    status = max((s for s, _ in problems), default=Status.OK)
    summary = "; ".join([m for _, m in sorted(problems, key=lambda p: -p[0])] + [", ".join(facts)])
    return CheckResult(
        status,
        summary,
        outcomes,
        version=version,
        models=tuple(m.name for m in tags) if tags is not None else None,
        loaded=tuple(m.name for m in loaded) if loaded is not None else None,
        deep_model=deep_model,
        deep=deep,
        thresholds=thresholds,
        measured=measured,
    )


def _response_time(
    outcomes: tuple[ProbeResult, ...], deep: DeepProbeResult | None
) -> tuple[str, float]:
    """(perfdata label, seconds) the thresholds judge: TTFT when measured, else /api/version."""
    gen = deep.result if deep is not None else None
    if gen is not None and gen.ttft_seconds is not None:
        return "ttft_seconds", gen.ttft_seconds
    version = next(o for o in outcomes if o.probe == "version")
    return "version_seconds", version.duration


def _perf(label: str, value: float, unit: str = "", warn: str = "", crit: str = "") -> str:
    return f"{label}={value:.6g}{unit};{warn};{crit};0"


def perfdata(result: CheckResult) -> str:
    """Nagios perfdata: per-probe durations, model counts, deep-probe figures when measured;
    the ``--warning``/``--critical`` ranges on the item they were judged on."""
    th = result.thresholds
    measured = result.measured or "version_seconds"
    ranges = {
        measured: (
            th.warning.text if th.warning is not None else "",
            th.critical.text if th.critical is not None else "",
        )
    }

    def perf(label: str, value: float, unit: str = "") -> str:
        return _perf(label, value, unit, *ranges.get(label, ("", "")))

    parts = [perf(f"{o.probe}_seconds", o.duration, "s") for o in result.probes]
    if result.models is not None:
        parts.append(_perf("models", len(result.models)))
    if result.loaded is not None:
        parts.append(_perf("loaded", len(result.loaded)))
    gen = result.deep.result if result.deep is not None else None
    if gen is not None:
        if gen.ttft_seconds is not None:
            parts.append(perf("ttft_seconds", gen.ttft_seconds, "s"))
        if gen.tokens_per_second is not None:
            parts.append(_perf("tokens_per_second", gen.tokens_per_second))
        parts.append(_perf("load_seconds", gen.load_duration_s, "s"))
    return " ".join(parts)


def render_line(result: CheckResult) -> str:
    # '|' separates perfdata in the plugin format, so it must not appear in the text part
    summary = result.summary.replace("|", "/").replace("\n", " ")
    return f"OLLAMA {result.status.name} - {summary} | {perfdata(result)}"


def render_json(result: CheckResult) -> str:
    doc: dict[str, Any] = {
        "status": result.status.name,
        "exit_code": int(result.status),
        "summary": result.summary,
        "version": result.version,
        "models": list(result.models) if result.models is not None else None,
        "loaded": list(result.loaded) if result.loaded is not None else None,
        "probes": [
            {
                "probe": o.probe,
                "ok": o.ok,
                "duration_seconds": o.duration,
                "reason": o.reason,
                "detail": o.error or "",
            }
            for o in result.probes
        ],
    }
    if result.deep_model:
        gen = result.deep.result if result.deep is not None else None
        doc["generate"] = {
            "model": result.deep_model,
            "ok": result.deep.ok if result.deep is not None else False,
            # measurements only: the generated text is never kept (GenerateResult has none)
            **(asdict(gen) if gen is not None else {}),
            "tokens_per_second": gen.tokens_per_second if gen is not None else None,
        }
    return json.dumps(doc, indent=2, sort_keys=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ollama-watchdog check``."""
    parser.add_argument("--json", action="store_true", help="print a JSON document, not a line")
    parser.add_argument(
        "--no-deep",
        action="store_true",
        help="skip the generation probe even if [probe] deep_model is set",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="probe generation with this model (default: [probe] deep_model)",
    )
    parser.add_argument(
        "-w",
        "--warning",
        default=None,
        metavar="RANGE",
        help="WARNING when the response time (seconds) matches this Nagios range: time to "
        "first token when generation is probed, else /api/version's answer time; 2 = above "
        "2 s, @0:0.5 = inside 0..0.5 s",
    )
    parser.add_argument(
        "-c", "--critical", default=None, metavar="RANGE", help="CRITICAL range, as --warning"
    )


def config_error_line(error: Exception) -> str:
    """The plugin line for a config error: UNKNOWN (exit 3), as monitoring systems expect."""
    text = str(error).replace("|", "/").replace("\n", " ")
    return f"OLLAMA UNKNOWN - config error: {text}"


def main(args: argparse.Namespace, config: Config) -> int:
    """Run one round and print it; the exit code is the Nagios state."""
    deep_model = "" if args.no_deep else (args.model or config.probe.deep_model)
    try:
        thresholds = Thresholds.parse(args.warning, args.critical)
    except RangeError as exc:
        result = CheckResult(Status.UNKNOWN, str(exc), ())
        print(render_json(result) if args.json else render_line(result), file=sys.stdout)
        return int(result.status)
    client = OllamaClient(config.ollama.url, config.ollama.timeout)
    try:
        result = run_check(client, deep_model, config.probe.deep_timeout, thresholds)
    except Exception as exc:  # a bug here must still read as UNKNOWN to the monitoring system
        result = CheckResult(Status.UNKNOWN, f"check failed: {type(exc).__name__}: {exc}", ())
    finally:
        client.close()
    print(render_json(result) if args.json else render_line(result), file=sys.stdout)
    return int(result.status)


__all__ = [
    "CheckResult",
    "NagiosRange",
    "ProbeResult",
    "RangeError",
    "Status",
    "Thresholds",
    "add_arguments",
    "config_error_line",
    "main",
    "perfdata",
    "render_json",
    "render_line",
    "run_check",
]
