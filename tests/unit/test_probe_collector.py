"""The deep probe collector against the simulator: metrics, failures, and model residency."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.registry import registry_of
from support.sim import SimulatorProcess
from support.tools import free_port
from support.wait import wait_until

from ollama_watchdog.collectors.probe import PROMPT, DeepProbeCollector
from ollama_watchdog.ollama.api import OllamaClient
from ollama_watchdog.signals import Signal, SignalKind


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimulatorProcess]:
    with SimulatorProcess(tmp_path / "sim", ["--token-delay", "0.001"]) as process:
        yield process


@pytest.fixture
def client(sim: SimulatorProcess) -> Iterator[OllamaClient]:
    c = OllamaClient(sim.url, timeout=10)
    try:
        yield c
    finally:
        c.close()


def first_model(client: OllamaClient) -> str:
    # the simulator also lists an embedding model, which (like Ollama) refuses to generate
    return next(m.name for m in client.tags() if "embed" not in m.name)


GEN = {"probe": "generate"}


def test_a_good_probe_exports_ttft_rate_and_load(client: OllamaClient) -> None:
    signals: list[Signal] = []
    model = first_model(client)
    collector = DeepProbeCollector(client, model, 30, emit=signals.append)
    registry = registry_of(collector.collect())
    assert registry.get_sample_value("ollama_probe_success", GEN) == 1.0
    assert (registry.get_sample_value("ollama_probe_duration_seconds", GEN) or 0) > 0
    assert (registry.get_sample_value("ollama_probe_generate_ttft_seconds") or 0) > 0
    assert (registry.get_sample_value("ollama_probe_generate_tokens_per_second") or 0) > 0
    assert registry.get_sample_value("ollama_probe_generate_load_duration_seconds") is not None
    for reason in ("timeout", "refused", "http_error", "bad_response"):
        labels = {**GEN, "reason": reason}
        assert registry.get_sample_value("ollama_probe_failures_total", labels) == 0.0
    last = collector.last_result
    assert last is not None and last.ok and last.reason is None
    assert signals == [Signal(SignalKind.DEEP_PROBE, True, model=model)]
    assert last.result is not None and last.result.eval_count > 0


def test_neither_prompt_nor_answer_reaches_the_metrics(client: OllamaClient) -> None:
    collector = DeepProbeCollector(client, first_model(client), 30)
    text = generate_latest(registry_of(collector.collect())).decode()
    assert PROMPT not in text
    # the simulator's answer is made of these words; none of them may be exported
    assert "simulated" not in text and "filler" not in text


def test_a_crashing_runner_counts_a_failure_and_drops_the_figures(
    client: OllamaClient, sim: SimulatorProcess
) -> None:
    model = first_model(client)
    collector = DeepProbeCollector(client, model, 30)
    sim.set_fault("runner_crash")
    registry = registry_of(collector.collect())
    assert registry.get_sample_value("ollama_probe_success", GEN) == 0.0
    last = collector.last_result
    assert last is not None and not last.ok and last.reason is not None
    failed = registry.get_sample_value(
        "ollama_probe_failures_total", {**GEN, "reason": last.reason}
    )
    assert failed == 1.0
    assert registry.get_sample_value("ollama_probe_generate_ttft_seconds") is None
    assert registry.get_sample_value("ollama_probe_generate_tokens_per_second") is None


def test_an_unknown_model_is_an_http_error(client: OllamaClient) -> None:
    collector = DeepProbeCollector(client, "no-such-model:latest", 30)
    registry = registry_of(collector.collect())
    labels = {**GEN, "reason": "http_error"}
    assert registry.get_sample_value("ollama_probe_failures_total", labels) == 1.0
    last = collector.last_result
    assert last is not None and "not found" in last.error


def test_failures_accumulate_when_nothing_listens() -> None:
    client = OllamaClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        collector = DeepProbeCollector(client, "llama3.2", 5)
        collector.collect()
        registry = registry_of(collector.collect())
    finally:
        client.close()
    labels = {**GEN, "reason": "refused"}
    assert registry.get_sample_value("ollama_probe_failures_total", labels) == 2.0
    assert registry.get_sample_value("ollama_probe_success", GEN) == 0.0


def expires_at(client: OllamaClient, model: str) -> float:
    loaded = {m.name: m for m in client.ps()}
    assert model in loaded, loaded
    value = loaded[model].expires_at
    assert value is not None
    return value


def test_probing_a_cold_model_does_not_pin_it(client: OllamaClient) -> None:
    model = first_model(client)
    DeepProbeCollector(client, model, 30).collect()
    # loaded by the probe with a short keep_alive: it leaves again within a minute
    assert expires_at(client, model) < time.time() + 120


def test_probing_a_loaded_model_keeps_its_expiry(client: OllamaClient) -> None:
    model = first_model(client)
    client.generate(model, "warm up", num_predict=1, keep_alive="2h", timeout=30)
    before = expires_at(client, model)
    assert before > time.time() + 3600
    DeepProbeCollector(client, model, 30).collect()
    # a probe that sent its own short keep_alive would have cut this to seconds
    assert expires_at(client, model) > time.time() + 3600
    assert abs(expires_at(client, model) - before) < 300


def test_probing_a_model_kept_forever_keeps_it_forever(client: OllamaClient) -> None:
    model = first_model(client)
    client.generate(model, "warm up", num_predict=1, keep_alive="-1m", timeout=30)
    DeepProbeCollector(client, model, 30).collect()
    assert expires_at(client, model) > time.time() + 100 * 365 * 86400


def logged_generate_codes(sim: SimulatorProcess) -> list[str]:
    """Status codes of the POST /api/generate lines in the simulator's gin request log."""
    return re.findall(r'\| (\d{3}) \|[^\n]*POST\s+"/api/generate"', sim.log_text())


def sent(registry: CollectorRegistry) -> dict[str, float]:
    """ollama_watchdog_probe_requests_total of /api/generate, by code."""
    return {
        s.labels["code"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "ollama_watchdog_probe_requests_total" and s.labels["route"] == "/api/generate"
    }


def test_the_probe_counts_its_requests_as_the_request_log_does(
    client: OllamaClient, sim: SimulatorProcess
) -> None:
    # The inference SLIs subtract these counts from ollama_http_requests_total: they must
    # match what Ollama logs, code by code (a good probe, a crashed runner, an unknown model).
    good = DeepProbeCollector(client, first_model(client), 30)
    good.collect()
    sim.set_fault("runner_crash")
    first = registry_of(good.collect())
    sim.clear_fault()
    second = registry_of(DeepProbeCollector(client, "no-such-model:latest", 30).collect())
    wait_until(lambda: len(logged_generate_codes(sim)) == 3, "3 generate lines in the log")
    logged = logged_generate_codes(sim)
    assert sent(first) == {code: float(logged[:2].count(code)) for code in logged[:2]}
    assert sent(second) == {logged[2]: 1.0} == {"404": 1.0}


def test_a_probe_that_got_no_answer_counts_as_none() -> None:
    client = OllamaClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    try:
        registry = registry_of(DeepProbeCollector(client, "llama3.2", 5).collect())
    finally:
        client.close()
    labels = {"route": "/api/generate", "code": "none"}
    assert registry.get_sample_value("ollama_watchdog_probe_requests_total", labels) == 1.0
