"""``ollama-watchdog check``: one probe round now, as a Nagios/Icinga plugin.

Exit codes follow the plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN. The output is
one line, ``OLLAMA <STATE> - <summary> | <perfdata>``, with perfdata in the plugin format
(``'label'=value[UOM];warn;crit;min;max``), or a JSON document with ``--json``.

What makes which state:

* CRITICAL: ``/api/version`` fails (nothing else is tried: it would fail the same way, slowly),
  or the deep probe (``[probe] deep_model``) fails: Ollama answers but cannot generate.
* WARNING: ``/api/tags`` or ``/api/ps`` fail while the server answers, or no model is installed
  (an Ollama with no models serves nobody).
* UNKNOWN: the check itself could not run (an unexpected error here, not in Ollama).
"""

from __future__ import annotations

import argparse
import enum
import json
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


def run_check(client: OllamaClient, deep_model: str, deep_timeout: float) -> CheckResult:
    """One round: version, then tags and ps, then the deep probe when a model is configured."""
    version_outcome, version = timed_probe("version", client.version)
    if version is None:
        return CheckResult(
            Status.CRITICAL,
            f"Ollama is not answering: {version_outcome.reason} ({version_outcome.error})",
            (version_outcome,),
            deep_model=deep_model,
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
    return _judge(version, tags, loaded, tuple(outcomes), deep_model, deep)


def _judge(
    version: str,
    tags: list[ModelInfo] | None,
    loaded: list[LoadedModel] | None,
    outcomes: tuple[ProbeResult, ...],
    deep_model: str,
    deep: DeepProbeResult | None,
) -> CheckResult:
    facts = [f"Ollama {version}"]
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
        else:
            problems.append(
                (
                    Status.CRITICAL,
                    f"generate with {deep_model} failed: {deep.reason} ({deep.error})",
                )
            )
    for outcome in outcomes:
        if outcome.probe in ("tags", "ps") and not outcome.ok:
            problems.append(
                (
                    Status.WARNING,
                    f"/api/{outcome.probe} failed: {outcome.reason} ({outcome.error})",
                )
            )
    if tags is not None and not tags:
        problems.append((Status.WARNING, "no models installed"))
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
    )


def _perf(label: str, value: float, unit: str = "") -> str:
    return f"{label}={value:.6g}{unit};;;0"


def perfdata(result: CheckResult) -> str:
    """Nagios perfdata: per-probe durations, model counts, deep-probe figures when measured."""
    parts = [_perf(f"{o.probe}_seconds", o.duration, "s") for o in result.probes]
    if result.models is not None:
        parts.append(_perf("models", len(result.models)))
    if result.loaded is not None:
        parts.append(_perf("loaded", len(result.loaded)))
    gen = result.deep.result if result.deep is not None else None
    if gen is not None:
        if gen.ttft_seconds is not None:
            parts.append(_perf("ttft_seconds", gen.ttft_seconds, "s"))
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


def main(args: argparse.Namespace, config: Config) -> int:
    """Run one round and print it; the exit code is the Nagios state."""
    deep_model = "" if args.no_deep else config.probe.deep_model
    client = OllamaClient(config.ollama.url, config.ollama.timeout)
    try:
        result = run_check(client, deep_model, config.probe.deep_timeout)
    except Exception as exc:  # a bug here must still read as UNKNOWN to the monitoring system
        result = CheckResult(Status.UNKNOWN, f"check failed: {type(exc).__name__}: {exc}", ())
    finally:
        client.close()
    print(render_json(result) if args.json else render_line(result), file=sys.stdout)
    return int(result.status)


__all__ = [
    "CheckResult",
    "ProbeResult",
    "Status",
    "add_arguments",
    "main",
    "perfdata",
    "render_json",
    "render_line",
    "run_check",
]
