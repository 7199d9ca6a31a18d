"""Ollama's log line formats, produced byte-for-byte (FACTS.md §2.2, §2.3, §2.7).

Pure functions only: values in, text out. The simulator writes its logs with them, and the log
parser's tests use them to check parser against producer. Every function returns the line
*without* its trailing newline; Ollama ends each line with ``\\n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

#: gin's timestamp layout ``2006/01/02 - 15:04:05`` (local time, no zone)
GIN_TIME_FORMAT = "%Y/%m/%d - %H:%M:%S"

_NS_PER_S = 1_000_000_000
_MINUTE_NS = 60 * _NS_PER_S

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote``: double quotes, Go escapes, printable Unicode kept as is."""
    out = ['"']
    for ch in text:
        escaped = _GO_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _frac(value: int, prec: int) -> tuple[str, int]:
    """Go's ``fmtFrac``: the fraction of value/10**prec without trailing zeros, and the rest."""
    digits: list[str] = []
    printed = False
    for _ in range(prec):
        digit = value % 10
        printed = printed or digit != 0
        if printed:
            digits.append(str(digit))
        value //= 10
    if not printed:
        return "", value
    return "." + "".join(reversed(digits)), value


def format_go_duration_ns(ns: int) -> str:
    """Go's ``time.Duration.String()`` of an integer number of nanoseconds."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < _NS_PER_S:
        # Below one second Go switches to the smallest unit that keeps a whole number in front.
        if u < 1_000:
            return f"{sign}{u}ns"
        if u < 1_000_000:
            frac, whole = _frac(u, 3)
            return f"{sign}{whole}{frac}µs"
        frac, whole = _frac(u, 6)
        return f"{sign}{whole}{frac}ms"
    frac, seconds = _frac(u, 9)
    text = f"{seconds % 60}{frac}s"
    minutes = seconds // 60
    if minutes:
        text = f"{minutes % 60}m{text}"
        hours = minutes // 60
        if hours:
            text = f"{hours}h{text}"
    return sign + text


def format_go_duration(seconds: float) -> str:
    """Go's ``Duration.String()`` of a duration given in seconds (rounded to nanoseconds)."""
    return format_go_duration_ns(round(seconds * _NS_PER_S))


def gin_latency(seconds: float) -> str:
    """The latency column's text: gin truncates durations above one minute to whole seconds."""
    ns = round(seconds * _NS_PER_S)
    if ns > _MINUTE_NS:
        ns -= ns % _NS_PER_S
    return format_go_duration_ns(ns)


def format_gin_line(
    when: datetime,
    status: int,
    latency: float,
    client_ip: str,
    method: str,
    path: str,
) -> str:
    """One gin request line with colours off (gin v1.10.0 ``defaultLogFormatter``).

    ``when`` is shown as given (Ollama uses local time without a zone); ``latency`` is in
    seconds; ``path`` is the URL path plus ``?`` and the raw query when there is one.
    Python counts code points like Go's ``%13v`` counts runes, so ``µ`` takes one column.
    """
    return (
        f"[GIN] {when.strftime(GIN_TIME_FORMAT)} | {status:3d} | {gin_latency(latency):>13} |"
        f" {client_ip:>15} | {method:<7}  {go_quote(path)}"
    )


def format_rfc3339_millis(when: datetime) -> str:
    """slog's ``time=`` value: RFC 3339, exactly 3 fractional digits (truncated), offset or Z."""
    aware = when if when.tzinfo is not None else when.astimezone()
    base = aware.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{aware.microsecond // 1000:03d}{_go_offset(aware)}"


def format_rfc3339_nano(when: datetime, nanos: int | None = None) -> str:
    """Go's ``time.RFC3339Nano``: up to 9 fractional digits, trailing zeros trimmed.

    ``nanos`` (0..999) adds the digits below the microsecond that Python's datetime lacks.
    """
    aware = when if when.tzinfo is not None else when.astimezone()
    fraction = aware.microsecond * 1000 + (nanos or 0)
    text = aware.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + _go_offset(aware)


def _go_offset(when: datetime) -> str:
    offset = when.utcoffset() or timedelta(0)
    if offset == timedelta(0):
        return "Z"
    total = int(offset.total_seconds())
    sign = "+" if total >= 0 else "-"
    hours, rest = divmod(abs(total), 3600)
    return f"{sign}{hours:02d}:{rest // 60:02d}"


def utc_now_rfc3339_nano(ns_epoch: int) -> str:
    """``created_at`` of a response: UTC, RFC3339Nano, ``Z``."""
    when = datetime.fromtimestamp(ns_epoch // _NS_PER_S, tz=UTC)
    fraction = ns_epoch % _NS_PER_S
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def _slog_needs_quoting(text: str) -> bool:
    """log/slog's ``needsQuoting``: empty, space, ``=``, ``"``, control or non-printable runes.

    A backslash alone does not force quoting (``model=C:\\Users\\...`` stays bare).
    """
    if not text:
        return True
    for ch in text:
        if ch == "\\":
            continue
        if ord(ch) < 0x80:
            if ch in ' ="' or ord(ch) < 0x20:
                return True
        elif ch.isspace() or not ch.isprintable():
            return True
    return False


def _go_float(value: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 64)``: shortest digits; exponent form when the
    decimal exponent is below -4 or at least 6 (Go uses precision 6 for that decision)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digit_tuple, exp = Decimal(repr(value)).normalize().as_tuple()
    assert isinstance(exp, int)
    digits = "".join(map(str, digit_tuple))
    point = len(digits) + exp  # position of the decimal point within digits
    minus = "-" if sign else ""
    exponent = point - 1
    if exponent < -4 or exponent >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{minus}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return minus + digits + "0" * (point - len(digits))
    return f"{minus}{digits[:point]}.{digits[point:]}"


def slog_value(value: object) -> str:
    """One attribute value as slog's TextHandler writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    text = str(value)
    return go_quote(text) if _slog_needs_quoting(text) else text


def format_slog_line(
    when: datetime,
    level: str,
    source: str,
    msg: str,
    attrs: Sequence[tuple[str, object]] = (),
) -> str:
    """One ``log/slog`` TextHandler line as Ollama writes it (``time= level= source= msg=``)."""
    parts = [
        f"time={format_rfc3339_millis(when)}",
        f"level={level}",
        f"source={source}",
        f"msg={slog_value(msg)}",
    ]
    parts.extend(f"{slog_value(key)}={slog_value(value)}" for key, value in attrs)
    return " ".join(parts)


def human_bytes2(size: int) -> str:
    """Ollama's ``format.HumanBytes2``: base 1024, one decimal, ``B`` below a KiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _c_float(value: float, width: int) -> str:
    """C's ``%W.2f``, including glibc's spelling of inf and nan."""
    if math.isnan(value):
        return f"{'-nan':>{width}}"
    if math.isinf(value):
        return f"{'inf' if value > 0 else '-inf':>{width}}"
    return f"{value:{width}.2f}"


def _rate(ms: float, tokens: int) -> tuple[float, float]:
    """(ms per token, tokens per second) with C's float division semantics."""
    per_token = ms / tokens if tokens else (math.nan if ms == 0 else math.inf)
    per_second = 1e3 / ms * tokens if ms else (math.nan if tokens == 0 else math.inf)
    return per_token, per_second


def format_timing_lines(
    slot_id: int,
    task_id: int,
    prompt_ms: float,
    prompt_tokens: int,
    eval_ms: float,
    eval_tokens: int,
    *,
    block: bool = False,
) -> list[str]:
    """llama-server's ``print_timing`` lines after a completion (FACTS.md §2.7).

    The per-line form prefixes every line with ``slot print_timing: id NN | task N | ``;
    the block form prints that prefix once on a line of its own.
    """
    prefix = f"slot print_timing: id {slot_id:2d} | task {task_id} | "
    p_per_token, p_per_second = _rate(prompt_ms, prompt_tokens)
    e_per_token, e_per_second = _rate(eval_ms, eval_tokens)
    total_ms, total_tokens = prompt_ms + eval_ms, prompt_tokens + eval_tokens
    body = [
        f"prompt eval time = {prompt_ms:10.2f} ms / {prompt_tokens:5d} tokens"
        f" ({_c_float(p_per_token, 8)} ms per token,"
        f" {_c_float(p_per_second, 8)} tokens per second)",
        f"       eval time = {eval_ms:10.2f} ms / {eval_tokens:5d} tokens"
        f" ({_c_float(e_per_token, 8)} ms per token,"
        f" {_c_float(e_per_second, 8)} tokens per second)",
        f"      total time = {total_ms:10.2f} ms / {total_tokens:5d} tokens",
    ]
    if block:
        return [prefix, *body]
    graphs = f"   graphs reused = {max(eval_tokens - 1, 0):10d}"
    return [prefix + line for line in [*body, graphs]]
