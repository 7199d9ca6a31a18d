"""Typed client for Ollama's HTTP API (FACTS.md §1).

Each call is one honest measurement: explicit connect/read timeouts, no retries, and every failure
classified at this boundary into ``ProbeError.reason``:

- ``timeout``      — no connection or no answer within the timeout (a hung Ollama accepts the TCP
                     connection and never answers: that is a read timeout);
- ``refused``      — nothing listens, the connection was reset, or the name does not resolve;
- ``http_error``   — an HTTP status outside 2xx;
- ``bad_response`` — a 2xx whose body is not the JSON this endpoint returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, TypeVar

import requests

from ollama_watchdog.oneline import one_line

ProbeReason = Literal["timeout", "refused", "http_error", "bad_response"]
PROBE_REASONS: Final[tuple[ProbeReason, ...]] = ("timeout", "refused", "http_error", "bad_response")

# Bounded bodies: an answer bigger than this is not something Ollama sends for these endpoints.
_MAX_BODY = 32 * 1024 * 1024
#: an error detail from Ollama (a body, an exception text) is cut to this many characters
_DETAIL_LIMIT: Final = 160


T = TypeVar("T")


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
    return v


def _int(d: Mapping[str, Any], key: str, what: str, required: bool = True) -> int:
    v = d.get(key)
    if v is None and not required:
        return 0
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProbeError("bad_response", f"{what}: field {key!r} missing or not an integer")
    return v


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(x for x in value if isinstance(x, str))


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


class OllamaClient:
    """One ``requests.Session`` per client; not shared between threads that run concurrently."""

    def __init__(self, base_url: str, timeout: float, connect_timeout: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Connecting to a local server is instant or refused; cap it below the read timeout.
        self.connect_timeout = connect_timeout if connect_timeout is not None else min(timeout, 3.0)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "ollama-watchdog"
        # Environment proxies must not capture loopback probes.
        self._session.trust_env = False

    def close(self) -> None:
        self._session.close()

    # -- plumbing -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        read_timeout = self.timeout if timeout is None else timeout
        try:
            resp = self._session.request(
                method,
                self.base_url + path,
                json=json_body,
                timeout=(min(self.connect_timeout, read_timeout), read_timeout),
                stream=stream,
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout:
            raise ProbeError("timeout", f"connect timeout after {read_timeout:g}s") from None
        except requests.exceptions.ReadTimeout:
            raise ProbeError("timeout", f"timeout after {read_timeout:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            text = str(exc)
            if "timed out" in text.lower():
                raise ProbeError("timeout", f"timeout after {read_timeout:g}s") from None
            if "refused" in text.lower():
                raise ProbeError("refused", "connection refused") from None
            if "RemoteDisconnected" in text or "reset" in text.lower():
                raise ProbeError("refused", "connection closed without a response") from None
            raise ProbeError(
                "refused", "cannot connect: " + one_line(text, _DETAIL_LIMIT)
            ) from None
        except requests.exceptions.RequestException as exc:
            raise ProbeError("bad_response", one_line(str(exc), _DETAIL_LIMIT)) from None
        if not 200 <= resp.status_code < 300:
            detail = _error_detail(resp)
            resp.close()
            raise ProbeError("http_error", f"HTTP {resp.status_code}{detail}", resp.status_code)
        return resp

    def _get_json(self, path: str) -> Any:
        resp = self._request("GET", path)
        try:
            raw = resp.content
        except requests.exceptions.RequestException as exc:
            if "timed out" in str(exc).lower():
                raise ProbeError("timeout", f"body timeout after {self.timeout:g}s") from None
            raise ProbeError(
                "bad_response", "body cut off: " + one_line(str(exc), _DETAIL_LIMIT)
            ) from None
        finally:
            resp.close()
        if len(raw) > _MAX_BODY:
            raise ProbeError("bad_response", f"{path}: body larger than {_MAX_BODY} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ProbeError("bad_response", f"{path}: body is not JSON") from None

    # -- endpoints ------------------------------------------------------------------------------

    def version(self) -> str:
        obj = _obj(self._get_json("/api/version"), "/api/version")
        version = _str(obj, "version", "/api/version")
        if not version or len(version) > 64:
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
                    family=str(details.get("family") or ""),
                    parameter_size=str(details.get("parameter_size") or ""),
                    quantization_level=str(details.get("quantization_level") or ""),
                    capabilities=_str_tuple(m.get("capabilities")),
                )
            )
        return out

    def ps(self) -> list[LoadedModel]:
        out: list[LoadedModel] = []
        for m in _models_list(self._get_json("/api/ps"), "/api/ps"):
            ctx = m.get("context_length")
            ctx_ok = isinstance(ctx, int) and not isinstance(ctx, bool)
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
        deadline = start + budget
        body = {
            "model": model,
            "prompt": prompt,
            "stream": True,
            "keep_alive": keep_alive,
            "options": {"num_predict": num_predict, "temperature": 0},
        }
        resp = self._request("POST", "/api/generate", json_body=body, timeout=budget, stream=True)
        ttft: float | None = None
        final: dict[str, Any] | None = None
        try:
            for line in _iter_lines(resp, deadline, budget):
                try:
                    chunk = _obj(json.loads(line), "/api/generate chunk")
                except ValueError:
                    raise ProbeError("bad_response", "/api/generate: chunk is not JSON") from None
                if "error" in chunk:
                    # a mid-stream error arrives as 200 + {"error": ...}; its text is Ollama's own
                    detail = one_line(str(chunk["error"]), _DETAIL_LIMIT)
                    raise ProbeError("bad_response", "/api/generate: " + detail)
                if ttft is None and chunk.get("response"):
                    ttft = time.monotonic() - start
                if chunk.get("done") is True:
                    final = chunk
                    break
        except ProbeError as exc:
            # the server answered (and will log) this status before the stream failed
            if exc.status is None:
                exc.status = resp.status_code
            raise
        finally:
            resp.close()
        if final is None:
            raise ProbeError(
                "bad_response", "/api/generate: stream ended without done:true", resp.status_code
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


def _iter_lines(resp: requests.Response, deadline: float, budget: float) -> Iterator[bytes]:
    try:
        for line in resp.iter_lines(chunk_size=4096):
            if time.monotonic() > deadline:
                raise ProbeError("timeout", f"generation not done after {budget:g}s")
            if line:
                yield line
    except requests.exceptions.RequestException as exc:
        if "timed out" in str(exc).lower():
            raise ProbeError("timeout", f"timeout after {budget:g}s") from None
        raise ProbeError(
            "bad_response", "stream cut off: " + one_line(str(exc), _DETAIL_LIMIT)
        ) from None


def _error_detail(resp: requests.Response) -> str:
    """Ollama's own error message (``{"error": ...}``), bounded; never a model's output."""
    try:
        obj = json.loads(resp.content[:4096])
        if isinstance(obj, dict) and isinstance(obj.get("error"), str):
            return ": " + one_line(obj["error"], _DETAIL_LIMIT)
    except Exception:  # the status code alone is the answer
        return ""
    return ""


__all__ = [
    "PROBE_REASONS",
    "GenerateResult",
    "LoadedModel",
    "ModelInfo",
    "OllamaClient",
    "ProbeError",
    "ProbeReason",
    "ProbeResult",
    "parse_go_time",
    "timed_probe",
]
