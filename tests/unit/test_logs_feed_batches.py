"""The logs collector counts the same whatever the batches its follower hands it.

A file follower hands over whatever one read returned; journald hands over one record at a
time. The counters work per batch (one lock, a per-batch cache of the current model's token
counters), so the metrics a scrape sees must not depend on where the batches were cut, even
when a runner starts, a second one loads or the server restarts in the middle of one.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from support.registry import registry_of

from ollama_watchdog.collectors.logs.counters import LogCounters
from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.simulator.logformat import (
    format_gin_line,
    format_slog_line,
    format_timing_lines,
)

WHEN = datetime(2026, 8, 1, 12, 0, 0, tzinfo=UTC)
BLOB_A, BLOB_B = "a" * 64, "b" * 64


def write_manifest(models: Path, model: str, blob: str) -> None:
    path = models / "manifests" / "registry.ollama.ai" / "library" / model / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + blob}
    path.write_text(json.dumps({"layers": [layer]}), encoding="utf-8")


def slog(msg: str, *attrs: tuple[str, object], level: str = "INFO") -> str:
    return format_slog_line(WHEN, level, "x.go:1", msg, list(attrs))


def session(rnd: random.Random) -> list[str]:
    """A server's log: restarts, runner loads (one or two at once), requests, timings."""
    lines: list[str] = []
    for _ in range(40):
        if rnd.random() < 0.3:  # else the runners change under a running server
            lines.append(slog("server config", ("env", "map[]")))
        # a runner start and the scheduler's count, each now and then alone
        for blob in rnd.sample([BLOB_A, BLOB_B], rnd.randint(0, 2)):
            lines.append(slog("starting llama-server", ("cmd", f"--model /m/sha256-{blob}")))
            if rnd.random() < 0.7:
                lines.append(slog("loaded runners", ("count", rnd.randint(1, 2))))
        if rnd.random() < 0.3:
            lines.append(slog("loaded runners", ("count", rnd.randint(1, 2))))
        for _ in range(rnd.randint(0, 6)):
            code = rnd.choice([200, 200, 200, 404, 500])
            seconds = rnd.choice([0.00004, 0.2, 3.5, 95.0])
            lines.append(format_gin_line(WHEN, code, seconds, "127.0.0.1", "POST", "/api/chat"))
            prompt = rnd.uniform(1, 900), rnd.randint(1, 500)
            gen = rnd.uniform(1, 9000), rnd.randint(1, 900)
            lines += format_timing_lines(0, 7, *prompt, *gen, block=rnd.random() < 0.3)
        lines.append(slog("llama runner terminated", ("error", "exit status 2"), level="ERROR"))
        lines.append("ggml_cuda_init: found 1 CUDA devices:")
    return lines


def exposition(models: Path, batches: list[list[str]]) -> bytes:
    counters = LogCounters(ModelNames(models))
    for batch in batches:
        counters.feed(batch)
    return generate_latest(registry_of(counters.families))


@pytest.mark.parametrize("seed", range(5))
def test_batch_cuts_do_not_change_the_metrics(tmp_path: Path, seed: int) -> None:
    write_manifest(tmp_path, "llama3.2", BLOB_A)
    write_manifest(tmp_path, "qwen3", BLOB_B)
    rnd = random.Random(seed)
    lines = session(rnd)
    whole = exposition(tmp_path, [lines])
    one_by_one = exposition(tmp_path, [[line] for line in lines])
    cuts = sorted(rnd.sample(range(1, len(lines)), 30))
    random_cuts = exposition(
        tmp_path, [lines[a:b] for a, b in zip([0, *cuts], [*cuts, len(lines)], strict=True)]
    )
    assert whole == one_by_one == random_cuts
    # and the session did reach every counter this test is about
    text = whole.decode()
    for needle in (
        'ollama_log_timed_completions_total{model="llama3.2:latest"}',
        'ollama_log_timed_completions_total{model="qwen3:latest"}',
        'ollama_log_timed_completions_total{model="unknown"}',
        'ollama_runner_errors_total{kind="runner_terminated"} 40.0',
        'ollama_http_requests_total{code="500",method="POST",route="/api/chat"}',
        f"ollama_watchdog_log_lines_total {len(lines)}.0",
    ):
        assert needle in text
