"""The endpoints that run a model: ``/api/generate``, ``/api/chat``, ``/api/embed``,
``/api/embeddings`` (FACTS.md §1.3).

Each one finds the model, has the scheduler load it (or refuse: ``oom``, a dead runner, the
``runner_crash`` fault), produces filler tokens or a deterministic vector, writes the
era's completion log lines (llama-server timings, the abort and runner-stopped lines) and
releases the model with the request's keep_alive.

With a real llama-server behind a loaded model, generate and chat are passed to it
(``/completion`` and ``/v1/chat/completions``, see ``llamaserver``): the tokens, the timing lines
and the counts in the answer are the runner's own, nothing is made up here. A runner that dies
mid-request is reported as Ollama reports it (FACTS.md §2.5): the ``completion error`` line,
a 500 (or an ``error`` object in a stream already begun) and, once reaped, ``llama-server
terminated``; the next request loads the model again.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import Any

from ollama_watchdog.simulator.catalog import Model
from ollama_watchdog.simulator.instance import Simulator
from ollama_watchdog.simulator.llamaserver import Completion, RunnerClient, RunnerGone
from ollama_watchdog.simulator.logformat import format_timing_lines, go_quote, utc_now_rfc3339_nano
from ollama_watchdog.simulator.protocol import (
    KNOWN_OPTIONS,
    MSG_RUNNER_STOPPED,
    ApiError,
    KeepAliveError,
    embedding_vector,
    embeddings_json,
    json_body,
    json_kind,
    model_name,
    parse_keep_alive,
)
from ollama_watchdog.simulator.scheduler import (
    ERA_LLAMA_SERVER,
    LoadedModel,
    LoadError,
    RunnerStoppedError,
)
from ollama_watchdog.simulator.wire import JSON_CONTENT_TYPE, Exchange, GoHandler

_FILLER = (" The", " simulated", " model", " answers", " with", " steady", " filler",
           " tokens", ",", " nothing", " more", ".")
_SRC_INVALID_OPTION = "types.go:812"
_SRC_ABORT = "llama_server.go:1538"
_SRC_COMPLETION_ERROR = {ERA_LLAMA_SERVER: "llama_server.go:1561", "go-runner": "server.go:1577"}


def generate(ex: Exchange) -> None:
    """``POST /api/generate``."""
    _run(ex.http, ex.sim, json_body(ex.body, "GenerateRequest"), chat=False)


def chat(ex: Exchange) -> None:
    """``POST /api/chat``."""
    _run(ex.http, ex.sim, json_body(ex.body, "ChatRequest"), chat=True)


def embed(ex: Exchange) -> None:
    """``POST /api/embed``."""
    _embed(ex.http, ex.sim, json_body(ex.body, "EmbedRequest"), legacy=False)


def embeddings(ex: Exchange) -> None:
    """``POST /api/embeddings`` (the older, one-prompt form)."""
    _embed(ex.http, ex.sim, json_body(ex.body, "EmbeddingRequest"), legacy=True)


# -- request fields ----------------------------------------------------------------------------


def _keep_alive(sim: Simulator, req: dict[str, Any]) -> float:
    try:
        return parse_keep_alive(req.get("keep_alive"), sim.settings.keep_alive)
    except KeepAliveError as error:
        raise ApiError(400, str(error)) from None


def _options(sim: Simulator, req: dict[str, Any]) -> dict[str, Any]:
    options = req.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, f"json: cannot unmarshal {json_kind(options)} into Go struct"
                            " field options of type map[string]interface {}")
    for key in options:
        if key not in KNOWN_OPTIONS:
            sim.sink.slog("WARN", _SRC_INVALID_OPTION, "invalid option provided",
                          ("option", key))
    for key in ("num_predict", "num_ctx"):
        if key in options and (not isinstance(options[key], int | float)
                               or isinstance(options[key], bool)):
            raise ApiError(400, f'option "{key}" must be of type integer')
    return options


# -- loading -----------------------------------------------------------------------------------


def _find_for_run(sim: Simulator, req: dict[str, Any], *, chat: bool) -> Model:
    name = model_name(req)
    if not name and chat:
        raise ApiError(400, "model is required")
    model = sim.catalog.find(name) if name else None
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    return model


def _acquire(sim: Simulator, model: Model, options: dict[str, Any], *,
             chat: bool) -> LoadedModel:
    num_ctx = options.get("num_ctx")
    try:
        entry = sim.scheduler.acquire(model, int(num_ctx) if num_ctx else None,
                                      oom=sim.faults.current.name == "oom")
    except LoadError as error:
        raise ApiError(500, error.message) from None
    except RunnerStoppedError as stopped:
        _log_runner_stopped(sim, stopped.port, chat=chat)
        raise ApiError(500, MSG_RUNNER_STOPPED) from None
    if sim.faults.current.name == "runner_crash":
        sim.scheduler.crash_runner(entry)
        sim.scheduler.forget(entry)
        _log_runner_stopped(sim, entry.runner.port, chat=chat)
        raise ApiError(500, MSG_RUNNER_STOPPED)
    return entry


def _log_runner_stopped(sim: Simulator, port: int, *, chat: bool) -> None:
    era = sim.settings.era
    error = f'Post "http://127.0.0.1:{port}/completion": EOF'
    if era == ERA_LLAMA_SERVER:
        msg = "llama-server chat error" if chat else "llama-server completion error"
    else:
        msg = "post predict"
    sim.sink.slog("ERROR", _SRC_COMPLETION_ERROR[era], msg, ("error", error))


# -- generate / chat ---------------------------------------------------------------------------


def _run(http: GoHandler, sim: Simulator, req: dict[str, Any], *, chat: bool) -> None:
    started = time.monotonic_ns()
    model = _find_for_run(sim, req, chat=chat)
    keep_alive = _keep_alive(sim, req)
    options = _options(sim, req)
    if model.is_embedding:
        raise ApiError(400, f"{go_quote(model_name(req))} does not support"
                            f" {'chat' if chat else 'generate'}")
    if chat:
        messages = req.get("messages") or []
        prompt_text = "".join(str(m.get("content", "")) for m in messages
                              if isinstance(m, dict))
        load_only = not messages
    else:
        prompt_text = str(req.get("prompt") or "")
        load_only = not prompt_text
    stream = req.get("stream") is not False
    entry = _acquire(sim, model, options, chat=chat)
    # /api/ps shows this request's expiry while it runs, not "forever": a client that
    # reads /api/ps right after the final chunk must not race the release below
    sim.scheduler.touch(entry, keep_alive)
    loaded_ns = time.monotonic_ns()
    head: dict[str, object] = {"model": model_name(req)}
    if load_only:
        sim.scheduler.release(entry, keep_alive)
        done: dict[str, object] = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
        reason = "unload" if keep_alive == 0 else "load"
        if chat:
            done.update(message={"role": "assistant", "content": ""}, done_reason=reason,
                        done=True)
        else:
            done.update(response="", done=True, done_reason=reason)
        http.answer_single(done, stream)
        return
    try:
        if entry.runner.real:
            _run_real_completion(http, sim, entry, head, req, options, stream, chat=chat,
                                 started=started, loaded_ns=loaded_ns)
        else:
            _run_completion(http, sim, entry, head, prompt_text, options, stream, chat=chat,
                            started=started, loaded_ns=loaded_ns)
    finally:
        sim.scheduler.release(entry, keep_alive)


#: request options passed through to llama-server under the same name
_SAMPLING = ("temperature", "top_k", "top_p", "min_p", "seed", "stop", "repeat_penalty",
             "repeat_last_n", "presence_penalty", "frequency_penalty")


def _runner_request(req: dict[str, Any], options: dict[str, Any], default_tokens: int, *,
                    chat: bool) -> dict[str, Any]:
    """The llama-server request body for an Ollama generate/chat request."""
    limit = options.get("num_predict")
    # A random-weight model may end on its EOS token at any point, yet need not: without
    # num_predict the simulator's --tokens bounds the answer, as it does for the stand-in.
    n_predict = int(limit) if isinstance(limit, int | float) and limit >= 0 else default_tokens
    body: dict[str, Any] = {key: options[key] for key in _SAMPLING if key in options}
    if chat:
        messages = [{"role": str(m.get("role") or "user"), "content": str(m.get("content") or "")}
                    for m in req.get("messages") or [] if isinstance(m, dict)]
        body.update(messages=messages, max_tokens=n_predict)
    else:
        body.update(prompt=str(req.get("prompt") or ""), n_predict=n_predict)
    return body


def _run_real_completion(http: GoHandler, sim: Simulator, entry: LoadedModel,
                         head: dict[str, object], req: dict[str, Any],
                         options: dict[str, Any], stream: bool, *, chat: bool, started: int,
                         loaded_ns: int) -> None:
    """Generate/chat through the model's real llama-server."""
    client = RunnerClient(entry.runner.port)
    body = _runner_request(req, options, sim.settings.default_tokens, chat=chat)
    if stream:
        # Ollama answers 200 at once and reports a later failure inside the stream.
        http.stream_start()

    def on_piece(piece: str) -> None:
        http.stream_write(_chunk(head, piece, chat=chat))

    try:
        if chat:
            result = client.chat(body, on_piece if stream else None)
        else:
            result = client.complete(body, on_piece if stream else None)
    except (BrokenPipeError, ConnectionResetError):
        # Dropping the runner connection cancels its task: it prints no timing block.
        client.close()
        sim.sink.slog("INFO", _SRC_ABORT,
                      "aborting completion request due to client closing the connection")
        raise
    except RunnerGone as gone:
        client.close()
        path = "/v1/chat/completions" if chat else "/completion"
        _runner_failed(sim, entry, f'Post "http://127.0.0.1:{entry.runner.port}{path}":'
                                   f" {gone}", chat=chat)
        if not stream:
            raise ApiError(500, MSG_RUNNER_STOPPED) from None
        http.stream_write({"error": MSG_RUNNER_STOPPED})
        http.stream_end()
        return
    finally:
        client.close()
    sim.scheduler.record(entry.model.name, result.cache_n, result.prompt_n, result.predicted_n)
    final = _final(head, result, chat=chat, stream=stream, started=started, loaded_ns=loaded_ns)
    if stream:
        http.stream_write(final)
        http.stream_end()
    else:
        http.send_json(200, final)


def _runner_failed(sim: Simulator, entry: LoadedModel, error: str, *, chat: bool) -> None:
    """The runner broke off a request: Ollama's ERROR line; a dead runner is reaped and
    forgotten, so the next request loads the model again."""
    msg = "llama-server chat error" if chat else "llama-server completion error"
    sim.sink.slog("ERROR", _SRC_COMPLETION_ERROR[ERA_LLAMA_SERVER], msg, ("error", error))
    with contextlib.suppress(subprocess.TimeoutExpired):
        entry.runner.process.wait(5.0)
    if not entry.runner.alive():
        sim.scheduler.reap(entry)
        sim.scheduler.forget(entry)


def _final(head: dict[str, object], result: Completion, *, chat: bool, stream: bool,
           started: int, loaded_ns: int) -> dict[str, object]:
    """The last object of an answer (``done: true``), with the runner's counts."""
    final: dict[str, object] = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
    text = "" if stream else result.text
    if chat:
        final.update(message={"role": "assistant", "content": text},
                     done_reason=result.done_reason, done=True)
    else:
        final.update(response=text, done=True, done_reason=result.done_reason)
    metrics = {
        "total_duration": time.monotonic_ns() - started,
        "load_duration": loaded_ns - started,
        "prompt_eval_count": result.prompt_eval_count,
        "prompt_eval_duration": result.prompt_eval_duration,
        "eval_count": result.eval_count,
        "eval_duration": result.eval_duration,
    }
    final.update({key: value for key, value in metrics.items() if value})  # omitempty
    return final


def _run_completion(http: GoHandler, sim: Simulator, entry: LoadedModel,
                    head: dict[str, object], prompt_text: str, options: dict[str, Any],
                    stream: bool, *, chat: bool, started: int, loaded_ns: int) -> None:
    settings = sim.settings
    # A rough token count; the text itself is never logged or echoed.
    prompt_tokens = max(1, len(prompt_text.encode()) // 4) + 10
    limit = options.get("num_predict")
    if isinstance(limit, int | float) and limit >= 0:
        count, reason = min(int(limit), 4096), "length"
    else:
        count, reason = settings.default_tokens, "stop"
    prompt_start = time.monotonic_ns()
    time.sleep(prompt_tokens * settings.token_delay / 20)
    prompt_ns = max(time.monotonic_ns() - prompt_start, 1)
    if stream:
        http.stream_start()
    eval_start = time.monotonic_ns()
    pieces: list[str] = []
    try:
        for index in range(count):
            if settings.token_delay:
                time.sleep(settings.token_delay)
            piece = _FILLER[index % len(_FILLER)]
            pieces.append(piece)
            if stream:
                http.stream_write(_chunk(head, piece, chat=chat))
    except (BrokenPipeError, ConnectionResetError):
        sim.sink.slog("INFO", _SRC_ABORT,
                      "aborting completion request due to client closing the connection")
        raise
    eval_ns = time.monotonic_ns() - eval_start if count else 0
    task = entry.take_task_id()
    if settings.era == ERA_LLAMA_SERVER:
        for line in format_timing_lines(0, task, prompt_ns / 1e6, prompt_tokens,
                                        eval_ns / 1e6, count,
                                        block=settings.timing_form == "block"):
            sim.sink.raw(line)
    final: dict[str, object] = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
    if chat:
        text = "" if stream else "".join(pieces)
        final.update(message={"role": "assistant", "content": text}, done_reason=reason,
                     done=True)
    else:
        final.update(response="" if stream else "".join(pieces), done=True,
                     done_reason=reason,
                     context=[1000 + (i % 30000) for i in range(prompt_tokens + count)])
    metrics = {
        "total_duration": time.monotonic_ns() - started,
        "load_duration": loaded_ns - started,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": count,
        "eval_duration": eval_ns,
    }
    final.update({key: value for key, value in metrics.items() if value})  # omitempty
    if stream:
        http.stream_write(final)
        http.stream_end()
    else:
        http.send_json(200, final)


def _chunk(head: dict[str, object], piece: str, *, chat: bool) -> dict[str, object]:
    chunk = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
    if chat:
        chunk.update(message={"role": "assistant", "content": piece}, done=False)
    else:
        chunk.update(response=piece, done=False)
    return chunk


# -- embed -------------------------------------------------------------------------------------


def _embed(http: GoHandler, sim: Simulator, req: dict[str, Any], *, legacy: bool) -> None:
    started = time.monotonic_ns()
    name = model_name(req)
    if legacy and not name:
        raise ApiError(400, "model is required")
    model = sim.catalog.find(name) if name else None
    if model is None:
        raise ApiError(404, f"model '{name}' not found")
    keep_alive = _keep_alive(sim, req)
    options = _options(sim, req)
    raw_input = req.get("prompt" if legacy else "input")
    if raw_input is None or isinstance(raw_input, str):
        texts = [raw_input] if raw_input else []
    elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
        texts = [t for t in raw_input if isinstance(t, str)]
    else:
        raise ApiError(400, "invalid input type")
    entry = _acquire(sim, model, options, chat=False)
    sim.scheduler.touch(entry, keep_alive)
    loaded_ns = time.monotonic_ns()
    try:
        vectors = [embedding_vector(model.name, text, model.embedding_length)
                   for text in texts]
    finally:
        sim.scheduler.release(entry, keep_alive)
    if legacy:
        http.send_json(200, {"embedding": vectors[0] if vectors else []})
        return
    extra = {
        "total_duration": time.monotonic_ns() - started if texts else 0,
        "load_duration": loaded_ns - started if texts else 0,
        "prompt_eval_count": sum(max(1, len(t.encode()) // 4) for t in texts),
    }
    http.send(200, embeddings_json(name, vectors, extra), JSON_CONTENT_TYPE)
