"""The simulated Ollama HTTP API (FACTS.md §1) with run-time faults.

A ``ThreadingHTTPServer`` speaking HTTP/1.1 like Go's net/http: Content-Length for plain
answers, chunked NDJSON for streams, gin's text 404/405 bodies, and one gin request line per
request, written when the response is finished.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ollama_watchdog.simulator.catalog import Model, normalize_name, read_model
from ollama_watchdog.simulator.create import (
    CreateError,
    blob_path,
    prepare_create,
    receive_blob,
    run_create,
)
from ollama_watchdog.simulator.logformat import (
    format_rfc3339_nano,
    format_timing_lines,
    go_quote,
    utc_now_rfc3339_nano,
)
from ollama_watchdog.simulator.logsink import LogSink
from ollama_watchdog.simulator.protocol import (
    KNOWN_OPTIONS,
    MSG_BUSY,
    MSG_RUNNER_STOPPED,
    SCHEDULED_ROUTES,
    KeepAliveError,
    embedding_vector,
    embeddings_json,
    go_json,
    json_kind,
    json_syntax_error,
    parse_keep_alive,
    route_methods,
)
from ollama_watchdog.simulator.scheduler import (
    ERA_LLAMA_SERVER,
    LoadedModel,
    LoadError,
    RunnerStoppedError,
    Scheduler,
)

FAULTS = ("none", "hang", "slow", "error500", "malformed", "crash", "runner_crash", "oom", "busy")

_MAX_GO_DURATION_NS = (1 << 63) - 1
_FILLER = (" The", " simulated", " model", " answers", " with", " steady", " filler",
           " tokens", ",", " nothing", " more", ".")
_MALFORMED_BODY = b"<!DOCTYPE html><html><body>Ollama is running</body></html>"
_SRC_INVALID_OPTION = "types.go:812"
_SRC_ABORT = "llama_server.go:1538"
_SRC_COMPLETION_ERROR = {ERA_LLAMA_SERVER: "llama_server.go:1561", "go-runner": "server.go:1577"}
_BLOBS_PREFIX = "/api/blobs/"
_UPLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fault:
    """The fault in force; ``delay`` is used by ``slow``."""

    name: str = "none"
    delay: float = 5.0

    def as_json(self) -> dict[str, object]:
        return {"fault": self.name, "delay": self.delay}


class FaultState:
    """The current fault, swapped atomically; hung requests wait on the condition."""

    def __init__(self, initial: Fault) -> None:
        self._fault = initial
        self.changed = threading.Condition()

    @property
    def current(self) -> Fault:
        return self._fault

    def set(self, fault: Fault) -> None:
        with self.changed:
            self._fault = fault
            self.changed.notify_all()


@dataclass(frozen=True)
class SimSettings:
    """Behaviour knobs of one simulator instance."""

    version: str
    era: str
    timing_form: str  # "line" | "block"
    token_delay: float  # seconds per generated token
    default_tokens: int
    keep_alive: float  # default keep_alive seconds (OLLAMA_KEEP_ALIVE)
    loopback_only: bool  # bound to loopback: the allowed-hosts check applies

    @property
    def version_tuple(self) -> tuple[int, ...]:
        parts: list[int] = []
        for piece in self.version.split("-")[0].split("."):
            parts.append(int(piece) if piece.isdigit() else 0)
        return tuple(parts)


class ApiError(Exception):
    """An answer of ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Simulator:
    """State shared by all request threads: models, scheduler, faults, log sink."""

    def __init__(self, settings: SimSettings, models_dir: Path, models: list[Model],
                 scheduler: Scheduler, faults: FaultState, sink: LogSink,
                 on_crash: Callable[[], None]) -> None:
        self.settings = settings
        self.models_dir = models_dir  # the store blob uploads and creates write into
        self._models = {m.name: m for m in models}
        self._models_lock = threading.Lock()
        self.scheduler = scheduler
        self.faults = faults
        self.sink = sink
        self.on_crash = on_crash
        self.stopping = threading.Event()

    def models(self) -> list[Model]:
        with self._models_lock:
            return sorted(self._models.values(), key=lambda m: m.modified_at, reverse=True)

    def find(self, name: str) -> Model | None:
        with self._models_lock:
            return self._models.get(normalize_name(name))

    def put(self, model: Model) -> None:
        """Add a created model, or replace the one of the same name."""
        with self._models_lock:
            self._models[model.name] = model

    def delete(self, name: str) -> bool:
        with self._models_lock:
            return self._models.pop(normalize_name(name), None) is not None


def _details(model: Model) -> dict[str, object]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": model.family,
        "families": [model.family],
        "parameter_size": model.parameter_size,
        "quantization_level": model.quantization_level,
    }


def _local_rfc3339(epoch: float) -> str:
    seconds = math.floor(epoch)
    when = datetime.fromtimestamp(seconds).astimezone()
    nanos = round((epoch - seconds) * 1e9)
    when = when.replace(microsecond=min(nanos // 1000, 999_999))
    return format_rfc3339_nano(when, nanos % 1000)


def _expires_text(entry: LoadedModel) -> str:
    if math.isinf(entry.expires_at):
        # Go adds MaxInt64 ns to now: the year 2318 seen in real /api/ps output.
        when = datetime.now(UTC) + timedelta(microseconds=_MAX_GO_DURATION_NS // 1000)
        return format_rfc3339_nano(when.astimezone())
    return _local_rfc3339(entry.expires_at)


def _client_ip(handler: BaseHTTPRequestHandler) -> str:
    """gin's ClientIP with every proxy trusted: X-Forwarded-For, X-Real-IP, then the peer."""
    for header in ("X-Forwarded-For", "X-Real-IP"):
        value = handler.headers.get(header)
        if value:
            first = value.split(",")[0].strip()
            try:
                return str(ipaddress.ip_address(first))
            except ValueError:
                continue
    return str(handler.client_address[0])


def _host_allowed(host_header: str | None) -> bool:
    """Ollama's allowedHostsMiddleware, applied only when bound to loopback."""
    if not host_header:
        return True
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]")[0]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower()
        return (
            name in ("localhost", socket.gethostname().lower())
            or name.endswith((".localhost", ".local", ".internal"))
        )
    return addr.is_loopback or addr.is_private or addr.is_unspecified


class ApiHandler(BaseHTTPRequestHandler):
    """One connection to the simulated Ollama API."""

    protocol_version = "HTTP/1.1"
    server: ApiServer

    # -- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's own access log: stdout carries gin lines only."""

    def setup(self) -> None:
        super().setup()
        # Go's net/http sets TCP_NODELAY on every connection; without it a keep-alive client's
        # delayed ACK adds ~40 ms to each answer and probe durations would lie.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go's net/http sends no Server header.
        self.send_response_only(code, message)
        self.send_header("Date", formatdate(usegmt=True))
        self._status = code

    def _body_chunks(self, chunk_size: int = _UPLOAD_CHUNK) -> Iterator[bytes]:
        """The request body piece by piece (Content-Length or chunked), never all at once."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size > 0:
                    data = self.rfile.read(min(size, chunk_size))
                    if not data:
                        raise ConnectionResetError("request body ended early")
                    size -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, chunk_size))
            if not data:
                raise ConnectionResetError("request body ended early")
            left -= len(data)
            yield data

    def _read_body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _send(self, status: int, body: bytes, content_type: str | None,
              headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_json(self, status: int, value: object) -> None:
        self._send(status, go_json(value), "application/json; charset=utf-8")

    def _send_error_json(self, error: ApiError) -> None:
        self._send_json(error.status, {"error": error.message})

    def _stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream_write(self, value: object) -> None:
        data = go_json(value) + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # -- entry -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_GET

    def _handle(self) -> None:
        sim = self.server.sim
        started = time.monotonic()
        self._status = 0
        self._body_done = False
        self._wait_out_hang(sim)
        if sim.stopping.is_set():
            self.close_connection = True
            return
        fault = sim.faults.current
        if fault.name == "slow" and sim.stopping.wait(fault.delay):
            self.close_connection = True
            return
        raw_path, _, query = self.path.partition("?")
        path = unquote(raw_path)
        logged_path = path + (f"?{query}" if query else "")
        # A blob upload's body is streamed to disk by its handler, never held in memory.
        streamed = self.command == "POST" and path.startswith(_BLOBS_PREFIX)
        try:
            body = b"" if streamed else self._read_body()
            self._route(sim, path, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if not self._status:
                return
        except Exception:  # gin's recovery middleware: a 500 and the panic on stderr
            sim.sink.raw("[Recovery] simulator panic recovered:\n" + traceback.format_exc())
            if not self._status:
                try:
                    self._send_json(500, {"error": "internal simulator error"})
                except OSError:
                    self.close_connection = True
        if streamed and not self._body_done:
            # The body was not (fully) read: the connection cannot carry another request.
            self.close_connection = True
        sim.sink.gin(datetime.now(), self._status or 500, time.monotonic() - started,
                     _client_ip(self), self.command, logged_path)

    def _wait_out_hang(self, sim: Simulator) -> None:
        """``hang``: the connection is accepted and the request read, but nothing answers."""
        with sim.faults.changed:
            while sim.faults.current.name == "hang" and not sim.stopping.is_set():
                sim.faults.changed.wait(0.5)

    def _route(self, sim: Simulator, path: str, body: bytes) -> None:
        methods = route_methods(path)
        if methods is None and path.endswith("/") and route_methods(path.rstrip("/") or "/"):
            # gin's RedirectTrailingSlash: 301 for GET, 307 otherwise.
            target = path.rstrip("/") or "/"
            code = 301 if self.command == "GET" else 307
            page = f'<a href="{target}">Moved Permanently</a>.\n\n'.encode()
            self._send(code, page if code == 301 else b"", "text/html; charset=utf-8",
                       (("Location", target),))
            return
        if self.command == "OPTIONS" and methods is not None:
            self._send(204, b"", None)  # CORS preflight from an allowed origin
            return
        if methods is None:
            self._send(404, b"404 page not found", "text/plain")
            return
        if self.command not in methods:
            self._send(405, b"405 method not allowed", "text/plain")
            return
        if sim.settings.loopback_only and not _host_allowed(self.headers.get("Host")):
            self._send(403, b"", None)
            return
        fault = sim.faults.current
        if path.startswith("/api/"):
            if fault.name == "error500":
                self._send_error_json(ApiError(500, self._error500_text(sim, path)))
                return
            if fault.name == "malformed":
                self._send(200, _MALFORMED_BODY, "application/json; charset=utf-8")
                return
        if fault.name == "busy" and path in SCHEDULED_ROUTES:
            self._send_error_json(ApiError(503, MSG_BUSY))
            return
        try:
            self._dispatch(sim, path, body)
        except ApiError as error:
            self._send_error_json(error)

    @staticmethod
    def _error500_text(sim: Simulator, path: str) -> str:
        if path in SCHEDULED_ROUTES:
            what = "llama-server" if sim.settings.era == ERA_LLAMA_SERVER else "llama runner"
            return f"{what} process has terminated: exit status 2"
        return "model list cache unavailable"

    def _dispatch(self, sim: Simulator, path: str, body: bytes) -> None:
        if path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
        elif path == "/api/version":
            self._send_json(200, {"version": sim.settings.version})
        elif path == "/api/status" and sim.settings.version_tuple >= (0, 16, 2):
            self._send_json(200, {"cloud": {"disabled": False, "source": "none"}})
        elif path == "/api/tags":
            self._tags(sim)
        elif path == "/api/ps":
            self._ps(sim)
        elif path == "/api/show":
            self._show(sim, self._json_body(body, "ShowRequest"))
        elif path == "/api/generate":
            self._generate(sim, self._json_body(body, "GenerateRequest"), chat=False)
        elif path == "/api/chat":
            self._generate(sim, self._json_body(body, "ChatRequest"), chat=True)
        elif path == "/api/embed":
            self._embed(sim, self._json_body(body, "EmbedRequest"), legacy=False)
        elif path == "/api/embeddings":
            self._embed(sim, self._json_body(body, "EmbeddingRequest"), legacy=True)
        elif path == "/api/delete":
            self._delete(sim, self._json_body(body, "DeleteRequest"))
        elif path == "/api/pull":
            self._pull(self._json_body(body, "PullRequest"))
        elif path.startswith(_BLOBS_PREFIX):
            self._blob(sim, path[len(_BLOBS_PREFIX):])
        elif path == "/api/create":
            self._create(sim, self._json_body(body, "CreateRequest"))
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [
                {"id": m.name, "object": "model", "created": int(m.modified_at),
                 "owned_by": "library"} for m in sim.models()]})
        else:
            raise ApiError(501, f"{path} is not implemented by the ollama-watchdog simulator")

    # -- request decoding --------------------------------------------------------------------

    @staticmethod
    def _json_body(body: bytes, type_name: str) -> dict[str, Any]:
        if not body.strip():
            raise ApiError(400, "missing request body")
        try:
            value = json.loads(body)
        except json.JSONDecodeError as error:
            raise ApiError(400, json_syntax_error(body, error)) from None
        except UnicodeDecodeError:
            raise ApiError(400, "invalid character looking for beginning of value") from None
        if not isinstance(value, dict):
            raise ApiError(400, f"json: cannot unmarshal {json_kind(value)} into Go value of"
                                f" type api.{type_name}")
        for key, want, go_type in (("model", str, "string"), ("prompt", str, "string"),
                                   ("messages", list, "[]api.Message"), ("stream", bool, "bool")):
            if key in value and value[key] is not None and not isinstance(value[key], want):
                raise ApiError(400, f"json: cannot unmarshal {json_kind(value[key])} into Go"
                                    f" struct field {type_name}.{key} of type {go_type}")
        return value

    @staticmethod
    def _model_name(req: dict[str, Any]) -> str:
        return str(req.get("model") or req.get("name") or "")

    def _keep_alive(self, sim: Simulator, req: dict[str, Any]) -> float:
        try:
            return parse_keep_alive(req.get("keep_alive"), sim.settings.keep_alive)
        except KeepAliveError as error:
            raise ApiError(400, str(error)) from None

    @staticmethod
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

    # -- handlers ----------------------------------------------------------------------------

    def _tags(self, sim: Simulator) -> None:
        with_caps = sim.settings.version_tuple >= (0, 30)
        models = []
        for m in sim.models():
            entry: dict[str, object] = {
                "name": m.name, "model": m.name, "modified_at": _local_rfc3339(m.modified_at),
                "size": m.size, "digest": m.digest, "details": _details(m),
            }
            if with_caps:
                entry["capabilities"] = list(m.capabilities)
            models.append(entry)
        self._send_json(200, {"models": models})

    def _ps(self, sim: Simulator) -> None:
        with_ctx = sim.settings.version_tuple >= (0, 12)
        models = []
        for e in sim.scheduler.loaded():
            entry: dict[str, object] = {
                "name": e.model.name, "model": e.model.name, "size": e.model.memory_bytes,
                "digest": e.model.digest, "details": _details(e.model),
                "expires_at": _expires_text(e), "size_vram": 0,
            }
            if with_ctx:
                entry["context_length"] = e.context_length
            models.append(entry)
        self._send_json(200, {"models": models})

    def _show(self, sim: Simulator, req: dict[str, Any]) -> None:
        name = self._model_name(req)
        if not name:
            raise ApiError(400, "model is required")
        model = sim.find(name)
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        arch = model.family.replace("-", "")
        self._send_json(200, {
            "modelfile": (f"# Modelfile generated by \"ollama show\"\n# To build a new Modelfile"
                          f" based on this, replace FROM with:\n# FROM {model.name}\n\n"
                          f"FROM {model.blob_path}\nPARAMETER stop <|eot_id|>\n"),
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}",
            "details": _details(model),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": model.memory_bytes // 2,
                f"{arch}.context_length": model.context_length,
                f"{arch}.embedding_length": model.embedding_length,
            },
            "capabilities": list(model.capabilities),
            "modified_at": _local_rfc3339(model.modified_at),
        })

    def _find_for_run(self, sim: Simulator, req: dict[str, Any], *, chat: bool) -> Model:
        name = self._model_name(req)
        if not name and chat:
            raise ApiError(400, "model is required")
        model = sim.find(name) if name else None
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        return model

    def _acquire(self, sim: Simulator, model: Model, options: dict[str, Any],
                 *, chat: bool) -> LoadedModel:
        num_ctx = options.get("num_ctx")
        try:
            entry = sim.scheduler.acquire(model, int(num_ctx) if num_ctx else None,
                                          oom=sim.faults.current.name == "oom")
        except LoadError as error:
            raise ApiError(500, error.message) from None
        except RunnerStoppedError as stopped:
            self._log_runner_stopped(sim, stopped.port, chat=chat)
            raise ApiError(500, MSG_RUNNER_STOPPED) from None
        if sim.faults.current.name == "runner_crash":
            sim.scheduler.crash_runner(entry)
            sim.scheduler.forget(entry)
            self._log_runner_stopped(sim, entry.runner.port, chat=chat)
            raise ApiError(500, MSG_RUNNER_STOPPED)
        return entry

    @staticmethod
    def _log_runner_stopped(sim: Simulator, port: int, *, chat: bool) -> None:
        era = sim.settings.era
        error = f'Post "http://127.0.0.1:{port}/completion": EOF'
        if era == ERA_LLAMA_SERVER:
            msg = "llama-server chat error" if chat else "llama-server completion error"
        else:
            msg = "post predict"
        sim.sink.slog("ERROR", _SRC_COMPLETION_ERROR[era], msg, ("error", error))

    def _generate(self, sim: Simulator, req: dict[str, Any], *, chat: bool) -> None:
        started = time.monotonic_ns()
        model = self._find_for_run(sim, req, chat=chat)
        keep_alive = self._keep_alive(sim, req)
        options = self._options(sim, req)
        if model.is_embedding:
            raise ApiError(400, f"{go_quote(self._model_name(req))} does not support"
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
        entry = self._acquire(sim, model, options, chat=chat)
        # /api/ps shows this request's expiry while it runs, not "forever": a client that
        # reads /api/ps right after the final chunk must not race the release below
        sim.scheduler.touch(entry, keep_alive)
        loaded_ns = time.monotonic_ns()
        head: dict[str, object] = {"model": self._model_name(req)}
        if load_only:
            sim.scheduler.release(entry, keep_alive)
            done: dict[str, object] = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
            reason = "unload" if keep_alive == 0 else "load"
            if chat:
                done.update(message={"role": "assistant", "content": ""}, done_reason=reason,
                            done=True)
            else:
                done.update(response="", done=True, done_reason=reason)
            self._answer_single(done, stream)
            return
        try:
            self._run_completion(sim, entry, head, prompt_text, options, stream, chat=chat,
                                 started=started, loaded_ns=loaded_ns)
        finally:
            sim.scheduler.release(entry, keep_alive)

    def _answer_single(self, value: dict[str, object], stream: bool) -> None:
        if stream:
            self._stream_start()
            self._stream_write(value)
            self._stream_end()
        else:
            self._send_json(200, value)

    def _run_completion(self, sim: Simulator, entry: LoadedModel, head: dict[str, object],
                        prompt_text: str, options: dict[str, Any], stream: bool, *,
                        chat: bool, started: int, loaded_ns: int) -> None:
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
            self._stream_start()
        eval_start = time.monotonic_ns()
        pieces: list[str] = []
        try:
            for index in range(count):
                if settings.token_delay:
                    time.sleep(settings.token_delay)
                piece = _FILLER[index % len(_FILLER)]
                pieces.append(piece)
                if stream:
                    self._stream_write(self._chunk(head, piece, chat=chat))
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
            self._stream_write(final)
            self._stream_end()
        else:
            self._send_json(200, final)

    @staticmethod
    def _chunk(head: dict[str, object], piece: str, *, chat: bool) -> dict[str, object]:
        chunk = dict(head, created_at=utc_now_rfc3339_nano(time.time_ns()))
        if chat:
            chunk.update(message={"role": "assistant", "content": piece}, done=False)
        else:
            chunk.update(response=piece, done=False)
        return chunk

    def _embed(self, sim: Simulator, req: dict[str, Any], *, legacy: bool) -> None:
        started = time.monotonic_ns()
        name = self._model_name(req)
        if legacy and not name:
            raise ApiError(400, "model is required")
        model = sim.find(name) if name else None
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        keep_alive = self._keep_alive(sim, req)
        options = self._options(sim, req)
        raw_input = req.get("prompt" if legacy else "input")
        if raw_input is None or isinstance(raw_input, str):
            texts = [raw_input] if raw_input else []
        elif isinstance(raw_input, list) and all(isinstance(t, str) for t in raw_input):
            texts = [t for t in raw_input if isinstance(t, str)]
        else:
            raise ApiError(400, "invalid input type")
        entry = self._acquire(sim, model, options, chat=False)
        sim.scheduler.touch(entry, keep_alive)
        loaded_ns = time.monotonic_ns()
        try:
            vectors = [embedding_vector(model.name, text, model.embedding_length)
                       for text in texts]
        finally:
            sim.scheduler.release(entry, keep_alive)
        if legacy:
            self._send_json(200, {"embedding": vectors[0] if vectors else []})
            return
        extra = {
            "total_duration": time.monotonic_ns() - started if texts else 0,
            "load_duration": loaded_ns - started if texts else 0,
            "prompt_eval_count": sum(max(1, len(t.encode()) // 4) for t in texts),
        }
        self._send(200, embeddings_json(name, vectors, extra), "application/json; charset=utf-8")

    def _delete(self, sim: Simulator, req: dict[str, Any]) -> None:
        name = self._model_name(req)
        model = sim.find(name)
        if model is None:
            raise ApiError(404, f"model '{name}' not found")
        for entry in sim.scheduler.loaded():
            if entry.model.name == model.name:
                sim.scheduler.unload(entry)
        sim.delete(name)
        self._send(200, b"", None)

    def _blob(self, sim: Simulator, digest: str) -> None:
        """HEAD: does the blob exist (404 names it); POST: store the body under its digest."""
        try:
            path = blob_path(sim.models_dir, digest)
            if self.command == "HEAD":
                if not path.is_file():
                    raise ApiError(404, f"blob {go_quote(digest)} not found")
                self._send(200, b"", None)
                return
            status = receive_blob(sim.models_dir, digest, self._consumed(self._body_chunks()))
        except CreateError as error:
            raise ApiError(error.status, error.message) from None
        self._send(status, b"", None)

    def _consumed(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        yield from chunks
        self._body_done = True

    def _create(self, sim: Simulator, req: dict[str, Any]) -> None:
        """``POST /api/create``: validation errors before the stream keep their status."""
        try:
            plan = prepare_create(req, sim.models_dir)
        except CreateError as error:
            raise ApiError(error.status, error.message) from None
        stream = req.get("stream") is not False
        if stream:
            self._stream_start()

        def progress(status: str) -> None:
            if stream:
                self._stream_write({"status": status})

        try:
            path = run_create(plan, sim.models_dir,
                              era_go_runner=sim.settings.era != ERA_LLAMA_SERVER,
                              progress=progress)
        except CreateError as error:
            if not stream:
                raise ApiError(error.status, error.message) from None
            # Mid-stream the 200 has gone out: the error is the last line.
            self._stream_write({"error": error.message})
            self._stream_end()
            return
        model = read_model(sim.models_dir, path)
        if model is not None:
            sim.put(model)
        if stream:
            self._stream_write({"status": "success"})
            self._stream_end()
        else:
            self._send_json(200, {"status": "success"})

    def _pull(self, req: dict[str, Any]) -> None:
        """Offline, as on the machines we watch: the manifest fetch fails (FACTS.md §1.2)."""
        name = normalize_name(self._model_name(req))
        base, _, tag = name.rpartition(":")
        repo = base if "/" in base else f"library/{base}"
        error = (f'pull model manifest: Get "https://registry.ollama.ai/v2/{repo}/manifests/'
                 f'{tag}": dial tcp: lookup registry.ollama.ai: no such host')
        if req.get("stream") is False:
            raise ApiError(500, error)
        self._stream_start()
        self._stream_write({"status": "pulling manifest"})
        self._stream_write({"error": error})
        self._stream_end()


class ApiServer(ThreadingHTTPServer):
    """The API listener; request threads are daemons so a hung request never blocks exit."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator, family: int) -> None:
        self.address_family = family
        self.sim = sim
        super().__init__(address, ApiHandler)
