"""Latency histograms from llama-server's timing lines, as a scrape reads them.

``ollama_log_prefill_seconds{model}``: one observation per completion, its ``prompt eval
time``. ``ollama_log_time_per_output_token_seconds{model}``: one observation per completion,
its ``eval time`` over the steps after the first token (``tokens - 1``, what the runner's own
"ms per token" divides by). The expected values below were read off the real lines
(tests/fixtures/ollama/llama-server-real.txt, FACTS.md §2.7), not computed by the collector.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.facts import REAL_LOGS
from support.registry import registry_of
from support.runnerlog import BLOB_A, BLOB_B, loaded, start_line, timing, write_manifest

from ollama_watchdog.collectors.logs.counters import (
    MAX_MODELS,
    PREFILL_BUCKETS,
    TPOT_BUCKETS,
    LogCounters,
)
from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.ollama.logparse import reset_stream

LLAMA_SERVER_REAL = REAL_LOGS.with_name("llama-server-real.txt")
PREFILL, TPOT = "ollama_log_prefill_seconds", "ollama_log_time_per_output_token_seconds"
LLAMA = {"model": "llama3.2:latest"}


@pytest.fixture(autouse=True)
def _fresh_stream() -> None:
    reset_stream()


def buckets(reg: CollectorRegistry, name: str, labels: dict[str, str]) -> dict[str, float]:
    """le -> cumulative count, as exposed."""
    out = {}
    for le in (*(repr(b) for b in (PREFILL_BUCKETS if name == PREFILL else TPOT_BUCKETS)),
               "+Inf"):  # fmt: skip
        value = reg.get_sample_value(f"{name}_bucket", {**labels, "le": le})
        assert value is not None, (name, labels, le)
        out[le] = value
    return out


def first_bucket(reg: CollectorRegistry, name: str, labels: dict[str, str]) -> list[str]:
    """The ``le`` of each observation's own bucket (from the cumulative counts)."""
    out: list[str] = []
    previous = 0.0
    for le, cumulative in buckets(reg, name, labels).items():
        out += [le] * int(cumulative - previous)
        previous = cumulative
    return out


def llama_counters(models: Path) -> tuple[LogCounters, CollectorRegistry]:
    write_manifest(models, "registry.ollama.ai", "library", "llama3.2", "latest", BLOB_A)
    counters = LogCounters(ModelNames(models))
    counters.feed([start_line(BLOB_A), loaded(1)])
    return counters, registry_of(counters.families)


def test_the_real_runner_lines(tmp_path: Path) -> None:
    counters, reg = llama_counters(tmp_path)
    counters.feed(LLAMA_SERVER_REAL.read_text(encoding="utf-8").splitlines())
    # four timing blocks in the file: run A tasks 0, 121, 130 and run C task 0
    prefill_s = [0.16947, 0.00767, 0.00121, 0.00080]
    # the runner's own "ms per token" of each eval line: 0.89, 1.10, 1.01, 0.13
    printed_tpot_s = [0.00089, 0.00110, 0.00101, 0.00013]
    assert reg.get_sample_value(f"{PREFILL}_count", LLAMA) == 4
    assert reg.get_sample_value(f"{PREFILL}_sum", LLAMA) == pytest.approx(sum(prefill_s))
    assert first_bucket(reg, PREFILL, LLAMA) == ["0.001", "0.005", "0.01", "0.25"]
    assert reg.get_sample_value(f"{TPOT}_count", LLAMA) == 4
    assert first_bucket(reg, TPOT, LLAMA) == ["0.01"] * 4
    # eval time / (tokens - 1) is what the runner prints, to its two decimals: 972.38 ms over
    # 968 tokens is 1.01 ms per token, where dividing by 968 would give 1.00
    tpot_sum = reg.get_sample_value(f"{TPOT}_sum", LLAMA)
    assert tpot_sum == pytest.approx(sum(printed_tpot_s), abs=4 * 0.000005)
    # the histogram's sum is the counter's: one source
    assert reg.get_sample_value(f"{PREFILL}_sum", LLAMA) == reg.get_sample_value(
        "ollama_log_prompt_eval_seconds_total", LLAMA
    )
    assert reg.get_sample_value("ollama_log_timed_completions_total", LLAMA) == 4


def test_each_completion_lands_in_its_bucket_bounds_included(tmp_path: Path) -> None:
    counters, reg = llama_counters(tmp_path)
    counters.feed(timing(751.87, 25, 5729.20, 96))  # FACTS.md §2.7: 60.31 ms per token
    counters.feed(timing(250.00, 10, 99.0, 100))  # on a bound: le is "less or equal"
    counters.feed(timing(3_000_000.0, 9000, 90_000.0, 2))  # a 50 min prompt; 90 s per token
    assert first_bucket(reg, PREFILL, LLAMA) == ["0.25", "1.0", "+Inf"]
    assert first_bucket(reg, TPOT, LLAMA) == ["0.01", "0.075", "+Inf"]
    assert reg.get_sample_value(f"{TPOT}_sum", LLAMA) == pytest.approx(
        5.7292 / 95 + 0.099 / 99 + 90.0
    )
    assert reg.get_sample_value(f"{PREFILL}_sum", LLAMA) == pytest.approx(0.75187 + 0.25 + 3000)


def test_a_completion_of_fewer_than_two_tokens_has_no_time_per_token(tmp_path: Path) -> None:
    counters, reg = llama_counters(tmp_path)
    counters.feed([*timing(5.0, 3, 0.0, 0), *timing(6.0, 3, 0.001, 1)])
    assert reg.get_sample_value(f"{PREFILL}_count", LLAMA) == 2
    assert reg.get_sample_value(f"{TPOT}_count", LLAMA) == 0
    assert reg.get_sample_value(f"{TPOT}_sum", LLAMA) == 0
    assert not any(math.isnan(v) for v in buckets(reg, TPOT, LLAMA).values())
    counters.feed(timing(5.0, 3, 10.0, 2))
    assert reg.get_sample_value(f"{TPOT}_count", LLAMA) == 1
    assert reg.get_sample_value(f"{TPOT}_sum", LLAMA) == pytest.approx(0.010)


def test_the_block_form_counts_like_the_per_line_form(tmp_path: Path) -> None:
    counters, reg = llama_counters(tmp_path)
    counters.feed(
        [
            "slot print_timing: id  0 | task 970 | ",
            "prompt eval time =     751.87 ms /    25 tokens (   30.07 ms per token,    33.25 tokens per second)",  # noqa: E501
            "       eval time =    5729.20 ms /    96 tokens (   60.31 ms per token,    16.58 tokens per second)",  # noqa: E501
            "      total time =    6481.07 ms /   121 tokens",
        ]
    )
    assert first_bucket(reg, PREFILL, LLAMA) == ["1.0"]
    assert first_bucket(reg, TPOT, LLAMA) == ["0.075"]


def test_the_model_label_follows_the_counters(tmp_path: Path) -> None:
    counters, reg = llama_counters(tmp_path)
    counters.feed(timing(10.0, 5, 30.0, 4))
    # a second runner while the first is live: whose line it is cannot be known
    counters.feed([start_line(BLOB_B), loaded(2), *timing(20.0, 5, 300.0, 4)])
    assert reg.get_sample_value(f"{PREFILL}_count", LLAMA) == 1
    assert reg.get_sample_value(f"{TPOT}_sum", LLAMA) == pytest.approx(0.010)
    unknown = {"model": "unknown"}
    assert reg.get_sample_value(f"{PREFILL}_sum", unknown) == pytest.approx(0.020)
    assert reg.get_sample_value(f"{TPOT}_sum", unknown) == pytest.approx(0.100)


def test_the_model_label_set_is_capped(tmp_path: Path) -> None:
    lines = []
    for i in range(100):
        blob = f"{i:064x}"
        write_manifest(tmp_path, "registry.ollama.ai", "library", f"m{i}", "latest", blob)
        lines += [start_line(blob), loaded(1), *timing(1.0, 1, 2.0, 3)]
    counters = LogCounters(ModelNames(tmp_path))
    counters.feed(lines)
    for name in (PREFILL, TPOT):
        family = next(f for f in counters.families() if f.name == name)
        counts = {s.labels["model"]: s.value for s in family.samples if s.name == f"{name}_count"}
        assert len(counts) == MAX_MODELS + 1  # 64 names + unknown
        assert sum(counts.values()) == 100
        assert counts["unknown"] == 100 - MAX_MODELS


def test_no_completion_no_series(tmp_path: Path) -> None:
    counters, _ = llama_counters(tmp_path)  # a runner started, nothing timed yet
    names = {s.name for f in counters.families() for s in f.samples}
    assert not {n for n in names if n.startswith((PREFILL, TPOT))}
    assert "ollama_log_messages_total" in names
