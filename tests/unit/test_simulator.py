"""Protocol conformance of the Ollama simulator, run as a real process (FACTS.md §1)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from support.sim import SimulatorProcess
from support.wait import wait_until

from ollama_watchdog.ollama.routes import ROUTES
from ollama_watchdog.simulator.gguf import gguf_header
from ollama_watchdog.simulator.router import DISPATCH, ENDPOINTS

T = 15  # generous request timeout: waiting, never asserting on speed
GIN_RE = re.compile(
    r"\[GIN\] (\d{4}/\d{2}/\d{2}) - (\d{2}:\d{2}:\d{2}) \| (\d{3}) \| +(\S+) \| +(\S*) \|"
    r' ([A-Z]+) +"((?:[^"\\]|\\.)*)"'
)
RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an"
    " internal error, check ollama server logs for details"
)


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One simulator for the read-only protocol checks of this module."""
    with SimulatorProcess(tmp_path_factory.mktemp("shared-sim")) as sim:
        yield sim


def runner_children(sim: SimulatorProcess) -> list[psutil.Process]:
    """Model runner processes under the simulator, by the project's matching rule."""
    found = []
    for child in psutil.Process(sim.pid).children(recursive=True):
        try:
            argv = child.cmdline()
        except psutil.Error:
            continue
        heads = [os.path.basename(a) for a in argv[:2]]
        names = [os.path.basename(a) for a in argv]
        go_runner = any(
            n == "ollama" and names[i + 1 : i + 2] == ["runner"] for i, n in enumerate(names)
        )
        if "llama-server" in heads or go_runner:
            found.append(child)
    return found


def post(sim: SimulatorProcess, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(sim.url + path, json=body, timeout=T, **kwargs)


# -- plain routes -----------------------------------------------------------------------------


def test_root_answers_ollama_is_running_on_get_and_head(shared_sim: SimulatorProcess) -> None:
    got = requests.get(shared_sim.url + "/", timeout=T)
    head = requests.head(shared_sim.url + "/", timeout=T)
    assert (got.status_code, got.text) == (200, "Ollama is running")
    assert got.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == "17"
    assert "Server" not in got.headers  # Go's net/http sends none


def test_version_route_reports_the_default_release(shared_sim: SimulatorProcess) -> None:
    response = requests.get(shared_sim.url + "/api/version", timeout=T)
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.content == b'{"version":"0.32.15"}'
    assert requests.head(shared_sim.url + "/api/version", timeout=T).status_code == 200


def test_unknown_path_and_wrong_method_get_gins_text_bodies(shared_sim: SimulatorProcess) -> None:
    missing = requests.get(shared_sim.url + "/api/nothing-here", timeout=T)
    wrong = requests.get(shared_sim.url + "/api/generate", timeout=T)
    head_ps = requests.head(shared_sim.url + "/api/ps", timeout=T)
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["Content-Type"] == "text/plain"
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
    assert head_ps.status_code == 405  # gin registers HEAD only where Ollama asks for it
    shared_sim.wait_for_log(r'\| 404 \|.*\| GET      "/api/nothing-here"$')
    shared_sim.wait_for_log(r'\| 405 \|.*\| GET      "/api/generate"$')


def test_routes_are_ollama_routes_table_and_the_unimplemented_answer_501(
    shared_sim: SimulatorProcess,
) -> None:
    """One route table: the simulator serves every route of ``ollama.routes.ROUTES`` (the set
    the log parser labels requests with) and no other; those it has no endpoint for are 501."""
    assert set(DISPATCH) == {route.template for route in ROUTES}
    assert set(ENDPOINTS) <= set(DISPATCH)
    copy = requests.post(shared_sim.url + "/api/copy", json={}, timeout=T)
    assert (copy.status_code, copy.json()) == (
        501,
        {"error": "/api/copy is not implemented by the ollama-watchdog simulator"},
    )
    key = requests.delete(shared_sim.url + "/api/user/keys/abc", timeout=T)
    assert key.status_code == 501


def test_tags_lists_models_exactly_as_the_store_on_disk_says(
    shared_sim: SimulatorProcess,
) -> None:
    models = requests.get(shared_sim.url + "/api/tags", timeout=T).json()["models"]
    assert [m["name"] for m in models] == [
        "nomic-embed-text:latest",
        "qwen2.5:0.5b",
        "llama3.2:latest",
    ]  # newest first
    manifests = shared_sim.work_dir / "models" / "manifests" / "registry.ollama.ai" / "library"
    for entry in models:
        base, tag = entry["name"].split(":")
        raw = (manifests / base / tag).read_bytes()
        manifest = json.loads(raw)
        assert entry["model"] == entry["name"]
        assert entry["digest"] == hashlib.sha256(raw).hexdigest()
        assert entry["size"] == manifest["config"]["size"] + sum(
            layer["size"] for layer in manifest["layers"]
        )
        assert set(entry["details"]) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }
        assert entry["capabilities"]  # 0.30+ lists them
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", entry["modified_at"]
        )


def test_show_answers_details_and_errors(shared_sim: SimulatorProcess) -> None:
    shown = post(shared_sim, "/api/show", {"model": "llama3.2"})
    assert shown.status_code == 200
    body = shown.json()
    assert body["details"]["family"] == "llama"
    assert body["model_info"]["general.architecture"] == "llama"
    assert "completion" in body["capabilities"]
    assert post(shared_sim, "/api/show", {}).json() == {"error": "model is required"}
    missing = post(shared_sim, "/api/show", {"model": "ghost"})
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'ghost' not found"})


def test_request_errors_have_ollamas_shapes(shared_sim: SimulatorProcess) -> None:
    empty = requests.post(shared_sim.url + "/api/generate", timeout=T)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    bad = requests.post(shared_sim.url + "/api/generate", data=b"{nope", timeout=T)
    assert bad.status_code == 400 and "invalid character" in bad.json()["error"]
    assert post(shared_sim, "/api/generate", {"model": "ghost", "prompt": "x"}).json() == {
        "error": "model 'ghost' not found"
    }
    unnamed = post(shared_sim, "/api/generate", {"prompt": "x"})
    assert (unnamed.status_code, unnamed.json()) == (404, {"error": "model '' not found"})
    chat = post(shared_sim, "/api/chat", {"messages": []})
    assert (chat.status_code, chat.json()) == (400, {"error": "model is required"})
    embed_only = post(shared_sim, "/api/generate", {"model": "nomic-embed-text", "prompt": "x"})
    assert embed_only.json() == {"error": '"nomic-embed-text" does not support generate'}
    assert post(shared_sim, "/api/generate", {"model": "llama3.2", "keep_alive": "-1"}).json() == {
        "error": 'time: missing unit in duration "-1"'
    }
    assert post(shared_sim, "/api/generate", {"model": "llama3.2", "keep_alive": True}).json() == {
        "error": "Unsupported type: 'bool'"
    }


# -- generation -------------------------------------------------------------------------------


def test_generate_streams_ndjson_ending_in_metrics(shared_sim: SimulatorProcess) -> None:
    secret = "PROMPT-TEXT-MUST-NOT-LEAK"
    response = post(
        shared_sim, "/api/generate", {"model": "llama3.2", "prompt": secret}, stream=True
    )
    raw = response.raw.read()
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert raw.endswith(b"\n")
    chunks = [json.loads(line) for line in raw.split(b"\n")[:-1]]
    assert len(chunks) >= 2 and all(not c["done"] for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["response"] == ""
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(final[key], int) and final[key] > 0, key
    assert final["eval_count"] == len(chunks) - 1
    assert all(c["created_at"].endswith("Z") for c in chunks)
    text = "".join(c["response"] for c in chunks)
    assert secret not in text and secret not in shared_sim.log_text()


def test_stream_false_gives_one_json_object(shared_sim: SimulatorProcess) -> None:
    response = post(
        shared_sim, "/api/generate", {"model": "llama3.2", "prompt": "hello", "stream": False}
    )
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["done"] is True and body["response"]
    assert body["eval_count"] > 0


def test_zero_metrics_are_left_out(shared_sim: SimulatorProcess) -> None:
    body = post(
        shared_sim,
        "/api/generate",
        {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 0}},
    ).json()
    assert body["done_reason"] == "length"
    assert "eval_count" not in body and "eval_duration" not in body
    assert body["prompt_eval_count"] > 0


def test_chat_streams_assistant_messages(shared_sim: SimulatorProcess) -> None:
    response = post(
        shared_sim,
        "/api/chat",
        {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]},
        stream=True,
    )
    lines = [json.loads(line) for line in response.iter_lines() if line]
    assert all(c["message"]["role"] == "assistant" for c in lines)
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] == "stop"
    assert "eval_count" in lines[-1]
    load = post(shared_sim, "/api/chat", {"model": "qwen2.5:0.5b", "messages": []}).json()
    assert (load["done"], load["done_reason"]) == (True, "load")


def test_embed_returns_deterministic_unit_vectors(shared_sim: SimulatorProcess) -> None:
    body = {"model": "nomic-embed-text", "input": ["alpha", "beta"]}
    first = post(shared_sim, "/api/embed", body).json()
    second = post(shared_sim, "/api/embed", body).json()
    assert first["embeddings"] == second["embeddings"]
    alpha, beta = first["embeddings"]
    assert alpha != beta and len(alpha) == 768
    assert math.isclose(math.sqrt(sum(v * v for v in alpha)), 1.0, rel_tol=1e-5)
    assert first["prompt_eval_count"] > 0
    empty = post(shared_sim, "/api/embed", {"model": "nomic-embed-text", "input": []}).json()
    assert empty == {"model": "nomic-embed-text", "embeddings": []}


def test_gin_lines_are_one_per_request_on_stdout_only(simulator: SimulatorProcess) -> None:
    requests.get(simulator.url + "/api/tags?x=1", timeout=T)
    requests.get(simulator.url + "/api/ps", headers={"X-Forwarded-For": "10.1.2.3"}, timeout=T)
    post(simulator, "/api/generate", {"model": "ghost"})
    simulator.wait_for_log(r'POST     "/api/generate"$')
    lines = simulator.stdout_text().splitlines()
    assert [GIN_RE.fullmatch(line) is not None for line in lines] == [True] * 3
    matches = [GIN_RE.fullmatch(line) for line in lines]
    assert [(m[3], m[5], m[6], m[7]) for m in matches if m] == [
        ("200", "127.0.0.1", "GET", "/api/tags?x=1"),
        ("200", "10.1.2.3", "GET", "/api/ps"),
        ("404", "127.0.0.1", "POST", "/api/generate"),
    ]
    assert "[GIN]" not in simulator.stderr_text()


# -- runner children and keep_alive -------------------------------------------------------------


def test_runner_child_lives_while_loaded_and_goes_on_unload(simulator: SimulatorProcess) -> None:
    load = post(simulator, "/api/generate", {"model": "llama3.2"}).json()
    assert (load["done_reason"], "total_duration" in load) == ("load", False)
    runners = runner_children(simulator)
    assert len(runners) == 1
    argv = runners[0].cmdline()
    blob = Path(argv[argv.index("--model") + 1])
    assert blob.is_file() and blob.name.startswith("sha256-")
    ps = requests.get(simulator.url + "/api/ps", timeout=T).json()["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest"]
    assert ps[0]["size_vram"] == 0 and ps[0]["context_length"] == 4096
    simulator.wait_for_log(r'msg="starting llama-server" cmd=".*/llama-server --model ')
    unload = post(simulator, "/api/generate", {"model": "llama3.2", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"
    wait_until(lambda: not runner_children(simulator), "runner gone after keep_alive 0")
    assert requests.get(simulator.url + "/api/ps", timeout=T).json() == {"models": []}


def test_keep_alive_sets_expiry(simulator: SimulatorProcess) -> None:
    post(simulator, "/api/generate", {"model": "llama3.2", "keep_alive": -1})
    post(simulator, "/api/generate", {"model": "qwen2.5:0.5b", "keep_alive": "10m"})
    ps = requests.get(simulator.url + "/api/ps", timeout=T).json()["models"]
    assert [m["name"] for m in ps] == ["llama3.2:latest", "qwen2.5:0.5b"]  # longest first
    assert int(ps[0]["expires_at"][:4]) > 2300  # forever = now + MaxInt64 ns
    expires = datetime.fromisoformat(
        ps[1]["expires_at"][:26] + ps[1]["expires_at"][-6:]
        if not ps[1]["expires_at"].endswith("Z")
        else ps[1]["expires_at"][:26] + "+00:00"
    )
    now = datetime.now().astimezone()
    assert now + timedelta(minutes=5) < expires < now + timedelta(minutes=11)


def test_keep_alive_expiry_unloads_the_runner(simulator: SimulatorProcess) -> None:
    post(simulator, "/api/generate", {"model": "llama3.2", "keep_alive": "1s"})
    wait_until(
        lambda: requests.get(simulator.url + "/api/ps", timeout=T).json()["models"] == [],
        "model expired",
    )
    wait_until(lambda: not runner_children(simulator), "runner gone after expiry")


# -- faults -------------------------------------------------------------------------------------


def test_control_endpoint_reports_and_validates_faults(simulator: SimulatorProcess) -> None:
    assert simulator.fault()["fault"] == "none"
    assert simulator.set_fault("slow", delay=2.5) == {"fault": "slow", "delay": 2.5}
    assert simulator.fault() == {"fault": "slow", "delay": 2.5}
    bad = requests.post(simulator.control_url + "/fault", json={"fault": "meltdown"}, timeout=T)
    assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]
    assert simulator.clear_fault()["fault"] == "none"


def test_hang_accepts_but_never_answers_until_cleared(simulator: SimulatorProcess) -> None:
    simulator.set_fault("hang")
    with pytest.raises(requests.ReadTimeout):
        requests.get(simulator.url + "/api/version", timeout=(T, 1.0))
    assert simulator.fault()["fault"] == "hang"  # control still answers
    simulator.clear_fault()
    assert requests.get(simulator.url + "/api/version", timeout=T).status_code == 200


def test_sigterm_while_hung_exits_zero_and_kills_runners(simulator: SimulatorProcess) -> None:
    post(simulator, "/api/generate", {"model": "llama3.2"})
    runner = runner_children(simulator)[0]
    simulator.set_fault("hang")

    def hung_request() -> None:
        with contextlib.suppress(requests.RequestException):
            requests.get(simulator.url + "/api/tags", timeout=30)

    thread = threading.Thread(target=hung_request, daemon=True)
    thread.start()
    time.sleep(0.3)  # let the request reach the server; not an assertion
    os.kill(simulator.pid, signal.SIGTERM)
    assert simulator.wait_exit(timeout=10) == 0
    wait_until(
        lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE,
        "runner child killed on shutdown",
    )


def test_slow_answers_only_after_the_delay(simulator: SimulatorProcess) -> None:
    simulator.set_fault("slow", delay=5)
    with pytest.raises(requests.ReadTimeout):
        requests.get(simulator.url + "/api/version", timeout=(T, 0.5))
    simulator.set_fault("slow", delay=0.2)
    assert requests.get(simulator.url + "/api/version", timeout=T).status_code == 200


def test_error500_breaks_api_routes_only(simulator: SimulatorProcess) -> None:
    simulator.set_fault("error500")
    tags = requests.get(simulator.url + "/api/tags", timeout=T)
    assert tags.status_code == 500 and tags.json()["error"]
    generate = post(simulator, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert generate.json() == {"error": "llama-server process has terminated: exit status 2"}
    assert requests.get(simulator.url + "/", timeout=T).status_code == 200
    simulator.wait_for_log(r'\| 500 \|.*GET      "/api/tags"$')


def test_malformed_answers_200_with_a_body_that_is_not_json(simulator: SimulatorProcess) -> None:
    simulator.set_fault("malformed")
    response = requests.get(simulator.url + "/api/version", timeout=T)
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


def test_busy_refuses_scheduled_requests_with_503(simulator: SimulatorProcess) -> None:
    simulator.set_fault("busy")
    response = post(simulator, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert response.status_code == 503
    assert response.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert requests.get(simulator.url + "/api/version", timeout=T).status_code == 200


def test_busy_fault_can_be_set_at_start(
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    sim = simulator_factory("--fault", "busy")
    assert post(sim, "/api/chat", {"model": "llama3.2", "messages": []}).status_code == 503


def test_crash_exits_2_after_a_go_panic_and_takes_runners_along(
    simulator: SimulatorProcess,
) -> None:
    post(simulator, "/api/generate", {"model": "llama3.2"})
    runner = runner_children(simulator)[0]
    simulator.set_fault("crash")
    assert simulator.wait_exit(timeout=10) == 2
    assert simulator.stderr_text().rstrip().splitlines()[0].startswith("time=")
    assert "panic: runtime error" in simulator.stderr_text()
    wait_until(
        lambda: not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE,
        "runner gone with its parent",
    )


def test_runner_crash_kills_the_child_and_fails_the_next_generate(
    simulator: SimulatorProcess,
) -> None:
    post(simulator, "/api/generate", {"model": "llama3.2"})
    first = runner_children(simulator)[0]
    simulator.set_fault("runner_crash")
    wait_until(lambda: not runner_children(simulator), "runner died")
    simulator.wait_for_log(
        r'level=ERROR source=\S+ msg="llama-server terminated"'
        r' error="exit status 2" exit=2$'
    )
    assert "GGML_ASSERT" in simulator.stderr_text()
    failed = post(simulator, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert (failed.status_code, failed.json()) == (500, {"error": RUNNER_STOPPED})
    simulator.wait_for_log(r'msg="llama-server completion error"')
    simulator.clear_fault()
    assert (
        post(
            simulator, "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False}
        ).status_code
        == 200
    )
    assert [p.pid for p in runner_children(simulator)] != [first.pid]


def test_oom_fails_the_load_with_real_lines(simulator: SimulatorProcess) -> None:
    simulator.set_fault("oom")
    response = post(simulator, "/api/generate", {"model": "llama3.2", "prompt": "x"})
    assert response.status_code == 500
    assert response.json()["error"].startswith("llama-server process has terminated: exit status 1")
    simulator.wait_for_log(r"^alloc_tensor_range: failed to allocate CPU buffer")
    simulator.wait_for_log(r'level=ERROR source=\S+ msg="error loading llama server" error=')
    assert runner_children(simulator) == []
    assert requests.get(simulator.url + "/api/ps", timeout=T).json() == {"models": []}


# -- eras, start-up, process shape ------------------------------------------------------------


def test_go_runner_era_uses_the_old_runner_and_wording(
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    sim = simulator_factory("--era", "go-runner")
    assert requests.get(sim.url + "/api/version", timeout=T).json() == {"version": "0.24.0"}
    assert "capabilities" not in requests.get(sim.url + "/api/tags", timeout=T).json()["models"][0]
    post(sim, "/api/generate", {"model": "llama3.2", "prompt": "x", "stream": False})
    argv = runner_children(sim)[0].cmdline()
    assert [os.path.basename(a) for a in argv[1:3]] == ["ollama", "runner"]
    sim.wait_for_log(r'msg="starting runner" cmd=".*/ollama runner --model ')
    sim.wait_for_log(r'msg="llama runner started in \d+\.\d\d seconds"')
    assert "print_timing" not in sim.stderr_text()
    sim.set_fault("oom")
    oom = post(sim, "/api/generate", {"model": "qwen2.5:0.5b", "prompt": "x"})
    assert oom.status_code == 500
    assert re.fullmatch(
        r"model requires more system memory \(\S+ GiB\) than is available"
        r" \(\S+ GiB\)",
        oom.json()["error"],
    )


def test_startup_logs_listening_with_the_real_address(simulator: SimulatorProcess) -> None:
    port = simulator.url.rsplit(":", 1)[1]
    text = simulator.stderr_text()
    assert f'msg="Listening on 127.0.0.1:{port} (version 0.32.15)"' in text
    assert re.match(
        r'time=\S+ level=INFO source=routes\.go:\d+ msg="server config" env="map\[',
        text.splitlines()[0],
    )
    assert 'msg="inference compute" id=cpu library=cpu' in text
    assert simulator.stdout_text() == ""  # nothing but gin lines on stdout


def test_port_in_use_exits_1_like_ollama(
    simulator: SimulatorProcess,
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    second = simulator_factory(start=False, port=simulator.port)
    second.start(wait=False)
    assert second.wait_exit(timeout=T) == 1
    assert (
        f"Error: listen tcp 127.0.0.1:{simulator.port}: bind: address already in use"
        in second.stderr_text()
    )


def test_restart_comes_back_on_the_same_port(simulator: SimulatorProcess) -> None:
    url, pid = simulator.url, simulator.pid
    simulator.restart()
    assert simulator.url == url and simulator.pid != pid
    assert requests.get(url + "/api/version", timeout=T).status_code == 200


def test_as_ollama_looks_like_ollama_serve_to_process_matchers(
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    sim = simulator_factory(as_ollama=True)
    argv = psutil.Process(sim.pid).cmdline()
    names = [os.path.basename(a) for a in argv]
    assert names[names.index("ollama") + 1] == "serve"
    post(sim, "/api/generate", {"model": "llama3.2"})
    assert runner_children(sim)[0].ppid() == sim.pid


def test_models_dir_lists_a_real_store_layout(
    simulator_factory: Callable[..., SimulatorProcess],
    tmp_path: Path,
) -> None:
    blobs = tmp_path / "models" / "blobs"
    blobs.mkdir(parents=True)
    config = json.dumps(
        {
            "model_format": "gguf",
            "model_family": "qwen2",
            "model_families": ["qwen2"],
            "model_type": "7.6B",
            "file_type": "Q4_K_M",
        }
    ).encode()
    weights = b"GGUF\x03\x00\x00\x00not really weights"
    digests = {}
    for data in (config, weights):
        digests[data] = hashlib.sha256(data).hexdigest()
        (blobs / f"sha256-{digests[data]}").write_bytes(data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": f"sha256:{digests[config]}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.ollama.image.model",
                    "digest": f"sha256:{digests[weights]}",
                    "size": len(weights),
                }
            ],
        }
    ).encode()
    path = tmp_path / "models" / "manifests" / "hf.co" / "someone" / "Qwen-GGUF" / "Q4_K_M"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    sim = simulator_factory("--models-dir", str(tmp_path / "models"))
    models = requests.get(sim.url + "/api/tags", timeout=T).json()["models"]
    assert [
        (m["name"], m["digest"], m["size"], m["details"]["parameter_size"]) for m in models
    ] == [
        (
            "hf.co/someone/Qwen-GGUF:Q4_K_M",
            hashlib.sha256(manifest).hexdigest(),
            len(config) + len(weights),
            "7.6B",
        )
    ]
    post(sim, "/api/generate", {"model": "hf.co/someone/Qwen-GGUF:Q4_K_M"})
    argv = runner_children(sim)[0].cmdline()
    assert argv[argv.index("--model") + 1] == str(blobs / f"sha256-{digests[weights]}")
    assert "total blobs: 2" in sim.stderr_text()


def test_log_file_follows_rotation(
    simulator_factory: Callable[..., SimulatorProcess], tmp_path: Path
) -> None:
    log = tmp_path / "ollama.log"
    sim = simulator_factory(log_file=log)
    requests.get(sim.url + "/api/version", timeout=T)
    sim.wait_for_log(r'GET      "/api/version"$')
    log.rename(tmp_path / "ollama.log.1")
    requests.get(sim.url + "/api/tags", timeout=T)
    wait_until(lambda: log.exists() and '"/api/tags"' in log.read_text(), "new file written")
    old = (tmp_path / "ollama.log.1").read_text()
    assert "Listening on" in old and '"/api/version"' in old and '"/api/tags"' not in old
    assert '"/api/version"' not in log.read_text()
    assert sim.stdout_text() == ""


def test_port_zero_is_allowed(simulator: SimulatorProcess) -> None:
    # The harness starts with --listen 127.0.0.1:0; the ready file names the real port.
    with socket.create_connection(("127.0.0.1", simulator.port), timeout=T):
        pass


# -- blobs and create (the server side of `ollama create`, FACTS.md §1.4, §5) ----------------

#: A GGUF with real metadata: 4096 x 32000 + 4096 elements → "131.08M", file type 15 → Q4_K_M.
WEIGHTS = gguf_header("llama", 15, ((4096, 32000), (4096,)))
WEIGHTS_DIGEST = "sha256:" + hashlib.sha256(WEIGHTS).hexdigest()


def blobs_dir(sim: SimulatorProcess) -> Path:
    return sim.work_dir / "models" / "blobs"


def upload(sim: SimulatorProcess, data: bytes, digest: str | None = None) -> requests.Response:
    digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
    return requests.post(f"{sim.url}/api/blobs/{digest}", data=data, timeout=T)


def ndjson(response: requests.Response) -> list[dict[str, Any]]:
    assert response.headers["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def test_blob_head_is_404_until_uploaded_then_post_is_201_then_200(
    shared_sim: SimulatorProcess,
) -> None:
    data = b"GGUF\x03\x00\x00\x00 a blob only this test uploads"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    head = requests.head(f"{shared_sim.url}/api/blobs/{digest}", timeout=T)
    assert head.status_code == 404 and head.content == b""  # HEAD answers carry no body
    created, again = upload(shared_sim, data), upload(shared_sim, data)
    assert (created.status_code, again.status_code) == (201, 200)
    assert requests.head(f"{shared_sim.url}/api/blobs/{digest}", timeout=T).status_code == 200
    stored = blobs_dir(shared_sim) / digest.replace(":", "-")
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o644
    shared_sim.wait_for_log(rf'\| 404 \|.*\| HEAD     "/api/blobs/{digest}"$')
    shared_sim.wait_for_log(rf'\| 201 \|.*\| POST     "/api/blobs/{digest}"$')


def test_blob_upload_with_a_wrong_digest_is_refused(shared_sim: SimulatorProcess) -> None:
    data = b"the bytes that were really sent"
    claimed = "sha256:" + "ab" * 32
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    response = upload(shared_sim, data, claimed)
    assert response.status_code == 400
    assert response.json() == {"error": f'digest mismatch, expected "{claimed}", got "{actual}"'}
    assert requests.head(f"{shared_sim.url}/api/blobs/{claimed}", timeout=T).status_code == 404
    # No temp file is left behind: blobs/ holds only digest-named files.
    assert all(
        re.fullmatch(r"sha256-[0-9a-f]{64}", p.name) for p in blobs_dir(shared_sim).iterdir()
    )


def test_blob_routes_refuse_a_malformed_digest(shared_sim: SimulatorProcess) -> None:
    for bad in ("sha256:1234", "md5:" + "0" * 32, "sha256:" + "g" * 64):
        posted = upload(shared_sim, b"x", bad)
        assert (posted.status_code, posted.json()) == (400, {"error": "invalid digest format"})
        assert requests.head(f"{shared_sim.url}/api/blobs/{bad}", timeout=T).status_code == 400


def test_blob_upload_streams_a_chunked_body_of_several_mebibytes(
    shared_sim: SimulatorProcess,
) -> None:
    pieces = [hashlib.sha256(bytes([i])).digest() * 40_000 for i in range(3)]  # ~3.7 MiB
    data = b"".join(pieces)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    # A generator body makes requests send Transfer-Encoding: chunked.
    response = requests.post(f"{shared_sim.url}/api/blobs/{digest}", data=iter(pieces), timeout=T)
    assert response.status_code == 201
    assert (blobs_dir(shared_sim) / digest.replace(":", "-")).read_bytes() == data


def test_create_from_an_uploaded_gguf_writes_a_real_store_and_lists_the_model(
    simulator: SimulatorProcess,
) -> None:
    assert upload(simulator, WEIGHTS).status_code == 201
    request = {
        "model": "support-bot",
        "files": {"model.gguf": WEIGHTS_DIGEST},
        "template": "{{ .System }} {{ .Prompt }}",
        "system": "You answer support questions.",
        "parameters": {"temperature": 0.2, "stop": ["<|end|>"], "num_ctx": 8192},
        "messages": [{"role": "user", "content": "hello"}],
        "license": ["MIT", "Apache-2.0"],
    }
    response = post(simulator, "/api/create", request)
    assert response.status_code == 200
    statuses = [line["status"] for line in ndjson(response)]
    assert statuses[:2] == ["parsing GGUF", f"using existing layer {WEIGHTS_DIGEST}"]
    assert statuses[-2:] == ["writing manifest", "success"]
    new_layers = statuses[2:-2]
    assert len(new_layers) == 6  # template, system, 2 licenses, params, messages
    assert all(re.fullmatch(r"creating new layer sha256:[0-9a-f]{64}", s) for s in new_layers)

    models = simulator.work_dir / "models"
    raw = (
        models / "manifests" / "registry.ollama.ai" / "library" / "support-bot" / "latest"
    ).read_bytes()
    assert raw.endswith(b"}\n")  # Go's json.Encoder
    manifest = json.loads(raw)
    assert manifest["schemaVersion"] == 2
    media = [layer["mediaType"].rsplit(".", 1)[1] for layer in manifest["layers"]]
    assert media == ["model", "template", "system", "license", "license", "params", "messages"]
    assert manifest["layers"][0]["digest"] == WEIGHTS_DIGEST
    assert manifest["layers"][0]["from"] == "model.gguf"

    def blob(digest: str) -> bytes:
        return (models / "blobs" / digest.replace(":", "-")).read_bytes()

    for ref in [manifest["config"], *manifest["layers"]]:
        data = blob(ref["digest"])
        assert ref["size"] == len(data)
        assert ref["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    by_media = {
        m: blob(layer["digest"]) for m, layer in zip(media, manifest["layers"], strict=True)
    }
    assert by_media["template"] == b"{{ .System }} {{ .Prompt }}"
    assert json.loads(by_media["params"]) == request["parameters"]
    assert json.loads(by_media["messages"]) == request["messages"]
    config = json.loads(blob(manifest["config"]["digest"]))
    assert (
        config["model_format"],
        config["model_family"],
        config["model_type"],
        config["file_type"],
    ) == ("gguf", "llama", "131.08M", "Q4_K_M")

    listed = requests.get(simulator.url + "/api/tags", timeout=T).json()["models"]
    assert listed[0]["name"] == "support-bot:latest"  # newest first
    assert listed[0]["digest"] == hashlib.sha256(raw).hexdigest()
    assert listed[0]["size"] == manifest["config"]["size"] + sum(
        layer["size"] for layer in manifest["layers"]
    )
    assert listed[0]["details"]["quantization_level"] == "Q4_K_M"
    # The created model loads like any other: a runner child on the uploaded GGUF.
    generated = post(
        simulator, "/api/generate", {"model": "support-bot", "prompt": "hi", "stream": False}
    )
    assert generated.status_code == 200 and generated.json()["done"] is True
    argv = runner_children(simulator)[0].cmdline()
    assert argv[argv.index("--model") + 1] == str(
        models / "blobs" / WEIGHTS_DIGEST.replace(":", "-")
    )
    # ... and the project's own store verifier finds the new store sound.
    verify = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "models", "verify", "--models-dir", str(models)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    simulator.wait_for_log(r'\| 200 \|.*\| POST     "/api/create"$')


def test_create_again_reuses_every_layer_and_stream_false_answers_once(
    simulator: SimulatorProcess,
) -> None:
    upload(simulator, WEIGHTS)
    request = {"model": "bot:v1", "files": {"w.gguf": WEIGHTS_DIGEST}, "system": "short"}
    ndjson(post(simulator, "/api/create", request))
    again = post(simulator, "/api/create", dict(request, stream=False))
    assert again.status_code == 200
    assert again.headers["Content-Type"] == "application/json; charset=utf-8"
    assert again.content == b'{"status":"success"}'
    streamed = [line["status"] for line in ndjson(post(simulator, "/api/create", request))]
    assert not any(s.startswith("creating new layer") for s in streamed), streamed
    names = [
        m["name"] for m in requests.get(simulator.url + "/api/tags", timeout=T).json()["models"]
    ]
    assert names.count("bot:v1") == 1


def test_create_refuses_bad_requests_before_streaming(shared_sim: SimulatorProcess) -> None:
    missing = "sha256:" + "1" * 64
    cases: list[tuple[Any, str]] = [
        ({"model": "bad name!", "files": {"m.gguf": WEIGHTS_DIGEST}}, "invalid model name"),
        ({"model": "x"}, "neither 'from' or 'files' was specified"),
        (
            {"model": "x", "files": {"m.gguf": "sha256:12"}},
            "invalid digest for m.gguf: invalid digest format",
        ),
        (
            {"model": "x", "files": {"/etc/m.gguf": WEIGHTS_DIGEST}},
            "file path must be relative: /etc/m.gguf",
        ),
        (
            {"model": "x", "files": {"weights": missing}},
            f"blob not found for weights (digest {missing}): open "
            f"{blobs_dir(shared_sim) / missing.replace(':', '-')}: no such file or directory",
        ),
    ]
    for body, error in cases:
        response = post(shared_sim, "/api/create", body)
        assert (response.status_code, response.json()) == (400, {"error": error}), body
    empty = requests.post(shared_sim.url + "/api/create", timeout=T)
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})
    listed = [
        m["name"] for m in requests.get(shared_sim.url + "/api/tags", timeout=T).json()["models"]
    ]
    assert "x:latest" not in listed


def test_create_of_a_file_that_is_not_gguf(shared_sim: SimulatorProcess) -> None:
    not_gguf = b"PK\x03\x04 a zip, not weights"
    upload(shared_sim, not_gguf)
    digest = "sha256:" + hashlib.sha256(not_gguf).hexdigest()
    # Named .gguf: the header parse fails after "parsing GGUF" went out.
    streamed = post(shared_sim, "/api/create", {"model": "nope", "files": {"a.gguf": digest}})
    assert streamed.status_code == 200
    assert ndjson(streamed) == [{"status": "parsing GGUF"}, {"error": "invalid file magic"}]
    single = post(
        shared_sim, "/api/create", {"model": "nope", "files": {"a.gguf": digest}, "stream": False}
    )
    assert (single.status_code, single.json()) == (500, {"error": "invalid file magic"})
    # No extension: the magic decides the type before any progress.
    unknown = post(shared_sim, "/api/create", {"model": "nope", "files": {"a": digest}})
    assert (unknown.status_code, unknown.json()) == (400, {"error": "unknown type"})
    assert not (
        shared_sim.work_dir / "models" / "manifests" / "registry.ollama.ai" / "library" / "nope"
    ).exists()


def test_create_from_an_existing_model_adds_a_layer(simulator: SimulatorProcess) -> None:
    base = json.loads(
        (
            simulator.work_dir
            / "models"
            / "manifests"
            / "registry.ollama.ai"
            / "library"
            / "llama3.2"
            / "latest"
        ).read_bytes()
    )
    lines = ndjson(
        post(
            simulator,
            "/api/create",
            {"model": "llama3.2-terse", "from": "llama3.2", "system": "Be terse."},
        )
    )
    statuses = [line["status"] for line in lines]
    assert statuses[: len(base["layers"])] == [
        f"using existing layer {layer['digest']}" for layer in base["layers"]
    ]
    assert statuses[len(base["layers"])].startswith("creating new layer sha256:")
    assert statuses[-1] == "success"
    shown = post(simulator, "/api/show", {"model": "llama3.2-terse"})
    assert shown.status_code == 200
    assert shown.json()["details"]["family"] == "llama"
    offline = post(simulator, "/api/create", {"model": "y", "from": "not-here:7b", "stream": False})
    assert offline.status_code == 500
    assert offline.json()["error"].startswith("pull model manifest: ")


def test_go_runner_era_records_the_blob_path_as_the_layer_source(
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    sim = simulator_factory("--era", "go-runner")
    upload(sim, WEIGHTS)
    post(
        sim, "/api/create", {"model": "old", "files": {"m.gguf": WEIGHTS_DIGEST}, "stream": False}
    ).raise_for_status()
    manifest = json.loads(
        (
            sim.work_dir
            / "models"
            / "manifests"
            / "registry.ollama.ai"
            / "library"
            / "old"
            / "latest"
        ).read_bytes()
    )
    assert manifest["layers"][0]["from"] == str(blobs_dir(sim) / WEIGHTS_DIGEST.replace(":", "-"))
