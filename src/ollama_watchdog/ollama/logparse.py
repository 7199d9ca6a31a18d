"""Pure parsing of Ollama's log lines: one line in, at most one event out.

Ollama writes three kinds of lines into the same stream (FACTS.md §2): gin's request log
(``[GIN] 2024/12/11 - 09:58:58 | 500 |        29m59s |      10.0.0.123 | POST     "/api/chat"``),
Go slog lines (``time=... level=WARN source=x.go:1 msg="..." key=value``; before 0.7 the first
line went through Go's ``log`` package: ``2025/02/02 09:23:09 routes.go:1187: INFO server config``)
and the model runner's own output, verbatim. Of the runner's output only llama-server's timing
lines (v0.30+, §2.7) carry numbers worth counting.

Nothing here keys on a prefix: journald (with localised month names), docker compose, GUI log
wrappers and C output glued in front are all skipped by searching for ``[GIN] `` / ``level=``
inside the line. Every label value an event carries comes from a fixed set
(:mod:`ollama_watchdog.ollama.routes`, :data:`LEVELS`, :data:`RUNNER_ERROR_KINDS`), so no input can
create new series, and no message text or prompt ever leaves this module.

Speed matters (the parser sees every line Ollama writes). Each kind of line is recognised by
an ``in`` test before any regex runs. The common form of each kind (a gin line without colours
under a minute or in whole minutes, a message we do not classify, a padded timing line) takes a
fast path of one regex or a few string calls; every other form falls back to a general path,
which gives the same event for the common form too (tests/unit/test_logparse_paths.py holds
them to that). Events are NamedTuples rather than frozen dataclasses: just as immutable, and
several times cheaper to build (a frozen dataclass sets each field through
``object.__setattr__``); messages that carry nothing but a level and a fixed meaning are
shared instances.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal, NamedTuple, TypeVar

from ollama_watchdog.ollama.routes import method_label, route_label

#: values of ``ollama_log_messages_total{level}``
LEVELS: Final = ("trace", "debug", "info", "warn", "error")

#: values of ``ollama_runner_errors_total{kind}``
RUNNER_ERROR_KINDS: Final = (
    "runner_terminated",  # the runner process exited on its own (crash, exit status, signal)
    "out_of_memory",  # host or GPU memory ran out, or the scheduler refused for lack of it
    "gpu_error",  # the GPU could not be queried or its memory did not come back
    "load_failed",  # a model could not be loaded for another reason
    "load_timeout",  # the runner did not become ready within OLLAMA_LOAD_TIMEOUT
    "completion_failed",  # the runner failed while serving a request
)

TimingPhase = Literal["prompt", "eval", "total"]


class Request(NamedTuple):
    """One gin request line: logged once when the response has finished."""

    method: str  # bounded: routes.METHODS or "other"
    route: str  # bounded: a routes.ROUTES template or "other"
    code: int  # the 3-digit status code
    seconds: float  # gin's latency (whole seconds above one minute)


class Message(NamedTuple):
    """One slog (or pre-slog ``log.Printf``) line of the Ollama server."""

    level: str  # one of LEVELS
    error_kind: str | None = None  # one of RUNNER_ERROR_KINDS when the line reports one
    runner_blob: str | None = None  # sha256 hex of the model blob a runner was started for
    loaded_runners: int | None = None  # the scheduler's ``loaded runners count=N``
    server_start: bool = False  # the first line(s) of a new ``ollama serve`` process


class Timing(NamedTuple):
    """One line of llama-server's ``print_timing`` block (per-line or block form)."""

    phase: TimingPhase  # "prompt" eval, "eval" (generation) or the "total" line that ends it
    seconds: float
    tokens: int


class Malformed(NamedTuple):
    """A line that carries a marker we know (``[GIN] ``, ``level=``) but does not parse.

    Counted by ``ollama_watchdog_log_lines_unparsed_total``: a rising count means Ollama's
    format moved and this parser needs an update.
    """

    marker: Literal["gin", "slog"]


Event = Request | Message | Timing | Malformed
_V = TypeVar("_V")

# Events on hot paths are built with tuple.__new__ directly, as NamedTuple's generated __new__
# does, minus its Python frame: the same object, at half the cost.
_new: Final = tuple.__new__

# --- gin ------------------------------------------------------------------------------------

# After "[GIN] ": date and time (unused: local time without a zone), status, latency, client,
# method, then the Go-quoted path. The quote may itself be escaped (\") when a GUI wrapped the
# line into JSON (real-logs.txt [19]). The path stops at a quote or backslash: Go escapes only
# odd bytes, and whatever follows such a byte cannot change the route.
_GIN_RE: Final = re.compile(
    # latency: one number and unit (the common case, converted without a second parse), or
    # any other Go duration text (``2m48s``), parsed by parse_go_duration
    r"[^|]*\| (\d{3}) \| *(?:(\d+(?:\.\d+)?)(ns|µs|μs|us|ms|s)|([^ |]+)) \|"
    r"[^|]*\| ([A-Z]+) +\\?\"([^\"\\]*)"
)
_ANSI_RE: Final = re.compile(r"\x1b\[[0-9;]*m")

# The fast path takes the common form, as gin prints it: status, then latency (one number and
# unit below a minute, whole minutes and seconds above, as gin truncates there), the client,
# then the end of the line (method and path). It is one match from the start of the line: the
# prefix up to the first "[GIN] " is skipped by possessive loops, so the first marker decides,
# as in _parse_gin. The end repeats (a few methods and routes, whoever the client), so its
# labels are looked up once and kept; so are the long latencies (whole seconds). A line the
# fast path does not take goes through _parse_gin (_GIN_RE): same result, only slower.
# ASCII digits only (?a): a non-ASCII digit, as valid for _GIN_RE as for float(), is left to it.
_GIN_FAST: Final = re.compile(
    r"(?as)[^\[]*+(?:\[(?!GIN\] )[^\[]*+)*+\[GIN\] [^|]*\| (\d{3}) \| *"
    r"(?:(\d+(?:\.\d+)?)(ns|µs|μs|us|ms|s)|((?:\d+h)?\d+m\d+s)) \|[^|]*\| (.*)"
).match
# "200" -> 200 without parsing it each time
_STATUS: Final = {f"{code:03d}": code for code in range(1000)}
_GIN_TARGET_RE: Final = re.compile(r"([A-Z]+) +\\?\"([^\"\\]*)")
# end of line -> (method, route); long latency ("2m48s") -> seconds. Bounded: emptied when
# full, so a scanner's random URLs cost a regex per line and nothing more; long keys (huge
# URLs) are not kept at all. A dict's get, set and clear are atomic under the GIL: callers on
# several threads need no lock.
_TARGETS: Final[dict[str, tuple[str, str]]] = {}
_LONG: Final[dict[str, float]] = {}
_CACHE_MAX: Final = 4096
_CACHE_KEY_MAX: Final = 256
_LONG_RE: Final = re.compile(r"(?a)(?:(\d+)h)?(\d+)m(\d+)s")

# --- Go durations ---------------------------------------------------------------------------

_UNIT_2: Final = {"ns": 1e-9, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "ms": 1e-3}
_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, **_UNIT_2}
_DURATION_RE: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s|µs|μs|us|ns))+")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|µs|μs|us|ns)")


def parse_go_duration(text: str) -> float | None:
    """Seconds from Go's ``time.Duration.String()`` form, or None if it is not one.

    Covers what gin prints: ``0s``, ``41.983µs``, ``17.155908ms``, ``1.33s``, ``2m48s``,
    ``1h2m3s`` (and ``μs`` with a Greek mu, ``us``, ``ns``).
    """
    # Fast path: one number and one unit, the form of nearly every request under a minute.
    scale = _UNIT_2.get(text[-2:])
    number = text[:-2] if scale is not None else text[:-1] if text[-1:] == "s" else None
    # isdigit() after removing one dot accepts exactly \d+(\.\d+)? bar a leading or
    # trailing dot, which float() would take but Go never prints: checked separately
    if (
        number
        and number.replace(".", "", 1).isdigit()
        and number.isascii()
        and number[0] != "."
        and number[-1] != "."
    ):
        return float(number) * (1.0 if scale is None else scale)
    if not _DURATION_RE.fullmatch(text):
        return None
    total = 0.0
    for value, unit in _DURATION_PART_RE.findall(text):
        total += float(value) * _UNITS[unit]
    return total if math.isfinite(total) else None


# --- gin lines ------------------------------------------------------------------------------


def _remember(cache: dict[str, _V], key: str, value: _V) -> _V:
    if len(key) <= _CACHE_KEY_MAX:
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[key] = value
    return value


def _gin_target(target: str) -> tuple[str, str] | None:
    """Method and route labels from the end of a gin line (method, then the quoted path)."""
    found = _GIN_TARGET_RE.match(target)
    if found is None:
        return None
    return _remember(_TARGETS, target, (method_label(found[1]), route_label(found[2])))


def _long_latency(text: str) -> float | None:
    """Seconds of a latency in whole minutes and seconds (``2m48s``, ``1h2m3s``)."""
    found = _LONG_RE.fullmatch(text)
    if found is None:
        return None
    hours, minutes, secs = found.groups()
    # the sum parse_go_duration makes of the same parts, to the last bit
    seconds = float(minutes) * 60.0 + float(secs)
    if hours is not None:
        seconds = float(hours) * 3600.0 + float(minutes) * 60.0 + float(secs)
    return _remember(_LONG, text, seconds) if math.isfinite(seconds) else None


def _parse_gin(line: str) -> Request | Malformed:
    """A line with ``[GIN] `` that the fast path did not take: the general path (_GIN_RE)."""
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    at = line.find("[GIN] ")
    found = _GIN_RE.match(line, at + 6)
    if found is None:
        return Malformed("gin")
    code, number, unit, latency, method, path = found.groups()
    if number is not None:
        seconds = float(number) * _UNITS[unit]
    else:
        parsed = parse_go_duration(latency)
        if parsed is None:
            return Malformed("gin")
        seconds = parsed
    return _new(Request, (method_label(method), route_label(path), int(code), seconds))


# --- slog -----------------------------------------------------------------------------------

_LEVEL_MAP: Final = {
    "TRACE": "trace",
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warn",
    "WARNING": "warn",
    "ERROR": "error",
}

# Substrings that mean memory ran out: llm/status.go's list (FACTS.md §2.5) plus the
# scheduler's refusals for lack of system memory. Matched case-insensitively.
_OOM_MARKERS: Final = (
    "out of memory",
    "out of device memory",
    "out-of-memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "vk_error_out_of_device_memory",
    "erroroutofmemory",
    "requires more system memory",
    "too large for system memory",
)


def _memory_or(kind: str, error: str) -> str:
    low = error.lower()
    # every marker says "memory" or "alloc": most errors need no look for each marker
    if "memory" in low or "alloc" in low:
        for marker in _OOM_MARKERS:
            if marker in low:
                return "out_of_memory"
    if "timed out waiting for" in low:
        return "load_timeout"
    return kind


# msg -> how to classify it: a fixed kind, or "?<kind>": look at the error= attribute for
# memory/timeout first, else <kind>. Only the server's own summary lines are counted (one per
# failure): the runner's raw stderr lines around a crash are echoed into these anyway.
_MSG_KINDS: Final[dict[str, str]] = {
    # load of a model failed (same text in all eras; the error= attribute says why)
    "error loading llama server": "?load_failed",
    "Load failed": "?load_failed",
    # the child process died
    "llama runner terminated": "runner_terminated",
    "llama-server terminated": "runner_terminated",
    # failed while serving a request
    "llama-server completion error": "completion_failed",
    "llama-server chat error": "completion_failed",
    "post predict": "completion_failed",
    # memory (v0.30+ retries and runtime detection)
    "runtime OOM detected; expiring loaded models to clear memory before next request": (
        "out_of_memory"
    ),
    "llama-server load failed; reducing automatic context and retrying once": "out_of_memory",
    "llama-server load failed; evicting all other models and retrying once": "out_of_memory",
    # GPU state
    "error looking up nvidia GPU memory": "gpu_error",
    "gpu VRAM usage didn't recover within timeout": "gpu_error",
}
_RUNNER_START_MSGS: Final = frozenset(
    {"starting llama-server", "starting llama server", "starting runner"}
)
_BLOB_RE: Final = re.compile(r"sha256[-:]([0-9a-f]{64})")

# The start of every message _message() tells apart, as it follows ``msg=`` in both quoted
# forms (``"text"`` and, in a JSON-escaped line, ``\"text\"``); _HEAD characters of it. A
# bare (unquoted) value is never one of them: each of those messages has a space, and Go
# quotes any value with one. A message whose start is not in here gets its level only.
_CLASSIFIED: Final = (*_MSG_KINDS, *_RUNNER_START_MSGS, "loaded runners", "server config",
                      "Listening on ")  # fmt: skip
_HEAD: Final = 1 + min(map(len, _CLASSIFIED))
_HEADS: Final = frozenset(
    {'"' + text[: _HEAD - 1] for text in _CLASSIFIED}
    | {'\\"' + text[: _HEAD - 2] for text in _CLASSIFIED}
)

# Before 0.7 (and in 2023's log.Printf era): "2023/12/24 23:48:35 llama.go:459: <text>".
_STDLOG_RE: Final = re.compile(
    r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d [\w.-]+\.go:\d+: (?:(TRACE|DEBUG|INFO|WARN|ERROR) )?(.*)"
)


def _value(line: str, start: int) -> str:
    """The slog value beginning at ``start``: bare up to a space, or Go-quoted."""
    # A pager or a wrapper may have cut the line inside a quoted value: keep what is there.
    if line.startswith('"', start):
        end = line.find('"', start + 1)
        # skip escaped quotes inside the value (rare: only when the text contains one)
        while end > 0 and line[end - 1] == "\\":
            end = line.find('"', end + 1)
        return line[start + 1 :] if end < 0 else line[start + 1 : end]
    if line.startswith('\\"', start):  # the whole line was JSON-escaped by a wrapper
        end = line.find('\\"', start + 2)
        return line[start + 2 :] if end < 0 else line[start + 2 : end]
    end = line.find(" ", start)
    return line[start:] if end < 0 else line[start:end]


def _attr(line: str, key: str, start: int) -> str:
    at = line.find(" " + key + "=", start)
    return "" if at < 0 else _value(line, at + len(key) + 2)


# most messages carry nothing but their level: share one instance per level, and one per
# level and meaning for the messages that carry nothing else
_PLAIN: Final = {level: Message(level) for level in LEVELS}
_ERRORS: Final = {
    (level, kind): Message(level, error_kind=kind)
    for level in LEVELS
    for kind in RUNNER_ERROR_KINDS
}
_STARTS: Final = {level: Message(level, server_start=True) for level in LEVELS}


def _message(level: str, msg: str, line: str, rest: int) -> Message:
    """Classify one server message; ``rest`` is where its attributes begin in ``line``."""
    rule = _MSG_KINDS.get(msg)
    if rule is not None:
        kind = _memory_or(rule[1:], _attr(line, "error", rest)) if rule[0] == "?" else rule
        return _ERRORS[level, kind]
    if msg in _RUNNER_START_MSGS:
        blob = _BLOB_RE.search(line, rest)
        return Message(level, runner_blob=blob.group(1) if blob else None)
    if msg == "loaded runners":
        count = _attr(line, "count", rest)
        # isdecimal, not isdigit: int() refuses a superscript digit like "²"
        return Message(level, loaded_runners=int(count) if count.isdecimal() else None)
    if msg == "server config" or msg.startswith("Listening on "):
        return _STARTS[level]
    return _PLAIN[level]


def _slog_level(line: str, at: int) -> str | None:
    end = line.find(" ", at)
    word = line[at + 6 : end if end >= 0 else len(line)]
    level = _LEVEL_MAP.get(word)
    if level is None:
        # custom slog levels print as "DEBUG-4", "INFO+2": count them under their base
        base = word.split("-", 1)[0].split("+", 1)[0]
        level = _LEVEL_MAP.get(base)
    return level


def _parse_slog(line: str, at: int) -> Message | Malformed:
    # INFO is the level of most lines: one call tells it
    level = "info" if line.startswith("INFO ", at + 6) else _slog_level(line, at)
    if level is None:
        return Malformed("slog")
    m = line.find(" msg=", at)
    # Nearly every message is one we do not classify: one slice and one set lookup tell,
    # without taking the value out of its quotes first.
    if m < 0 or line[m + 5 : m + 5 + _HEAD] not in _HEADS:
        return _PLAIN[level]
    msg = _value(line, m + 5)
    return _message(level, msg, line, m + 5 + len(msg))


def _parse_stdlog(line: str) -> Message | None:
    found = _STDLOG_RE.search(line)
    if found is None:
        return None
    word, text = found.groups()
    if text.startswith("error starting llama runner: "):
        kind = _memory_or("load_failed", text)
        return Message(_LEVEL_MAP[word] if word else "error", error_kind=kind)
    level = _LEVEL_MAP[word] if word else "info"
    if text.startswith("server config"):
        return Message(level, server_start=True)
    return Message(level)


# --- llama-server timings -------------------------------------------------------------------

# Matched where " time = " begins: lookbehinds read the phase word before it (at any width,
# from the start of the line on), then the numbers follow. "prompt eval" is tried before
# "eval", which it also ends with.
_TIMING_AT: Final = re.compile(
    r"(?:(?<=prompt eval)()|(?<=total)()|(?<=eval)) time = +(\d+(?:\.\d+)?) ms / +(\d+) tok"
).match


def _parse_timing(line: str, at: int) -> Timing | None:
    """``at`` is where " time = " starts; the word before it names the phase."""
    found = _TIMING_AT(line, at)
    if found is None:
        return None
    prompt, total, ms, tokens = found.groups()
    # an empty group that took part is "", one that did not is None
    phase: TimingPhase = (
        "prompt" if prompt is not None else "total" if total is not None else "eval"
    )
    return _new(Timing, (phase, float(ms) / 1000.0, int(tokens)))


# --- the entry point ------------------------------------------------------------------------


# The gin fast path runs inline: request lines are the most common lines worth parsing, and
# a Python call costs about a third of a regex match here.
_TARGETS_GET: Final = _TARGETS.get
_LONG_GET: Final = _LONG.get


def parse_line(line: str) -> Event | None:
    """Parse one log line; None when it is nothing we count (most runner output)."""
    # Most lines carry no marker at all: ``in`` answers that without a method call, and the
    # position is looked for only on a hit. The order is the priority when markers mix.
    if "[GIN] " in line:
        # colours (rare: gin colours a terminal only) are stripped by the general path
        found = None if "\x1b" in line else _GIN_FAST(line)
        if found is not None:
            code, number, unit, long, end = found.groups()
            labels = _TARGETS_GET(end) or _gin_target(end)
            if labels is not None:
                if number is not None:
                    seconds: float | None = float(number) * _UNITS[unit]
                else:
                    seconds = _LONG_GET(long) or _long_latency(long)
                if seconds is not None:
                    return _new(Request, (labels[0], labels[1], _STATUS[code], seconds))
        return _parse_gin(line)
    if "level=" in line:
        return _parse_slog(line, line.find("level="))
    if " time = " in line:
        return _parse_timing(line, line.find(" time = "))
    if ".go:" in line:
        return _parse_stdlog(line)
    return None


__all__ = [
    "LEVELS",
    "RUNNER_ERROR_KINDS",
    "Event",
    "Malformed",
    "Message",
    "Request",
    "Timing",
    "parse_go_duration",
    "parse_line",
]
