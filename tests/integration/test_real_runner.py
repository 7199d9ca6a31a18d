"""The real runner: a llama.cpp ``llama-server`` built from source behind the simulator's front.

Since v0.30 Ollama's runner is upstream ``llama-server`` (FACTS.md §2.7, §8): here the simulator
starts the real program per loaded model, with Ollama's flags, and forwards its output verbatim,
so every runner-side fact the daemon counts (tokens and timings, runner crashes, out-of-memory,
a wedged runner, a client that goes away) comes from real llama.cpp lines. The models are tiny
random-weight llama GGUFs written by the project's generator. Requests go through the official
Python client (PyPI ``ollama``).

Skipped locally, with the command that builds it, when llama-server is not built; a failure
under ``CI=true`` (``scripts/install-test-tools.sh`` builds it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import psutil
import pytest
import requests
from support.daemon import DaemonProcess, quick_config
from support.llama import require_llama_server
from support.sim import SimulatorProcess
from support.wait import wait_until

from ollama_watchdog.collectors.logs.counters import PREFILL_BUCKETS, TPOT_BUCKETS
from ollama_watchdog.simulator.llamamodel import params_for_size, write_llama_gguf

pytestmark = pytest.mark.integration

T = 60.0
#: a KV cache no machine has memory for (FACTS.md §8 run D: 51 GB for the tiny model)
HUGE_CONTEXT = 100_000_000
#: a generation that is surely still running seconds after its first token. Sampled, the tiny
#: random models end on their EOS token after 11 to 2334 tokens here (a few ms to 0.3 s);
#: greedy, they fall into a loop without it and run to the limit (10 prompts of 10).
LONG = {"num_predict": 20000, "num_ctx": 32768, "temperature": 0}


@pytest.fixture(scope="module")
def llama_server() -> Path:
    return require_llama_server()


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different tiny models (< 1 MB each), so each has its own blob."""
    out = tmp_path_factory.mktemp("gguf")
    n_embd, n_layer, n_ff = params_for_size(600 * 1024)
    files = {}
    for seed, name in enumerate(("tiny-a:latest", "tiny-b:latest")):
        path = out / f"{name.split(':')[0]}.gguf"
        write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=seed)
        assert path.stat().st_size < 1024 * 1024
        files[name] = path
    return files


@dataclass
class Stack:
    sim: SimulatorProcess
    daemon: DaemonProcess
    client: ollama.Client

    def runners(self) -> dict[str, Any]:
        r = requests.get(self.sim.control_url + "/runners", timeout=10)
        r.raise_for_status()
        value: dict[str, Any] = r.json()
        return value

    def runner_pid(self, model: str) -> int:
        live = [r for r in self.runners()["runners"] if r["model"] == model and r["alive"]]
        assert len(live) == 1, live
        return int(live[0]["pid"])

    def value(self, name: str, **labels: str) -> float:
        return self.daemon.value(name, **labels) or 0.0

    def errors(self) -> dict[str, float]:
        kinds = ("runner_terminated", "out_of_memory", "gpu_error", "load_failed",
                 "load_timeout", "completion_failed")
        return {k: self.value("ollama_runner_errors_total", kind=k) for k in kinds}


@pytest.fixture
def stack(
    llama_server: Path,
    gguf_files: dict[str, Path],
    simulator_factory: Callable[..., SimulatorProcess],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    log = tmp_path / "ollama.log"
    models = [a for name, path in gguf_files.items() for a in ("--model", f"{name}={path}")]
    sim = simulator_factory("--llama-server", str(llama_server), *models, "--tokens", "16",
                            as_ollama=True, log_file=log)
    deep = getattr(request, "param", None) or {}
    cfg = quick_config(
        sim.url,
        tmp_path,
        ollama={"unit": "", "models_dir": str(sim.work_dir / "models"), "timeout": "2s"},
        logs={"source": "file", "path": str(log)},
        probe={"interval": "300ms", **deep},
    )
    with DaemonProcess(cfg, tmp_path) as daemon:
        wait_until(lambda: daemon.value("ollama_up") == 1.0, "ollama_up", T)
        yield Stack(sim, daemon, ollama.Client(host=sim.url, timeout=T))


def settled(stack: Stack, name: str, want: float, **labels: str) -> None:
    """The daemon's counter reaches ``want`` (its log follower reads a little behind)."""
    try:
        wait_until(lambda: stack.value(name, **labels) == want, f"{name}{labels} == {want}", T)
    except AssertionError:
        raise AssertionError(
            f"{name}{labels} = {stack.value(name, **labels)}, want {want}\n"
            + stack.sim.log_text()[-4000:]
        ) from None


def unload(stack: Stack, model: str) -> None:
    """Unload ``model`` the way a client does (no prompt, ``keep_alive: 0``) and wait for it."""
    assert stack.client.generate(model=model, keep_alive=0)["done"] is True
    wait_until(lambda: not stack.runners()["runners"], "the runner unloaded", T)


def test_token_counters_equal_what_llama_server_returned_per_model(stack: Stack) -> None:
    c = stack.client
    for model in ("tiny-a:latest", "tiny-b:latest"):
        # Model b loads only once a is gone, so the log's timing lines have one owner each.
        answers = [
            c.generate(model=model, prompt="the first question", options={"num_predict": 12}),
            c.chat(model=model, messages=[{"role": "user", "content": "a chat turn"}],
                   options={"num_predict": 9}),
            list(c.generate(model=model, prompt="a streamed one", stream=True,
                            options={"num_predict": 20}))[-1],
        ]
        eval_counts = sum(int(a["eval_count"]) for a in answers)
        assert [a["done"] for a in answers] == [True, True, True]
        t = stack.runners()["totals"][model]
        assert t["completions"] == 3
        # the API's eval_count is llama-server's predicted_n; a random model may stop early
        assert t["predicted_n"] == eval_counts <= 12 + 9 + 20
        assert t["prompt_n"] > 0
        # counted while the runner lives: llama.cpp writes its log from a worker thread and
        # an unload is a SIGKILL, which may take a block not yet written with it (README)
        settled(stack, "ollama_log_timed_completions_total", 3, model=model)
        settled(stack, "ollama_log_generated_tokens_total", t["predicted_n"], model=model)
        settled(stack, "ollama_log_prompt_tokens_total", t["prompt_n"], model=model)
        unload(stack, model)
    # the GIN lines: one per request (the unloads too), answered 200
    settled(stack, "ollama_http_requests_total", 6, method="POST", route="/api/generate",
            code="200")
    settled(stack, "ollama_http_requests_total", 2, method="POST", route="/api/chat", code="200")
    assert stack.errors() == dict.fromkeys(stack.errors(), 0.0)


def test_latency_histograms_count_each_completion_with_the_runners_own_timings(
    stack: Stack,
) -> None:
    c = stack.client
    for model in ("tiny-a:latest", "tiny-b:latest"):
        # one runner at a time (unloaded after), so each timing line has one owner
        answers = [
            c.generate(model=model, prompt="how long until the first token",
                       options={"num_predict": 14}),
            c.chat(model=model, messages=[{"role": "user", "content": "and per token?"}],
                   options={"num_predict": 7}),
            c.generate(model=model, prompt="one token only", options={"num_predict": 1}),
            list(c.generate(model=model, prompt="streamed", stream=True,
                            options={"num_predict": 25}))[-1],
        ]
        assert [a["done"] for a in answers] == [True] * 4
        labels = {"model": model}
        settled(stack, "ollama_log_prefill_seconds_count", 4, **labels)
        unload(stack, model)  # once its lines are counted (see the test above)
        # Ollama's durations are llama-server's timings (ns); the log prints them in ms to
        # two decimals, so each completion may differ by 0.005 ms (and 1 ns of truncation)
        rounding = 0.005e-3 + 1e-9
        prompt_s = [a.get("prompt_eval_duration", 0) / 1e9 for a in answers]
        assert stack.value("ollama_log_prefill_seconds_sum", **labels) == pytest.approx(
            sum(prompt_s), abs=4 * rounding
        )
        assert stack.value("ollama_log_prefill_seconds_bucket", le="+Inf", **labels) == 4
        # time per output token: the steps after the first token; one token has none
        timed = [a for a in answers if a.get("eval_count", 0) >= 2]
        assert any(a.get("eval_count", 0) < 2 for a in answers)  # the one-token request
        assert timed
        per_token = [a["eval_duration"] / 1e9 / (a["eval_count"] - 1) for a in timed]
        tolerance = sum(rounding / (a["eval_count"] - 1) for a in timed)
        tpot = "ollama_log_time_per_output_token_seconds"
        assert stack.value(f"{tpot}_count", **labels) == len(timed)
        assert stack.value(f"{tpot}_sum", **labels) == pytest.approx(
            sum(per_token), abs=tolerance
        )
        # each observation in the bucket its value belongs to (le includes the bound), for
        # every bound that no value comes within the log's rounding of
        for name, values, bounds in (
            ("ollama_log_prefill_seconds", prompt_s, PREFILL_BUCKETS),
            (tpot, per_token, TPOT_BUCKETS),
        ):
            for le in bounds:
                if all(abs(v - le) > 2 * rounding for v in values):
                    below = sum(1 for v in values if v <= le)
                    assert stack.value(f"{name}_bucket", le=repr(le), **labels) == below, le
    assert stack.value("ollama_log_prefill_seconds_count", model="unknown") == 0


def test_a_runner_killed_by_sigsegv_mid_generation_counts_once_and_reloads(
    stack: Stack,
) -> None:
    model = "tiny-a:latest"
    stream = stack.client.generate(model=model, prompt="go on and on", stream=True,
                                   options=LONG)
    first = next(iter(stream))
    assert first["done"] is False
    pid = stack.runner_pid(model)
    # Stop it first so it is surely mid-generation, then SIGSEGV: delivered on SIGCONT.
    os.kill(pid, signal.SIGSTOP)
    os.kill(pid, signal.SIGSEGV)
    os.kill(pid, signal.SIGCONT)
    with pytest.raises(ollama.ResponseError, match="model runner has unexpectedly stopped"):
        for _ in stream:
            pass
    wait_until(lambda: not psutil.pid_exists(pid) or
               psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "runner gone", T)
    settled(stack, "ollama_runner_errors_total", 1, kind="runner_terminated")
    again = stack.client.generate(model=model, prompt="after the crash",
                                  options={"num_predict": 8})
    assert again["done"] is True and again["eval_count"] > 0
    assert stack.runner_pid(model) != pid
    errors = stack.errors()
    assert errors["runner_terminated"] == 1
    assert errors["out_of_memory"] == 0 and errors["load_failed"] == 0


def test_a_real_out_of_memory_at_load_counts_once_and_fails_like_ollama(stack: Stack) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        stack.client.generate(model="tiny-a:latest", prompt="too big",
                              options={"num_ctx": HUGE_CONTEXT})
    assert caught.value.status_code == 500
    assert "llama-server process has terminated: exit status 1" in caught.value.error
    settled(stack, "ollama_runner_errors_total", 1, kind="out_of_memory")
    assert "failed to allocate" in stack.sim.log_text()  # llama.cpp's own words, forwarded
    errors = stack.errors()
    assert errors == dict(dict.fromkeys(errors, 0.0), out_of_memory=1.0)
    # the model still loads with a sane context
    ok = stack.client.generate(model="tiny-a:latest", prompt="fits", options={"num_predict": 4})
    assert ok["done"] is True


@pytest.mark.parametrize(
    "stack",
    [{"deep_model": "tiny-a:latest", "deep_interval": "1s", "deep_timeout": "3s"}],
    indirect=True,
)
def test_a_stopped_runner_keeps_liveness_while_the_deep_probe_times_out(stack: Stack) -> None:
    wait_until(lambda: stack.value("ollama_probe_success", probe="generate") == 1.0,
               "a passing deep probe", T)
    pid = stack.runner_pid("tiny-a:latest")
    os.kill(pid, signal.SIGSTOP)
    try:
        settled(stack, "ollama_probe_success", 0, probe="generate")
        wait_until(
            lambda: stack.value("ollama_probe_failures_total", probe="generate",
                                reason="timeout") >= 2,
            "two deep probes timed out", T,
        )
        assert stack.value("ollama_up") == 1.0
        assert stack.value("ollama_probe_success", probe="version") == 1.0
        assert psutil.Process(pid).status() == psutil.STATUS_STOPPED
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: stack.value("ollama_probe_success", probe="generate") == 1.0,
               "the deep probe passes again once the runner continues", T)


def test_a_client_gone_mid_stream_invents_no_tokens(stack: Stack) -> None:
    model = "tiny-a:latest"
    done = stack.client.generate(model=model, prompt="warm up", options={"num_predict": 5})
    settled(stack, "ollama_log_timed_completions_total", 1, model=model)
    with requests.post(
        stack.sim.url + "/api/generate",
        json={"model": model, "prompt": "leave early",
              "options": LONG},
        stream=True, timeout=T,
    ) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # one chunk, then hang up
    stack.sim.wait_for_log("aborting completion request due to client closing the connection")
    # the runner cancelled the task: it printed no timing block, so nothing more is counted
    after = stack.client.generate(model=model, prompt="and again", options={"num_predict": 6})
    settled(stack, "ollama_log_timed_completions_total", 2, model=model)
    totals = stack.runners()["totals"][model]
    assert totals["completions"] == 2
    assert totals["predicted_n"] == done["eval_count"] + after["eval_count"]
    settled(stack, "ollama_log_generated_tokens_total", totals["predicted_n"], model=model)
    settled(stack, "ollama_http_requests_total", 3, method="POST", route="/api/generate",
            code="200")
    errors = stack.errors()
    assert errors == dict.fromkeys(errors, 0.0)
