"""The Ollama client against the simulator: typed results and one error class per failure."""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from support.hostile import Answer, HostileServer, endless, json_answer, trickle
from support.sim import SimulatorProcess
from support.tools import free_port

from ollama_watchdog.ollama.api import OllamaClient, ProbeError, parse_go_time


def chat_model(c: OllamaClient) -> str:
    return next(m.name for m in c.tags() if "completion" in m.capabilities)


def client(sim: SimulatorProcess, timeout: float = 2.0) -> OllamaClient:
    return OllamaClient(sim.url, timeout)


def test_version_tags_ps(simulator: SimulatorProcess) -> None:
    c = client(simulator)
    assert c.version() == "0.32.15"
    tags = c.tags()
    assert len(tags) >= 1
    assert all(m.size > 0 and len(m.digest) == 64 for m in tags)
    assert c.ps() == []


def test_loaded_model_shows_in_ps(simulator: SimulatorProcess) -> None:
    c = client(simulator, timeout=20)
    model = chat_model(c)
    result = c.generate(model, "hello", num_predict=4, keep_alive="5m", timeout=20)
    assert result.done_reason in {"stop", "length"}
    assert result.eval_count > 0 and result.tokens_per_second is not None
    assert result.ttft_seconds is not None
    loaded = c.ps()
    assert [m.name for m in loaded] == [model]
    assert loaded[0].size >= loaded[0].size_vram >= 0
    assert loaded[0].expires_at is not None


def test_refused() -> None:
    c = OllamaClient(f"http://127.0.0.1:{free_port()}", 2.0)
    with pytest.raises(ProbeError) as err:
        c.version()
    assert err.value.reason == "refused"


def test_the_watchdog_out_of_descriptors_is_a_local_error(simulator: SimulatorProcess) -> None:
    # issue 18: slow clients used to eat the daemon's descriptors; the probe then failed with
    # "too many open files", classified as refused: Ollama's failure, and a restart
    c = client(simulator)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    filler: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 16, hard))
    try:
        while True:
            try:
                filler.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(ProbeError) as err:
            c.version()
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert err.value.reason == "local_error"
    assert "EMFILE" in err.value.detail
    assert c.version() == "0.32.15"  # descriptors back: the same client works


def test_hang_is_a_timeout(simulator: SimulatorProcess) -> None:
    simulator.set_fault("hang")
    with pytest.raises(ProbeError) as err:
        client(simulator, timeout=0.5).version()
    assert err.value.reason == "timeout"


def test_500_is_http_error(simulator: SimulatorProcess) -> None:
    simulator.set_fault("error500")
    with pytest.raises(ProbeError) as err:
        client(simulator).tags()
    assert err.value.reason == "http_error"
    assert err.value.status == 500


def test_busy_is_http_error_503(simulator: SimulatorProcess) -> None:
    simulator.set_fault("busy")
    c = client(simulator, timeout=10)
    with pytest.raises(ProbeError) as err:
        c.generate(chat_model(c), "x", timeout=10)
    assert err.value.reason == "http_error"
    assert err.value.status == 503
    assert "server busy" in err.value.detail


def test_malformed_is_bad_response(simulator: SimulatorProcess) -> None:
    simulator.set_fault("malformed")
    c = client(simulator)
    for call in (c.version, c.tags, c.ps):
        with pytest.raises(ProbeError) as err:
            call()
        assert err.value.reason == "bad_response"


def test_unknown_model_is_http_error_404(simulator: SimulatorProcess) -> None:
    with pytest.raises(ProbeError) as err:
        client(simulator).generate("no-such-model:latest", "x")
    assert err.value.reason == "http_error"
    assert err.value.status == 404
    assert "not found" in err.value.detail


def _utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        ("2025-08-08T00:07:26.817827822+02:00", _utc(2025, 8, 7, 22, 7, 26, 817827)),
        ("2318-12-05T21:47:02.903047553Z", _utc(2318, 12, 5, 21, 47, 2, 903047)),
        ("2025-10-26T17:15:24Z", _utc(2025, 10, 26, 17, 15, 24, 0)),
    ],
)
def test_go_times(text: str, epoch: float) -> None:
    value = parse_go_time(text)
    assert value is not None and abs(value - epoch) < 1e-3


def test_bad_go_time() -> None:
    assert parse_go_time("yesterday") is None


# -- issue 18 item 2: one deadline per exchange, bodies capped while they stream -------------

VERSION = b'{"version":"0.32.15"}'


def finishes(call: Callable[[], object], within: float = 60.0) -> BaseException | object:
    """Run ``call`` on a thread; the old client never returned from some of these answers,
    so a call still running after ``within`` seconds fails the test instead of hanging it."""
    box: list[BaseException | object] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # the outcome under test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(within)
    assert box, f"still reading the answer after {within}s"
    return box[0]


def reason_of(outcome: BaseException | object) -> str:
    assert isinstance(outcome, ProbeError), f"not a failure: {outcome!r}"
    return outcome.reason


def test_a_status_line_trickled_a_byte_at_a_time_is_a_timeout() -> None:
    # every byte arrives well inside the 1 s timeout; the whole answer never does
    answer = Answer(body=lambda: [VERSION], trickle_head=0.3)
    with HostileServer({"/api/version": answer}) as srv:
        outcome = finishes(OllamaClient(srv.url, 1.0).version)
    assert reason_of(outcome) == "timeout"


def test_a_body_trickled_a_byte_at_a_time_is_a_timeout() -> None:
    answer = Answer(body=lambda: trickle(VERSION, 0.3), chunked=True)
    with HostileServer({"/api/version": answer}) as srv:
        outcome = finishes(OllamaClient(srv.url, 1.0).version)
    assert reason_of(outcome) == "timeout"


@pytest.mark.parametrize("path", ["/api/version", "/api/tags", "/api/ps"])
def test_an_endless_chunked_body_is_refused_at_the_cap(path: str) -> None:
    answer = Answer(body=lambda: endless(b" " * 65536), chunked=True)
    with HostileServer({path: answer}) as srv:
        c = OllamaClient(srv.url, 30.0)
        call = {"/api/version": c.version, "/api/tags": c.tags, "/api/ps": c.ps}[path]
        outcome = finishes(call)
    assert reason_of(outcome) == "bad_response"
    assert "larger than" in str(outcome)


def test_a_200_mb_ps_is_refused_before_it_is_read() -> None:
    head = b'{"models":['
    answer = Answer(body=lambda: [head, b" " * (200 * 1024 * 1024), b"]}"])
    with HostileServer({"/api/ps": answer}) as srv:
        outcome = finishes(OllamaClient(srv.url, 30.0).ps)
    assert reason_of(outcome) == "bad_response"
    assert "over" in str(outcome)


def test_ps_and_tags_hold_thousands_of_models() -> None:
    entry = (
        '{"name":"m%d:latest","model":"m%d:latest","size":4661224676,"digest":"%s",'
        '"details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],'
        '"parameter_size":"8.0B","quantization_level":"Q4_K_M"},'
        '"expires_at":"2025-10-26T17:15:24.903047553Z","size_vram":4661224676,'
        '"context_length":4096,"modified_at":"2025-10-26T17:15:24Z","capabilities":["completion"]}'
    )
    body = ('{"models":[' + ",".join(entry % (i, i, "a" * 64) for i in range(5000)) + "]}").encode()
    answers = {"/api/ps": json_answer(body), "/api/tags": json_answer(body)}
    with HostileServer(answers) as srv:
        c = OllamaClient(srv.url, 30.0)
        assert len(c.ps()) == 5000
        assert len(c.tags()) == 5000


def test_an_endless_generation_stream_is_refused_at_the_cap() -> None:
    line = b'{"model":"m","response":"ok","done":false}\n'
    answer = Answer(body=lambda: endless(line * 100), chunked=True)
    with HostileServer({"/api/generate": answer}) as srv:
        outcome = finishes(lambda: OllamaClient(srv.url, 30.0).generate("m", "x", timeout=30))
    assert reason_of(outcome) == "bad_response"


def test_a_generation_that_trickles_is_a_timeout_at_its_deadline() -> None:
    line = b'{"model":"m","response":"ok","done":false}\n'
    answer = Answer(body=lambda: trickle(line * 1000, 0.05), chunked=True)
    with HostileServer({"/api/generate": answer}) as srv:
        outcome = finishes(lambda: OllamaClient(srv.url, 30.0).generate("m", "x", timeout=1))
    assert reason_of(outcome) == "timeout"
