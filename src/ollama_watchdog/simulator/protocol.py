"""Pure pieces of Ollama's HTTP protocol: JSON encoding, request decoding, field rules.

Everything here is data in, data out; the endpoints (``inference.py``, ``models.py``) and the
router use it (FACTS.md §1). The routes themselves are :mod:`ollama_watchdog.ollama.routes`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from decimal import Decimal
from typing import Any

#: Routes that go through the scheduler (and so can be refused with 503 when busy); each is a
#: template of ``ollama.routes.ROUTES`` (the router checks it at import).
SCHEDULED_ROUTES = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})

MSG_RUNNER_STOPPED = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an"
    " internal error, check ollama server logs for details"
)
MSG_BUSY = "server busy, please try again.  maximum pending requests exceeded"

#: ``api.Options`` + ``Runner`` JSON names (FACTS.md §6); anything else is warned about.
KNOWN_OPTIONS = frozenset({
    "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
    "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop", "num_ctx",
    "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
})


class ApiError(Exception):
    """An answer of ``{"error": message}`` with a status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def go_json(value: object) -> bytes:
    """``json.Marshal`` look-alike: compact, UTF-8, HTML characters escaped like Go does."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text.encode("utf-8")


def go_float32(value: float) -> str:
    """A float32 as Go's encoding/json writes it: shortest digits that round-trip."""
    f32 = struct.unpack("f", struct.pack("f", value))[0]
    if f32 == 0 or math.isnan(f32) or math.isinf(f32):
        return "0"
    text = repr(f32)
    for digits in range(1, 10):
        candidate = f"{f32:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(candidate)))[0] == f32:
            text = candidate
            break
    magnitude = abs(f32)
    if 1e-6 <= magnitude < 1e21 and "e" in text:
        text = format(Decimal(text), "f")
    return text


def embedding_vector(model: str, text: str, dims: int) -> list[float]:
    """A deterministic, L2-normalised vector for (model, text)."""
    values: list[float] = []
    counter = 0
    seed = f"{model}\0{text}".encode()
    while len(values) < dims:
        block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        values.extend((b - 127.5) / 127.5 for b in block)
        counter += 1
    values = values[:dims]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings_json(model: str, vectors: list[list[float]], extra: dict[str, int]) -> bytes:
    """The /api/embed body with float32 formatting (json.dumps would print float64 digits)."""
    rows = ",".join("[" + ",".join(go_float32(v) for v in vec) + "]" for vec in vectors)
    tail = "".join(f',"{key}":{value}' for key, value in extra.items() if value)
    return (
        '{"model":' + go_json(model).decode() + ',"embeddings":[' + rows + "]" + tail + "}"
    ).encode()


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
                   "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


class KeepAliveError(ValueError):
    """A keep_alive value Ollama refuses (400 with this message)."""


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds, with Go's error messages."""
    quoted = '"' + text + '"'
    body = text
    sign = 1.0
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise KeepAliveError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise KeepAliveError(f"time: invalid duration {quoted}")
        number, unit = match.groups()
        if not unit:
            raise KeepAliveError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise KeepAliveError(f'time: unknown unit "{unit}" in duration {quoted}')
        total += float(number) * _DURATION_UNITS[unit]
        pos = match.end()
    return sign * total


def go_type_name(value: object) -> str:
    """How Go's reflect names a decoded JSON value's type (for error messages)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    return "<nil>"


def parse_keep_alive(value: object, default: float) -> float:
    """keep_alive in seconds: number = seconds, string = Go duration, negative = forever (inf)."""
    if value is None:
        seconds = default
    elif isinstance(value, bool):
        raise KeepAliveError(f"Unsupported type: '{go_type_name(value)}'")
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value)
    else:
        raise KeepAliveError(f"Unsupported type: '{go_type_name(value)}'")
    return math.inf if seconds < 0 else seconds


def json_kind(value: object) -> str:
    """encoding/json's name for a JSON value kind in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def json_syntax_error(body: bytes, error: json.JSONDecodeError) -> str:
    """Go's json syntax error text for a body Python could not decode."""
    text = error.doc
    if error.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[error.pos]
    return f"invalid character {char!r} looking for beginning of value"


def json_body(body: bytes, type_name: str) -> dict[str, Any]:
    """A request body as gin's ``ShouldBindJSON`` into ``api.<type_name>`` takes it.

    Raises :class:`ApiError` (400) with encoding/json's message for what Go would refuse.
    """
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


def model_name(req: dict[str, Any]) -> str:
    """The request's model: ``model``, or the older ``name`` field."""
    return str(req.get("model") or req.get("name") or "")
