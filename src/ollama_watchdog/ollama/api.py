"""Typed client for Ollama's HTTP API (FACTS.md §1).

Each call is one honest measurement: explicit connect/read timeouts, no retries, and every failure
classified at this boundary into ``ProbeError.reason``:

- ``timeout``      — no connection or no answer within the timeout (a hung Ollama accepts the TCP
                     connection and never answers: that is a read timeout);
- ``refused``      — nothing listens, the connection was reset, or the name does not resolve;
- ``http_error``   — an HTTP status outside 2xx;
- ``bad_response`` — a 2xx whose body is not the JSON this endpoint returns;
- ``local_error``  — the watchdog itself ran out of something (descriptors, memory, buffers,
                     local ports) before Ollama could answer: evidence about this process, not
                     about Ollama, so the healing policy never counts it.
"""

from __future__ import annotations

import errno
import http.client
import io
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

from ollama_watchdog.oneline import one_line, valid_text

ProbeReason = Literal["timeout", "refused", "http_error", "bad_response", "local_error"]
PROBE_REASONS: Final[tuple[ProbeReason, ...]] = (
    "timeout",
    "refused",
    "http_error",
    "bad_response",
    "local_error",
)
#: errors of the watchdog's own resources: too many open files (per process, per system), no
#: memory, no socket buffers, no free local port
LOCAL_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EADDRNOTAVAIL}
)

#: per endpoint: the most bytes of body read, and the most JSON objects and lists in it. What
#: Ollama sends is far below: /api/version ~30 bytes; an /api/tags or /api/ps entry ~450 bytes
#: and 4 containers, so 8 MiB holds ~18 000 models in the store and 4 MiB ~9 000 loaded ones
#: (OLLAMA_MAX_LOADED_MODELS is 3 per GPU by default). The container cap keeps a hostile body
#: small once parsed: 8 MiB of "{}," would be 400 MB of dicts.
_LIMITS: Final[Mapping[str, tuple[int, int]]] = {
    "/api/version": (64 * 1024, 64),
    "/api/tags": (8 * 1024 * 1024, 100_000),
    "/api/ps": (4 * 1024 * 1024, 50_000),
    # a model's card: template, parameters, license text (tens of KB) and model_info's keys
    "/api/show": (4 * 1024 * 1024, 10_000),
}
#: a probe's generation is a few tokens: one streamed line ~300 bytes, the whole stream a few KB
_GENERATE_BODY: Final = 1024 * 1024
_GENERATE_LINE: Final = 64 * 1024
_GENERATE_CONTAINERS: Final = 256
#: the most of an error body read for its message
_ERROR_BODY: Final = 4096
_READ_CHUNK: Final = 64 * 1024
#: an error detail from Ollama (a body, an exception text) is cut to this many characters
_DETAIL_LIMIT: Final = 160
#: a string field from Ollama (a model name, a digest) is cut to this many characters
_FIELD_LIMIT: Final = 256
#: sizes, counts and durations are Go int64s, never negative
_INT_MAX: Final = 2**63 - 1


T = TypeVar("T")


def local_error(exc: OSError) -> ProbeError:
    """A ``local_error`` naming the resource that ran out."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    return ProbeError("local_error", f"watchdog out of resources: {name} ({exc.strerror})")


class ProbeError(Exception):
    """A failed call, classified. ``detail`` is short and never contains model output."""

    def __init__(self, reason: ProbeReason, detail: str, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: ProbeReason = reason
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class ProbeResult:
    """One probe's honest measurement: did it work, how long it took, why not."""

    probe: str
    ok: bool
    duration: float
    reason: ProbeReason | None = None  # when not ok
    error: str | None = None  # short, human, never model output


def timed_probe(
    probe: str, call: Callable[[], T], clock: Callable[[], float] = time.monotonic
) -> tuple[ProbeResult, T | None]:
    """Run one client call and measure it; a ProbeError becomes a failed outcome."""
    start = clock()
    try:
        value = call()
    except ProbeError as exc:
        return ProbeResult(probe, False, clock() - start, exc.reason, exc.detail), None
    except (RecursionError, OverflowError, UnicodeError) as exc:
        # a value the boundary did not bound: still a malformed answer, never a lost probe
        detail = f"unusable answer ({type(exc).__name__})"
        return ProbeResult(probe, False, clock() - start, "bad_response", detail), None
    return ProbeResult(probe, True, clock() - start), value


@dataclass(frozen=True)
class ModelInfo:
    """One entry of /api/tags."""

    name: str
    size: int
    digest: str
    modified_at: str
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...] = ()  # 0.30+; empty before


@dataclass(frozen=True)
class LoadedModel:
    """One entry of /api/ps."""

    name: str
    size: int
    size_vram: int
    digest: str
    expires_at: float | None  # unix seconds; None when absent or unparseable
    context_length: int | None


@dataclass(frozen=True)
class GenerateResult:
    """The measured outcome of one /api/generate (streamed)."""

    ttft_seconds: float | None  # time to the first chunk carrying response text
    wall_seconds: float
    done_reason: str
    total_duration_s: float
    load_duration_s: float
    prompt_eval_count: int
    prompt_eval_duration_s: float
    eval_count: int
    eval_duration_s: float

    @property
    def tokens_per_second(self) -> float | None:
        if self.eval_count <= 0 or self.eval_duration_s <= 0:
            return None
        return self.eval_count / self.eval_duration_s


def parse_go_time(text: str) -> float | None:
    """RFC3339Nano from Go (up to 9 fractional digits, ``Z`` or offset) -> unix seconds."""
    if not text:
        return None
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    main, sep, rest = s.partition(".")
    if sep:
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        s = f"{main}.{(digits + '000000')[:6]}{rest[i:]}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProbeError("bad_response", f"{what} is not a JSON object")
    return value


def _str(d: Mapping[str, Any], key: str, what: str, required: bool = True) -> str:
    v = d.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise ProbeError("bad_response", f"{what}: field {key!r} missing or not a string")
    return valid_text(v, _FIELD_LIMIT)


def _int(d: Mapping[str, Any], key: str, what: str, required: bool = True) -> int:
    v = d.get(key)
    if v is None and not required:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProbeError("bad_response", f"{what}: field {key!r} missing or not an integer")
    if not 0 <= v <= _INT_MAX:
        # 10**400 would raise OverflowError as a float; a negative size is no size
        raise ProbeError("bad_response", f"{what}: field {key!r} out of range")
    return v


def _opt_str(value: Any) -> str:
    """A descriptive field: kept when it is a string, else empty."""
    return valid_text(value, _FIELD_LIMIT) if isinstance(value, str) else ""


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(valid_text(x, _FIELD_LIMIT) for x in value[:64] if isinstance(x, str))


def _models_list(body: Any, what: str) -> list[dict[str, Any]]:
    obj = _obj(body, what)
    models = obj.get("models")
    if models is None:
        # Go marshals a nil slice as null; Ollama sends [] today, but be lenient on null only
        if "models" in obj:
            return []
        raise ProbeError("bad_response", f"{what}: no 'models' list")
    if not isinstance(models, list):
        raise ProbeError("bad_response", f"{what}: 'models' is not a list")
    return [_obj(m, f"{what} entry") for m in models]


class _Deadline:
    """The one deadline of an exchange (monotonic seconds) and what it was set from."""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.at = time.monotonic() + budget

    def left(self) -> float:
        """Seconds left; raises TimeoutError once none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"not done within {self.budget:g}s")
        return left


class _DeadlineSocket:
    """What ``http.client`` needs of a socket; every send and receive waits only for what is
    left of the deadline, so a server trickling a byte at a time is cut off when it passes
    (a per-read timeout would be renewed by every byte)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)  # the timeout bounds the whole sendall (Python >= 3.5)

    def recv_into(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_SocketReader(self))

    def close(self) -> None:
        # http.client closes its socket as soon as a "Connection: close" answer's head is read,
        # while the body is still to come (a real socket stays open for its makefile); the
        # exchange closes the real one when it is done
        return


class _SocketReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


class _Connection(http.client.HTTPConnection):
    """``http.client`` over a :class:`_DeadlineSocket`, TLS included for ``https://``."""

    def __init__(
        self,
        host: str,
        port: int,
        deadline: _Deadline,
        connect_timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(host, port, timeout=connect_timeout)
        self._deadline = deadline
        self._connect_timeout = connect_timeout
        self._tls = tls
        self.connected = False
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        raw = socket.create_connection(
            (self.host, self.port), timeout=min(self._connect_timeout, self._deadline.left())
        )
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                raw.settimeout(self._deadline.left())
                raw = self._tls.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        self.connected = True
        self.raw = raw
        # http.client only sends, makes files of and closes its socket
        self.sock = _DeadlineSocket(raw, self._deadline)

    def release(self) -> None:
        """Close the real socket (``close`` is called by http.client before the body is read)."""
        self.close()
        if self.raw is not None:
            self.raw.close()
            self.raw = None


class OllamaClient:
    """One client per collector; not shared between threads that run concurrently.

    Every call is one exchange on a fresh connection under one deadline (``timeout``, or the
    generation's own): connecting, sending, the status line, the headers and the body together.
    Bodies are read in pieces and refused as soon as they pass the endpoint's cap, so neither a
    trickling nor an endless answer can hold the probe or grow the daemon.
    """

    def __init__(self, base_url: str, timeout: float, connect_timeout: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Connecting to a local server is instant or refused; cap it below the read timeout.
        self.connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 3.0)
        parts = urlsplit(self.base_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._prefix = parts.path.rstrip("/")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        # no environment proxy: loopback probes go straight to Ollama

    def close(self) -> None:
        """Nothing is kept between calls (each closes its own connection)."""

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Iterator[tuple[http.client.HTTPResponse, _Deadline]]:
        """Send one request and yield its 2xx response; everything under one deadline."""
        budget = self.timeout if timeout is None else timeout
        deadline = _Deadline(budget)
        conn = _Connection(
            self._host, self._port, deadline, min(self.connect_timeout, budget), self._tls
        )
        answered = False
        resp: http.client.HTTPResponse | None = None
        try:
            body = json.dumps(json_body).encode() if json_body is not None else None
            headers = {"User-Agent": "ollama-watchdog", "Connection": "close"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, self._prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            answered = True
            if not 200 <= resp.status < 300:
                detail = _error_detail(resp)
                raise ProbeError("http_error", f"HTTP {resp.status}{detail}", resp.status)
            yield resp, deadline
        except ProbeError as exc:
            # a failure after the answer began keeps the status the server sent (and logs)
            if exc.status is None and resp is not None:
                exc.status = resp.status
            raise
        except Exception as exc:  # classified here, at the boundary, or re-raised as it was
            error = _classify(exc, budget, conn.connected, answered)
            if error.status is None and resp is not None:
                error.status = resp.status
            raise error from None
        finally:
            if resp is not None:
                resp.close()
            conn.release()

    def _get_json(self, path: str) -> Any:
        cap, containers = _LIMITS[path]
        with self._exchange("GET", path) as (resp, _):
            raw = _read_capped(resp, cap, path)
        return _loads(raw, path, containers)

    # -- endpoints ------------------------------------------------------------------------------

    def version(self) -> str:
        obj = _obj(self._get_json("/api/version"), "/api/version")
        version = _str(obj, "version", "/api/version")
        if not version or len(version) > 64 or not version.isprintable():
            raise ProbeError("bad_response", "/api/version: implausible version string")
        return version

    def tags(self) -> list[ModelInfo]:
        out: list[ModelInfo] = []
        for m in _models_list(self._get_json("/api/tags"), "/api/tags"):
            details = m.get("details") if isinstance(m.get("details"), dict) else {}
            assert isinstance(details, dict)
            out.append(
                ModelInfo(
                    name=_str(m, "name", "/api/tags"),
                    size=_int(m, "size", "/api/tags"),
                    digest=_str(m, "digest", "/api/tags", required=False),
                    modified_at=_str(m, "modified_at", "/api/tags", required=False),
                    family=_opt_str(details.get("family")),
                    parameter_size=_opt_str(details.get("parameter_size")),
                    quantization_level=_opt_str(details.get("quantization_level")),
                    capabilities=_str_tuple(m.get("capabilities")),
                )
            )
        return out

    def ps(self) -> list[LoadedModel]:
        out: list[LoadedModel] = []
        for m in _models_list(self._get_json("/api/ps"), "/api/ps"):
            ctx = m.get("context_length")
            ctx_ok = isinstance(ctx, int) and not isinstance(ctx, bool) and 0 <= ctx <= _INT_MAX
            out.append(
                LoadedModel(
                    name=_str(m, "name", "/api/ps"),
                    size=_int(m, "size", "/api/ps"),
                    size_vram=_int(m, "size_vram", "/api/ps", required=False),
                    digest=_str(m, "digest", "/api/ps", required=False),
                    expires_at=parse_go_time(_str(m, "expires_at", "/api/ps", required=False)),
                    context_length=ctx if ctx_ok else None,
                )
            )
        return out

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        num_predict: int = 8,
        keep_alive: str = "30s",
        timeout: float | None = None,
    ) -> GenerateResult:
        """Stream one generation; ``timeout`` bounds the whole call, not just each read."""
        budget = self.timeout if timeout is None else timeout
        start = time.monotonic()
        body = {
            "model": model,
            "prompt": prompt,
            "stream": True,
            "keep_alive": keep_alive,
            "options": {"num_predict": num_predict, "temperature": 0},
        }
        ttft: float | None = None
        final: dict[str, Any] | None = None
        with self._exchange("POST", "/api/generate", json_body=body, timeout=budget) as (resp, _):
            for line in _iter_lines(resp, "/api/generate"):
                chunk = _obj(_loads(line, "/api/generate chunk", _GENERATE_CONTAINERS), "chunk")
                if "error" in chunk:
                    # a mid-stream error arrives as 200 + {"error": ...}; its text is Ollama's own
                    detail = one_line(valid_text(str(chunk["error"]), 1024), _DETAIL_LIMIT)
                    raise ProbeError("bad_response", "/api/generate: " + detail)
                if ttft is None and chunk.get("response"):
                    ttft = time.monotonic() - start
                if chunk.get("done") is True:
                    final = chunk
                    break
        if final is None:
            raise ProbeError(
                "bad_response", "/api/generate: stream ended without done:true", resp.status
            )
        ns = 1e-9
        return GenerateResult(
            ttft_seconds=ttft,
            wall_seconds=time.monotonic() - start,
            done_reason=str(final.get("done_reason") or ""),
            total_duration_s=_int(final, "total_duration", "generate", required=False) * ns,
            load_duration_s=_int(final, "load_duration", "generate", required=False) * ns,
            prompt_eval_count=_int(final, "prompt_eval_count", "generate", required=False),
            prompt_eval_duration_s=_int(final, "prompt_eval_duration", "generate", required=False)
            * ns,
            eval_count=_int(final, "eval_count", "generate", required=False),
            eval_duration_s=_int(final, "eval_duration", "generate", required=False) * ns,
        )

    def capabilities(self, model: str) -> tuple[str, ...] | None:
        """``/api/show``'s ``capabilities`` of ``model`` (``completion``, ``embedding``, ...);
        None where this Ollama does not report them (before 0.30)."""
        cap, containers = _LIMITS["/api/show"]
        with self._exchange("POST", "/api/show", json_body={"model": model}) as (resp, _):
            raw = _read_capped(resp, cap, "/api/show")
        body = _obj(_loads(raw, "/api/show", containers), "/api/show")
        caps = body.get("capabilities")
        return None if caps is None else _str_tuple(caps)

    def unload(self, model: str, timeout: float | None = None) -> None:
        """Ask Ollama to unload ``model`` now (``keep_alive: 0``, an empty prompt: FACTS.md)."""
        body = {"model": model, "keep_alive": 0, "stream": False}
        with self._exchange("POST", "/api/generate", json_body=body, timeout=timeout) as (resp, _):
            _read_capped(resp, _GENERATE_BODY, "/api/generate")


def _iter_lines(resp: http.client.HTTPResponse, what: str) -> Iterator[bytes]:
    """The non-empty lines of a streamed body, each and all of them bounded."""
    pending = b""
    total = 0
    while True:
        piece = resp.read1(_READ_CHUNK)
        if not piece:
            break
        total += len(piece)
        if total > _GENERATE_BODY:
            raise ProbeError("bad_response", f"{what}: stream longer than {_GENERATE_BODY} bytes")
        pending += piece
        *lines, pending = pending.split(b"\n")
        if len(pending) > _GENERATE_LINE:
            raise ProbeError("bad_response", f"{what}: a line longer than {_GENERATE_LINE} bytes")
        for line in lines:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _read_capped(resp: http.client.HTTPResponse, cap: int, what: str) -> bytes:
    """The whole body, refused as soon as it passes ``cap`` (a declared length at once)."""
    if resp.length is not None and resp.length > cap:
        raise ProbeError("bad_response", f"{what}: body of {resp.length} bytes, over {cap}")
    buf = bytearray()
    while True:
        piece = resp.read1(_READ_CHUNK)
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > cap:
            raise ProbeError("bad_response", f"{what}: body larger than {cap} bytes")


def _loads(raw: bytes, what: str, containers: int) -> Any:
    """JSON as Ollama's Go encoder writes it, or ``bad_response``."""
    if raw.count(b"{") + raw.count(b"[") > containers:
        raise ProbeError("bad_response", f"{what}: more than {containers} JSON objects or lists")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise ProbeError("bad_response", f"{what}: body is not JSON") from None
    except RecursionError:
        raise ProbeError("bad_response", f"{what}: JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    # Python's json reads NaN, Infinity and -Infinity; JSON (and Go's encoder) has none of them
    raise ValueError(f"{name} is not JSON")


def _classify(exc: BaseException, budget: float, connected: bool, answered: bool) -> ProbeError:
    """One failure of an exchange as a :class:`ProbeError` (module docstring)."""
    if isinstance(exc, MemoryError):
        return ProbeError("local_error", "watchdog out of memory reading the answer")
    if isinstance(exc, OSError) and exc.errno in LOCAL_ERRNOS:
        return local_error(exc)
    if isinstance(exc, TimeoutError):
        if not connected:
            return ProbeError("timeout", f"connect timeout after {budget:g}s")
        return ProbeError("timeout", f"timeout after {budget:g}s")
    if isinstance(exc, ConnectionRefusedError):
        return ProbeError("refused", "connection refused")
    if isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
        if answered:
            return ProbeError("bad_response", "body cut off: connection closed")
        return ProbeError("refused", "connection closed without a response")
    if isinstance(exc, socket.gaierror):
        return ProbeError("refused", "cannot connect: " + one_line(str(exc), _DETAIL_LIMIT))
    if isinstance(exc, http.client.IncompleteRead):
        return ProbeError("bad_response", "body cut off before its end")
    if isinstance(exc, http.client.HTTPException):
        name = type(exc).__name__
        return ProbeError("bad_response", f"not an HTTP answer ({name})")
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        return ProbeError("refused", "cannot connect: " + one_line(text, _DETAIL_LIMIT))
    raise exc


def _error_detail(resp: http.client.HTTPResponse) -> str:
    """Ollama's own error message (``{"error": ...}``), bounded; never a model's output."""
    try:
        raw = resp.read1(_ERROR_BODY) if resp.length != 0 else b""
        obj = json.loads(raw)
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return ": " + one_line(valid_text(obj["error"], 1024), _DETAIL_LIMIT)
    except Exception:  # the status code alone is the answer
        return ""
    return ""


__all__ = [
    "LOCAL_ERRNOS",
    "PROBE_REASONS",
    "GenerateResult",
    "LoadedModel",
    "ModelInfo",
    "OllamaClient",
    "ProbeError",
    "ProbeReason",
    "ProbeResult",
    "local_error",
    "parse_go_time",
    "timed_probe",
]
