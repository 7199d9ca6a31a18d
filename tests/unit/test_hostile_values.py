"""Single hostile values from Ollama, through the API collector, the real exporter and a scrape
(issue 18, item 4): none may knock out /metrics, drop ``ollama_up`` or slip past the policy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from support.hostile import HostileServer, json_answer
from support.tools import free_port

from ollama_watchdog.collectors.api import ApiCollector
from ollama_watchdog.exporter.http import CollectorResult, Exporter, SnapshotBoard
from ollama_watchdog.ollama.api import OllamaClient
from ollama_watchdog.signals import Signal, SignalKind

VERSION = b'{"version":"0.32.15"}'
TAGS = b'{"models":[]}'


def ps_with(entry: str) -> bytes:
    return ('{"models":[' + entry + "]}").encode()


def entry(name: str = '"m:latest"', size: str = "1000", vram: str = "500") -> str:
    return (
        f'{{"name":{name},"model":{name},"size":{size},"size_vram":{vram},'
        '"digest":"abc","expires_at":"2025-10-26T17:15:24Z","context_length":4096}'
    )


@pytest.fixture
def board() -> Iterator[tuple[SnapshotBoard, str]]:
    board = SnapshotBoard()
    ex = Exporter(f"127.0.0.1:{free_port()}", board, lambda: (True, "ok"))
    ex.start()
    try:
        yield board, f"http://127.0.0.1:{ex.port}/metrics"
    finally:
        ex.stop()


def round_through_exporter(
    board: SnapshotBoard, url: str, answers: dict[str, bytes]
) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], list[Signal], bool]:
    """One API round against a hostile server, published and scraped as Prometheus would."""
    signals: list[Signal] = []
    with HostileServer({k: json_answer(v) for k, v in answers.items()}) as srv:
        collector = ApiCollector(OllamaClient(srv.url, 5.0), emit=signals.append)
        success = True
        try:
            families = tuple(collector.collect())
        except Exception:  # what the runner would record: the collector failed, no families
            families, success = (), False
    board.publish(CollectorResult("api", families, success, 0.0, time.time()))
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200
    text = resp.content.decode("utf-8")  # strict: the body must be valid UTF-8
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    return samples, signals, success


def up(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float | None:
    return samples.get(("ollama_up", ()))


def test_a_lone_surrogate_in_a_model_name_is_a_valid_label(
    board: tuple[SnapshotBoard, str],
) -> None:
    ps = ps_with(entry(name='"evil\\ud800name"'))
    samples, _, _ = round_through_exporter(
        *board, {"/api/version": VERSION, "/api/tags": TAGS, "/api/ps": ps}
    )
    assert up(samples) == 1.0
    assert samples[("ollama_model_loaded", (("model", "evil\ufffdname"),))] == 1.0


@pytest.mark.parametrize(
    "size",
    ["1" + "0" * 400, "1e400", "-5", "NaN", "Infinity", "-Infinity", "9223372036854775808"],
)
def test_a_number_no_ollama_sends_is_a_bad_response_not_a_lost_scrape(
    board: tuple[SnapshotBoard, str], size: str
) -> None:
    ps = ps_with(entry(size=size))
    samples, _, success = round_through_exporter(
        *board, {"/api/version": VERSION, "/api/tags": TAGS, "/api/ps": ps}
    )
    assert success
    assert up(samples) == 1.0  # Ollama answers; only this one answer was unusable
    assert samples[("ollama_probe_success", (("probe", "ps"),))] == 0.0
    assert samples[("ollama_probe_failures_total", (("probe", "ps"), ("reason", "bad_response")))]
    assert not any(name == "ollama_model_memory_bytes" for name, _ in samples)


def test_deeply_nested_version_is_a_bad_response_fed_to_the_policy(
    board: tuple[SnapshotBoard, str],
) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    samples, signals, success = round_through_exporter(*board, {"/api/version": nested})
    assert success
    assert up(samples) == 0.0
    assert signals == [Signal(SignalKind.LIVENESS, False, "bad_response", signals[0].detail)]
    assert samples[
        ("ollama_probe_failures_total", (("probe", "version"), ("reason", "bad_response")))
    ] == 1.0


def test_deeply_nested_tags_under_the_cap_is_a_bad_response(
    board: tuple[SnapshotBoard, str],
) -> None:
    # within /api/tags' container cap, so it reaches the parser: RecursionError is caught there
    nested = b'{"models":' + b"[" * 90_000 + b"]" * 90_000 + b"}"
    samples, _, success = round_through_exporter(
        *board, {"/api/version": VERSION, "/api/tags": nested, "/api/ps": ps_with(entry())}
    )
    assert success
    assert up(samples) == 1.0
    assert samples[("ollama_probe_success", (("probe", "tags"),))] == 0.0


def test_the_exporter_renders_whatever_a_collector_lets_through(
    board: tuple[SnapshotBoard, str],
) -> None:
    # a last line of defence, for any collector: a bad label or value costs that sample only
    b, url = board
    fam = GaugeMetricFamily("some_metric", "x", labels=["l"])
    fam.add_metric(["fine"], 1.0)
    fam.add_metric(["lone\udcff"], 2.0)
    fam.add_metric(["lone\udc80"], 3.0)  # the same label once made valid: kept once
    fam.add_metric(["huge"], 10**400)  # type: ignore[arg-type]
    b.publish(CollectorResult("other", (fam,), True, 0.0, time.time()))
    resp = requests.get(url, timeout=5)
    assert resp.status_code == 200
    text = resp.content.decode("utf-8")
    got = {
        s.labels["l"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "some_metric"
        for s in f.samples
    }
    assert got == {"fine": 1.0, "lone\ufffd": 2.0}
    assert "ollama_watchdog_build_info" in text
