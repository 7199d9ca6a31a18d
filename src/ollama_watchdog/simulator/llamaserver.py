"""Talking to a real llama.cpp ``llama-server`` runner, the way Ollama v0.30+ does.

With ``--llama-server PATH`` the simulator starts the real program per loaded model (FACTS.md §8)
and only Ollama's Go front stays simulated. This module is that front's side of the runner
protocol: wait for ``/health``, send ``/completion`` (generate) and ``/v1/chat/completions``
(chat), streamed as server-sent events, and turn llama-server's ``timings`` object into
Ollama's response fields (FACTS.md §2.7):

* ``prompt_eval_count = cache_n + prompt_n`` (llama-server's prompt count excludes cache hits);
* ``eval_count = predicted_n``; durations are its milliseconds in nanoseconds.

The runner's own stdout and stderr reach the simulator's stderr verbatim (Ollama forwards them
without a prefix, llm/status.go); :class:`OutputPump` does that and keeps the "last error" line
the way Ollama's status writer picks it, for the ``error loading llama server`` message.

Standard library only. Every connection has a timeout; a runner that stops answering (SIGSTOP)
holds a request until ``read_timeout``, as a wedged runner holds Ollama's.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

from ollama_watchdog.simulator.logsink import LogSink

#: Lines Ollama's status writer takes as the runner's "last error" (llm/status.go, FACTS §2.5).
ERROR_MARKERS: Final = (
    "panic:", "fatal error:", "error:", "Error:", "CUDA error", "ROCm error", "cudaMalloc failed",
    '"ERR"', "error loading model", "GGML_ASSERT", "signal arrived during cgo execution",
    "llama_init_from_model:", "mlx:", "MLX:",
)

#: how long a request waits for the runner's next bytes; a wedged runner meets it
READ_TIMEOUT: Final = 600.0
_CONNECT_TIMEOUT: Final = 5.0
#: a line of runner output longer than this is cut (the log stays line-shaped)
_MAX_LINE: Final = 64 * 1024


class RunnerGone(Exception):
    """The runner closed the connection or died mid-request (Ollama's ``EOF``)."""


class OutputPump:
    """Forwards a runner's merged stdout+stderr to the log, line by line, verbatim."""

    def __init__(self, stream: IO[bytes], sink: LogSink, name: str) -> None:
        self._stream = stream
        self._sink = sink
        self._lock = threading.Lock()
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._last_error

    def _run(self) -> None:
        try:
            while True:
                raw = self._stream.readline(_MAX_LINE)
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._sink.raw(line + "\n")
                if any(marker in line for marker in ERROR_MARKERS):
                    with self._lock:
                        self._last_error = line.strip()
        except (OSError, ValueError):
            return

    def join(self, timeout: float) -> None:
        """Wait until the runner's output is all forwarded (its pipe closed)."""
        self._thread.join(timeout)


def health(port: int, timeout: float = 2.0) -> int | None:
    """``GET /health``'s status (200 ready, 503 loading), or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_healthy(port: int, alive: Callable[[], bool], timeout: float) -> bool:
    """True once ``/health`` says 200; False when the runner exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        if health(port) == 200:
            return True
        time.sleep(0.05)
    return False


@dataclass(frozen=True)
class Completion:
    """What one finished completion returned: llama-server's figures and Ollama's from them."""

    text: str
    done_reason: str  # "stop" | "length"
    cache_n: int  # prompt tokens served from the prompt cache
    prompt_n: int  # prompt tokens evaluated (the log's "prompt eval ... tokens")
    prompt_ms: float
    predicted_n: int  # tokens generated (the log's "eval ... tokens")
    predicted_ms: float

    @property
    def prompt_eval_count(self) -> int:
        return self.cache_n + self.prompt_n

    @property
    def prompt_eval_duration(self) -> int:
        return int(self.prompt_ms * 1e6)

    @property
    def eval_count(self) -> int:
        return self.predicted_n

    @property
    def eval_duration(self) -> int:
        return int(self.predicted_ms * 1e6)


def completion_from_timings(text: str, timings: dict[str, Any], done_reason: str) -> Completion:
    """Ollama's counters from llama-server's ``timings`` (FACTS.md §2.7)."""

    def number(key: str) -> float:
        value = timings.get(key, 0)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and value >= 0 else 0.0

    return Completion(
        text=text,
        done_reason=done_reason,
        cache_n=int(number("cache_n")),
        prompt_n=int(number("prompt_n")),
        prompt_ms=number("prompt_ms"),
        predicted_n=int(number("predicted_n")),
        predicted_ms=number("predicted_ms"),
    )


def _done_reason(stop_type: object, finish_reason: object) -> str:
    if stop_type == "limit" or finish_reason == "length":
        return "length"
    return "stop"


class RunnerClient:
    """One request to a llama-server on 127.0.0.1:``port``."""

    def __init__(self, port: int, read_timeout: float = READ_TIMEOUT) -> None:
        self.port = port
        self._read_timeout = read_timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        """Drop the connection: llama-server cancels the task (no timing block is written)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _post(self, path: str, body: dict[str, Any]) -> http.client.HTTPResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_CONNECT_TIMEOUT)
        self._conn = conn
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(self._read_timeout)
            conn.request("POST", path, json.dumps(body).encode(),
                         {"Content-Type": "application/json"})
            return conn.getresponse()
        except (OSError, http.client.HTTPException) as error:
            raise RunnerGone(_why(error)) from None

    def _events(self, response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        """The JSON objects of a server-sent event stream (``data: {...}`` lines)."""
        try:
            while True:
                line = response.readline(_MAX_LINE)
                if not line:
                    raise RunnerGone("EOF")
                text = line.strip()
                if not text.startswith(b"data:"):
                    continue
                payload = text[5:].strip()
                if payload == b"[DONE]":
                    return
                event = json.loads(payload)
                if isinstance(event, dict):
                    yield event
                    if event.get("stop") is True:
                        return
        except (OSError, http.client.HTTPException) as error:
            raise RunnerGone(_why(error)) from None
        except ValueError as error:
            raise RunnerGone(f"bad event from llama-server: {error}") from None

    def _json(self, response: http.client.HTTPResponse) -> dict[str, Any]:
        try:
            value = json.loads(response.read())
        except (OSError, http.client.HTTPException) as error:
            raise RunnerGone(_why(error)) from None
        except ValueError as error:
            raise RunnerGone(f"bad answer from llama-server: {error}") from None
        if response.status != 200 or not isinstance(value, dict):
            message = value.get("error") if isinstance(value, dict) else None
            if isinstance(message, dict):
                message = message.get("message")
            raise RunnerGone(f"llama-server answered {response.status}: {message}")
        return value

    def complete(self, body: dict[str, Any], on_piece: Callable[[str], None] | None
                 ) -> Completion:
        """``POST /completion``; streamed when ``on_piece`` is given (called per piece)."""
        request = dict(body, stream=on_piece is not None, cache_prompt=True)
        response = self._post("/completion", request)
        if on_piece is None:
            value = self._json(response)
            return completion_from_timings(str(value.get("content", "")),
                                           _dict(value.get("timings")),
                                           _done_reason(value.get("stop_type"), None))
        if response.status != 200:
            self._json(response)  # raises with llama-server's message
        pieces: list[str] = []
        for event in self._events(response):
            piece = event.get("content")
            if isinstance(piece, str) and piece:
                pieces.append(piece)
                on_piece(piece)
            if event.get("stop") is True:
                return completion_from_timings("".join(pieces), _dict(event.get("timings")),
                                               _done_reason(event.get("stop_type"), None))
        raise RunnerGone("EOF")

    def chat(self, body: dict[str, Any], on_piece: Callable[[str], None] | None) -> Completion:
        """``POST /v1/chat/completions``; streamed when ``on_piece`` is given."""
        request = dict(body, stream=on_piece is not None, cache_prompt=True)
        response = self._post("/v1/chat/completions", request)
        if on_piece is None:
            value = self._json(response)
            choice = _first_choice(value)
            message = _dict(choice.get("message"))
            return completion_from_timings(str(message.get("content") or ""),
                                           _dict(value.get("timings")),
                                           _done_reason(None, choice.get("finish_reason")))
        if response.status != 200:
            self._json(response)
        pieces: list[str] = []
        finish: object = None
        timings: dict[str, Any] = {}
        for event in self._events(response):
            choice = _first_choice(event)
            piece = _dict(choice.get("delta")).get("content")
            if isinstance(piece, str) and piece:
                pieces.append(piece)
                on_piece(piece)
            if choice.get("finish_reason"):
                finish = choice.get("finish_reason")
            if isinstance(event.get("timings"), dict):
                timings = event["timings"]
        if finish is None:
            raise RunnerGone("EOF")
        return completion_from_timings("".join(pieces), timings, _done_reason(None, finish))


def _why(error: BaseException) -> str:
    """Go's words for a broken exchange: ``EOF`` for a closed connection."""
    if isinstance(error, TimeoutError):
        return "timeout awaiting response headers"
    if isinstance(error, ConnectionError | http.client.RemoteDisconnected | EOFError):
        return "EOF"
    return str(error) or "EOF"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _first_choice(value: dict[str, Any]) -> dict[str, Any]:
    choices = value.get("choices")
    return _dict(choices[0]) if isinstance(choices, list) and choices else {}


__all__ = [
    "ERROR_MARKERS",
    "READ_TIMEOUT",
    "Completion",
    "OutputPump",
    "RunnerClient",
    "RunnerGone",
    "completion_from_timings",
    "health",
    "wait_healthy",
]
