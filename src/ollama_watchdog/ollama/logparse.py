"""Parsing of Ollama's log lines: one line in, at most one event out.

Ollama writes three kinds of lines into the same stream (FACTS.md §2): gin's request log
(``[GIN] 2024/12/11 - 09:58:58 | 500 |        29m59s |      10.0.0.123 | POST     "/api/chat"``),
Go slog lines (``time=... level=WARN source=x.go:1 msg="..." key=value``; before 0.7 the first
line went through Go's ``log`` package: ``2025/02/02 09:23:09 routes.go:1187: INFO server config``)
and the model runner's own output, verbatim (llama.cpp, ggml, the GPU libraries, the Go runner's
runtime up to 0.24, llama-server from 0.30). Of the runner's output, llama-server's timing lines
(v0.30+, §2.7) carry numbers worth counting, and its failure lines are runner errors.

Nothing here keys on one prefix: journald (with localised month names), syslog, docker
(compose, timestamps), GUI log wrappers are all skipped. A request line counts only where gin
writes it: ``[GIN] `` at the start of the message, which is the start of the line or the end of
one such known prefix (:data:`_GIN_PREFIX`); anywhere else (a debug line quoting a prompt that
contains a GIN-looking text) it is text, and the line is parsed as what it is. ``level=`` is
searched inside the line, and a runner's words are looked for where its own text may begin (the
start of the line, or after such a prefix). Every label value an event carries
comes from a fixed set (:mod:`ollama_watchdog.ollama.routes`, :data:`LEVELS`,
:data:`RUNNER_ERROR_KINDS`), so no input can create new series, and no message text or prompt
ever leaves this module.

Runner errors (``ollama_runner_errors_total{kind}``), by what a line means, in any era:

=====================  ==============================================================
kind                   lines that say it
=====================  ==============================================================
``out_of_memory``      any failure line whose text says memory ran out: Ollama's own list
                       (llm/status.go: ``out of memory``, ``cudaMalloc failed``,
                       ``failed to allocate``, ``insufficient memory``, ...) and the same
                       meaning in other words (``unable to allocate CUDA0 buffer``,
                       ``ErrorOutOfDeviceMemory``, ``std::bad_alloc``, ``allocation of size
                       N failed``, Metal's ``Insufficient Memory``); Ollama's own ``runtime
                       OOM detected`` and OOM retries; any server error (``error loading
                       llama server``, ``Load failed``, a completion error) whose ``error=``
                       says so, or says the scheduler refused for lack of memory
``gpu_error``          ``CUDA error`` / ``ROCm error`` / ``MUSA error`` (not about memory),
                       ``ggml_cuda_init: failed to initialize`` (not "no ...-capable
                       device": a host without one), Vulkan's lost device; the server's
                       ``error looking up nvidia GPU memory`` and ``gpu VRAM usage didn't
                       recover``
``load_failed``        ``error loading model``, ``failed to load model``, ``unable to load
                       model`` (also as a Go panic), ``failed to create context``,
                       ``llama_init_from_model: failed``, ``exiting due to model loading
                       error``; the server's ``error loading llama server`` / ``Load failed``
                       / ``error starting llama runner`` for any other reason
``load_timeout``       those server errors when they say ``timed out waiting for``
``runner_terminated``  a crash: ``GGML_ASSERT``, ggml's ``file.c:N: fatal error``,
                       ``terminate called ...``, ``Assertion ... failed``, a Go ``panic:``,
                       ``fatal error:``, ``SIGSEGV: ...`` / ``[signal SIG...``, ``signal
                       arrived during cgo execution``, a Windows ``Exception 0x...``,
                       glibc's heap checks; the server's ``llama runner terminated`` /
                       ``llama-server terminated``, and a completion error whose runner went
                       away under it (``EOF``, ``connection reset`` / ``refused``)
``completion_failed``  any other ``post predict``, ``llama-server completion error`` /
                       ``chat error``: the runner answered the request with an error
=====================  ==============================================================

Never a failure: llama-server's per-request ``slot ... | task N | ...`` lines, model metadata
(``print_info:``, ``llama_model_loader: - kv``: a model may be named ``error-bot``), request
dumps, the client's ``Error: ...``, llama.cpp's recoverable ``..., retrying without pipeline
parallelism``, Metal's ``command buffer N failed with status 5`` alone (the next line says why),
Go stack frames, goroutine headers and register dumps, gdb and backtrace lines, and any line
without those words (``--log-verbosity``, ``n_err = 0``, timing lines).

One fault, one count. A runner that fails writes many lines: its own (CUDA's report, ggml's
abort line and backtrace, the C++ exception and its ``what()``, a Go panic and its goroutine
dump; llama-server's chain of ``failed to allocate`` / ``failed to create context`` / ``exiting
due to model loading error``), then Ollama's notices of it: ``llama runner terminated`` when it
sees the process exit, the scheduler's verdict on the load (``error loading llama server`` /
``Load failed``, quoting the runner's last error again), a completion error per request it was
serving, ``runtime OOM detected`` or an OOM retry. The rule: **a fault is counted once, at its
first line, with that line's kind; every later line that reports the same fault is absorbed.**
Each line plays a part in a fault, and a line is another fault when its part cannot follow what
the fault in progress already has:

* a runner reports its failure once: a second CUDA/ROCm error report or buffer allocation
  failure (``allocating ... cudaMalloc failed``) is another fault;
* a process dies once and a load gets one verdict: a second death notice or a second verdict is
  another fault, and so is runner output after either (that runner has nothing left to say);
* a verdict on a load never follows requests the runner was serving: after a completion error,
  a verdict is another runner's load; a scheduler refusal (``model requires more system
  memory``) involves no runner at all and always counts;
* runner output, completion errors and Ollama's reactions come in numbers and are absorbed.

A fault in progress also ends at any sign of a new or healthy runner: Ollama starting one
(``starting llama-server`` / ``starting runner``, a runner's ``starting go runner``), one
ready (``llama runner started in``), a new server (``server config`` / ``Listening on``), a
runner's start-up or model-loading lines (``llama_model_loader: loaded``, ``print_info:``,
``load_tensors:``, ...), a completion that ended normally (a timing line). Absorbed server
lines still count under their level; an absorbed runner line gives no event, and the counted
one gives ``Message("error", error_kind=...)``, so it counts once under ``level="error"`` too.
The memory this takes is one :class:`LogStream` per log: :func:`parse_line` is the process's
own (one log, one follower thread); a caller feeding unrelated logs or excerpts gives each
its own ``LogStream``, or calls :func:`reset_stream` between them.

So the real CUDA out-of-memory at context creation (llama-server, shared/ollama
llama-server-real.txt run B) counts once, as ``out_of_memory``, at ``cudaMalloc failed: out of
memory``; in real-logs.txt [26] ``llama_model_load: error loading model: unable to allocate
backend buffer``, the ``terminate called`` after it and the server's ``error loading llama
server`` quoting it add nothing; in [19] a runner that died with ``exit status 0xc0000409``
during a load (``llama runner terminated``, then ``error loading llama server``) counts once, as
``runner_terminated``; a runner killed mid-generation (``llama-server completion error``
``EOF``, then ``llama-server terminated``) counts once, as ``runner_terminated``.

Speed matters (the parser sees every line Ollama writes). Each kind of line is recognised by
an ``in`` test before any regex runs. The common form of each kind (a gin line without colours
under a minute or in whole minutes, a message we do not classify, a padded timing line, runner
output without a failure word) takes a fast path of one regex or a few string calls; every other
form falls back to a general path, which gives the same event for the common form too
(tests/unit/test_logparse_paths.py holds them to that). Request lines never touch the stream's
memory. Events are NamedTuples rather than frozen dataclasses: just as immutable, and several
times cheaper to build (a frozen dataclass sets each field through ``object.__setattr__``);
messages that carry nothing but a level and a fixed meaning are shared instances.
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
# then the end of the line (method and path). It is one match from the marker, which
# _gin_marker found where gin writes it (the first marker decides, as in _parse_gin). The end
# repeats (a few methods and routes, whoever the client), so its labels are looked up once and
# kept; so are the long latencies (whole seconds). A line the fast path does not take goes
# through _parse_gin (_GIN_RE): same result, only slower.
# ASCII digits only (?a): a non-ASCII digit, as valid for _GIN_RE as for float(), is left to it.
_GIN_FAST: Final = re.compile(
    r"(?as)\[GIN\] [^|]*\| (\d{3}) \| *"
    r"(?:(\d+(?:\.\d+)?)(ns|µs|μs|us|ms|s)|((?:\d+h)?\d+m\d+s)) \|[^|]*\| (.*)"
).match
# What may stand before "[GIN] " on a line: nothing (journald's MESSAGE, a file log), or a
# sequence of the prefixes that log transports put in front of a message (real-logs.txt and
# FACTS.md §2.1): a syslog / journalctl date, localised ("Dec 24 23:48:35 ", "de des. 24 ...",
# "10月 19 ...", short-precise fractions), an ISO or Go-log timestamp (docker -t, CRI,
# journalctl -o short-iso), "host ollama[123]: ", docker compose's "ollama-1  | ", CRI's
# "stdout F ", a terminal's "user@host:~$ ", and a GUI's JSON wrapper of simple fields up to
# "msg":" (real-logs.txt [19]). None of them holds "=" or an unescaped quote before the JSON
# "msg", so a slog line quoting a prompt (level=DEBUG ... prompt="...[GIN] ...") never matches.
_PREFIX_WORD: Final = r'[^\s"=|:\[\]{}]'
_GIN_PREFIX: Final = re.compile(
    # possessive everywhere: each part ends on a character the next cannot start with, and a
    # line that is not one of these must be refused in one pass
    r"(?:"
    rf"{_PREFIX_WORD}{{1,16}}+(?: {_PREFIX_WORD}{{1,16}}+)? {{1,2}}"
    r"\d{1,2} \d\d:\d\d:\d\d(?:\.\d{1,9})? "
    r"|\d{4}(?:-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d(?::?\d\d)?)?"
    r"|/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})?) "
    r"|(?:[^\s\"=\[\]{}]{1,255}+ )?[\w.@/-]{1,64}+\[\d{1,10}\]: "
    r"|[\w.-]{1,64}+ ++\| "
    r"|std(?:out|err) [FP] "
    r"|[\w.-]{1,64}+@[\w.-]{1,64}+:[^\s\"=]{0,255}?[$#] "
    r"){0,4}+"
    r'(?:\{(?:"\w{1,32}+":(?:-?\d{1,20}+|"[^"\\]{0,255}+"|true|false|null),){0,16}+"msg":")?'
).fullmatch
#: a longer text before the marker is no prefix anyone writes
_GIN_PREFIX_MAX: Final = 512
# prefix -> whether it is one of those. A busy log repeats its prefix (a journald one changes
# once a second), so the regex runs about once per second and source, not once per line.
_PREFIXES: Final[dict[str, bool]] = {}
_PREFIXES_GET: Final = _PREFIXES.get
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


def _gin_marker(line: str) -> int:
    """Where gin's ``[GIN] `` starts the message of a line that holds one, or -1 when the first
    one does not stand where gin writes it (see :data:`_GIN_PREFIX`)."""
    at = line.find("[GIN] ")
    if at <= 0:
        return at
    if at > _GIN_PREFIX_MAX:
        return -1
    prefix = line[:at]
    known = _PREFIXES_GET(prefix)
    if known is None:
        known = _remember(_PREFIXES, prefix, _GIN_PREFIX(prefix) is not None)
    return at if known else -1


def _parse_gin(line: str, at: int) -> Request | Malformed:
    """A line with ``[GIN] `` at ``at`` that the fast path did not take: the general path."""
    if "\x1b" in line:
        # colours come after the marker (status, method): its position does not move
        line = line[:at] + _ANSI_RE.sub("", line[at:])
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


# --- what a failure means -------------------------------------------------------------------

# Memory ran out. Ollama's own list (llm/status.go, FACTS.md §2.5: what Ollama itself calls
# out of memory in a runner's output), matched case-insensitively as Ollama does...
_STATUS_GO_OOM: Final = (
    "out of memory",
    "out of device memory",
    "cudamalloc failed",
    "hipmalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "vk_error_out_of_device_memory",
    "erroroutofmemory",
)
# ...and the same meaning in the other words llama.cpp, ggml, the C++ runtime and the GPU
# libraries use across eras: "unable to allocate CUDA0 buffer" (llama.cpp, every era),
# "Device memory allocation of size N failed" and "ErrorOutOfDeviceMemory" (ggml-vulkan),
# "std::bad_alloc", "CUDA_ERROR_OUT_OF_MEMORY", "Cannot allocate memory" (ENOMEM), Ollama's own
# "reported out-of-memory". Matched on lowercased text.
# Each regex finds "memory" or "alloc" (a literal, found as fast as ``in``) and only then
# reads what stands before or after it.
_MEMORY_WORDS: Final = (
    *(f"out{sep}of{sep}{what}memory" for sep in (" ", "_") for what in ("", "device", "host")),
    "out-of-memory", "outofmemory", "outofdevicememory", "outofhostmemory",
    *(f"{few} {what}memory" for few in ("insufficient", "not enough")
      for what in ("", "device ", "host ", "system ", "gpu ", "vram ", "video ", "shared ")),
)  # fmt: skip
_OOM_MEMORY_RE: Final = re.compile(
    "memory(?:" + "|".join(f"(?<={re.escape(words)})" for words in _MEMORY_WORDS) + ")"
)
_OOM_ALLOC_RE: Final = re.compile(
    r"alloc(?:(?<=bad_alloc)|(?<=failed to alloc)|(?<=unable to alloc)|(?<=could not alloc)"
    r"|(?<=couldn't alloc)|(?<=cannot alloc)|(?<=can't alloc)|\w*(?: of size \d+)? failed|_failed)"
)


def _says_oom(low: str) -> bool:
    """Whether lowercased text says memory ran out: Ollama's words, then the others."""
    if "memory" not in low and "alloc" not in low:  # every one of them says one of these
        return False
    return (
        any(words in low for words in _STATUS_GO_OOM)
        or _OOM_MEMORY_RE.search(low) is not None
        or _OOM_ALLOC_RE.search(low) is not None
    )


# The scheduler's refusals for lack of system memory (Ollama's words, in error= attributes).
_REFUSAL_OOM: Final = ("requires more system memory", "too large for system memory")


def _memory_or(kind: str, error: str) -> str:
    """``out_of_memory`` or ``load_timeout`` when ``error`` says so, else ``kind``."""
    low = error.lower()
    if _says_oom(low) or any(word in low for word in _REFUSAL_OOM):
        return "out_of_memory"
    if "timed out waiting for" in low:
        return "load_timeout"
    return kind


# A request failed because the runner went away mid-request (Go's words for a connection the
# other end dropped or never answered): the runner died, whatever Ollama calls the request.
_RUNNER_GONE_RE: Final = re.compile(
    r"\beof\b|connection reset|connection refused|broken pipe|unexpectedly stopped"
)


def _request_kind(error: str) -> str:
    """A failed request's kind: memory, the runner gone, or the request itself."""
    kind = _memory_or("completion_failed", error)
    if kind == "completion_failed" and _RUNNER_GONE_RE.search(error.lower()):
        return "runner_terminated"
    return kind


# --- one fault, one count -------------------------------------------------------------------

# The part a line plays in one runner fault (a bit each, see the module docstring). RAW: the
# runner's own output (many lines); REPORT: the one report a dying runner's GPU library or
# allocator writes first (CUDA's "CUDA error: ...", "allocating ... cudaMalloc failed");
# DEATH: Ollama saw the process exit; VERDICT: the scheduler gave up on the load; REQUEST: a
# request failed on the runner (one line per request); REACTION: Ollama acts on the failure
# (OOM retry, expiring models).
_RAW, _REPORT, _DEATH, _VERDICT, _REQUEST, _REACTION = 1, 2, 4, 8, 16, 32
# part -> the parts which, already seen in the fault in progress, make this line another fault:
# a process reports its failure once, dies once and its load gets one verdict; nothing of a
# runner comes after its verdict (the scheduler's last word on it) or after Ollama saw it die,
# except more notices; and a load's verdict never follows requests the runner was serving.
_NEXT_FAULT: Final = {
    _RAW: _DEATH | _VERDICT,
    _REPORT: _RAW | _REPORT | _DEATH | _VERDICT,
    _DEATH: _DEATH | _VERDICT,
    _VERDICT: _VERDICT | _REQUEST,
    _REQUEST: _VERDICT,
    _REACTION: _REACTION,
}


class LogStream:
    """The parser of one log stream: :func:`parse_line` plus the one thing it must remember.

    One runner failure writes many lines (the runner's dump, then Ollama's notices of it); the
    stream remembers which parts of the failure in progress it has seen, so that the failure
    is counted once, at its first line. Everything else is per line. ``parse_line`` is the
    process's own stream (one log, one follower thread); a caller reading several logs, or
    replaying unrelated excerpts, gives each its own ``LogStream``.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        #: the parts of the fault in progress seen so far (bits), None when no fault is open
        self.seen: int | None = None

    def parse(self, line: str) -> Event | None:
        """:func:`parse_line` for this stream."""
        if "[GIN] " in line and _gin_marker(line) >= 0:
            return parse_line(line)  # request lines are no part of a runner failure
        return _parse_rest(line, self)

    def forget(self) -> None:
        """Close the fault in progress: the next failure line counts, whatever it says."""
        self.seen = None


def _counts(stream: LogStream, part: int) -> bool:
    """Whether a line playing ``part`` is a new fault (counted) or of the one in progress."""
    seen = stream.seen
    if seen is None or seen & _NEXT_FAULT[part]:
        stream.seen = part
        return True
    stream.seen = seen | part
    return False


# --- slog -----------------------------------------------------------------------------------

_LEVEL_MAP: Final = {
    "TRACE": "trace",
    "DEBUG": "debug",
    "INFO": "info",
    "WARN": "warn",
    "WARNING": "warn",
    "ERROR": "error",
}

# msg -> (kind, part). A kind "?<kind>" means: look at the error= attribute for memory or a
# timeout first, else <kind>; "!<kind>": for memory or a runner gone, else <kind>. The part
# (above) places the line in a runner fault; part 0: the line is no part of one (the server's
# own GPU queries) and always counts.
_MSG_KINDS: Final[dict[str, tuple[str, int]]] = {
    # load of a model failed (same text in all eras; the error= attribute says why)
    "error loading llama server": ("?load_failed", _VERDICT),
    "Load failed": ("?load_failed", _VERDICT),
    # the child process died
    "llama runner terminated": ("runner_terminated", _DEATH),
    "llama-server terminated": ("runner_terminated", _DEATH),
    # failed while serving a request ("!": the error says whether the runner died, see
    # _request_kind)
    "llama-server completion error": ("!completion_failed", _REQUEST),
    "llama-server chat error": ("!completion_failed", _REQUEST),
    "post predict": ("!completion_failed", _REQUEST),
    # memory (v0.30+ retries and runtime detection)
    "runtime OOM detected; expiring loaded models to clear memory before next request": (
        "out_of_memory",
        _REACTION,
    ),
    "llama-server load failed; reducing automatic context and retrying once": (
        "out_of_memory",
        _REACTION,
    ),
    "llama-server load failed; evicting all other models and retrying once": (
        "out_of_memory",
        _REACTION,
    ),
    # GPU state (the server's own queries, no runner involved)
    "error looking up nvidia GPU memory": ("gpu_error", 0),
    "gpu VRAM usage didn't recover within timeout": ("gpu_error", 0),
}
_RUNNER_START_MSGS: Final = frozenset(
    {"starting llama-server", "starting llama server", "starting runner"}
)
# a runner process's first slog lines (Go runner, 0.4-0.24): a new process, so a new fault
_RUNNER_SELF_START_MSGS: Final = frozenset({"starting go runner", "starting ollama engine"})
# "llama runner started in 29.96 seconds" (≤0.24) / "llama-server started in 2.51 seconds"
_READY_MSGS: Final = ("llama runner started in ", "llama-server started in ")
_BLOB_RE: Final = re.compile(r"sha256[-:]([0-9a-f]{64})")

# The start of every message _message() tells apart, as it follows ``msg=`` in both quoted
# forms (``"text"`` and, in a JSON-escaped line, ``\"text\"``); _HEAD characters of it. A
# bare (unquoted) value is never one of them: each of those messages has a space, and Go
# quotes any value with one. A message whose start is not in here gets its level only.
_CLASSIFIED: Final = (*_MSG_KINDS, *_RUNNER_START_MSGS, *_RUNNER_SELF_START_MSGS, *_READY_MSGS,
                      "loaded runners", "server config", "Listening on ")  # fmt: skip
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


def _message(level: str, msg: str, line: str, rest: int, stream: LogStream) -> Message:
    """Classify one server message; ``rest`` is where its attributes begin in ``line``."""
    rule = _MSG_KINDS.get(msg)
    if rule is not None:
        kind, part = rule
        error = _attr(line, "error", rest) if kind[0] in "?!" else ""
        if part == _VERDICT and any(word in error for word in _REFUSAL_OOM):
            part = 0  # the scheduler refused before any runner started: no runner fault
        if part and not _counts(stream, part):
            return _PLAIN[level]  # a notice of the fault already counted
        if kind[0] == "?":
            kind = _memory_or(kind[1:], error)
        elif kind[0] == "!":
            kind = _request_kind(error)
        return _ERRORS[level, kind]
    if msg in _RUNNER_START_MSGS:
        stream.seen = None  # a new runner process: whatever failed before is over
        blob = _BLOB_RE.search(line, rest)
        return Message(level, runner_blob=blob.group(1) if blob else None)
    if msg == "loaded runners":
        count = _attr(line, "count", rest)
        # isdecimal, not isdigit: int() refuses a superscript digit like "²"
        return Message(level, loaded_runners=int(count) if count.isdecimal() else None)
    if msg == "server config" or msg.startswith("Listening on "):
        stream.seen = None
        return _STARTS[level]
    if msg in _RUNNER_SELF_START_MSGS or msg.startswith(_READY_MSGS):
        stream.seen = None
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


def _parse_slog(line: str, at: int, stream: LogStream) -> Message | Malformed:
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
    return _message(level, msg, line, m + 5 + len(msg), stream)


def _parse_stdlog(line: str, stream: LogStream) -> Message | None:
    found = _STDLOG_RE.search(line)
    if found is None:
        return None
    word, text = found.groups()
    if text.startswith("error starting llama runner: "):  # the verdict on a load (2023)
        level = _LEVEL_MAP[word] if word else "error"
        if not _counts(stream, _VERDICT):
            return _PLAIN[level]
        return _ERRORS[level, _memory_or("load_failed", text)]
    level = _LEVEL_MAP[word] if word else "info"
    if text.startswith("server config"):
        stream.seen = None
        return Message(level, server_start=True)
    if text.startswith(("starting llama runner", "llama runner started in ", "Listening on ")):
        stream.seen = None
    return Message(level)


# --- the runner's own output ----------------------------------------------------------------

# A runner line is a failure when it says one of the things below (the table in the module
# docstring). A line whose text says memory ran out (_says_oom) is out_of_memory whatever else
# it says; otherwise the first class below that it matches gives its kind: the meaning decides,
# not the wording of one era.
#
# Where a runner's own text begins: the start of the line, or after a journald / syslog prefix
# ("ollama[123]: "), docker compose's "ollama  | ", a docker or CRI timestamp, a JSON "msg":".
_AT: Final = r"(?:^|(?<=[:|\]\dZFP-] )|(?<=\":\"))"
# A model could not be loaded (llama.cpp in every era: "llama_model_load: error loading model:
# ...", "llama_load_model_from_file: failed to load model", "common_init_: failed to create
# context with model", "srv load_model: failed to create_context", "llama_init_from_model:
# failed to initialize the context", "main: exiting due to model loading error"; llama.cpp's
# own server before 0.4: {"level":"ERR",...,"msg":"unable to load model"}; the Go runner:
# "panic: unable to load model: <path>", "panic: failed to load model: ...").
_LOAD: Final = (
    r"error loading model|(?:failed|unable) to load model|exception loading model"
    r"|failed to create[ _]context|failed to initiali[sz]e the context"
    r"|exiting due to model loading error|llama_(?:init_from_model|new_context_with_model): failed"
)
# (kind, what says it), in the order of precedence when a line says more than one thing
# ("panic: unable to load model" is a load failure; "terminate called after throwing an
# instance of 'vk::DeviceLostError'" a GPU error).
_FAULT_CLASSES: Final = (
    # GPU runtime errors that are not about memory: ggml's CUDA/ROCm/MUSA error report
    # ("CUDA error: an illegal memory access was encountered", "ROCm error: invalid device
    # function", 2023's "CUDA error 3 at ggml-cuda.cu:5661: initialization error", and ggml's
    # abort line "ggml-cuda.cu:96: CUDA error"); a GPU that would not initialise (not: "no
    # CUDA-capable device is detected", which is a host without one); Vulkan's lost device.
    # (Metal's "command buffer 0 failed with status 5" is not one: the line after it says
    # why, usually "error: Insufficient Memory".)
    (
        "gpu_error",
        re.compile(
            _AT + r"(?:CUDA|ROCm|HIP|MUSA|SYCL|CANN|cuBLAS|CUBLAS|hipBLAS|rocBLAS) error\b"
            r"|ggml_cuda_init: failed to initiali[sz]e (?!.*-capable device)"
            r"|vk::DeviceLostError|ErrorDeviceLost|VK_ERROR_DEVICE_LOST"
        ),
    ),
    ("load_failed", re.compile(_LOAD)),
    # The runner crashed: a ggml assertion or abort (GGML_ASSERT in both its forms, ggml_abort's
    # "file.c:123: fatal error"), an uncaught C++ exception, a C assertion, glibc's heap checks,
    # a Go panic, a fatal Go runtime error, a signal the Go runtime reports, a Windows exception.
    (
        "runner_terminated",
        re.compile(
            r"GGML_ASSERT|GGML_ABORT|terminate called |libc\+\+abi: terminating"
            r"|Assertion [`'\"‘].*[`'\"’] failed|Assertion failed:"
            r"|signal arrived during (?:cgo|external code) execution"
            r"|[\w/\\.-]+\.(?:c|cc|cpp|cu|h|hpp|m|mm):\d+: fatal error"
            r"|" + _AT + r"(?:panic: |fatal error: |SIG[A-Z]{2,6}: [a-z]|\[signal SIG[A-Z]"
            r"|Exception 0x[0-9a-fA-F]+ 0x|double free or corruption|corrupted size vs)"
        ),
    ),
)

# The first line a failing runner writes, once: the GPU library's error report (ggml's "CUDA
# error: <what>", "ROCm error: ...", 2023's "CUDA error 3 at ggml-cuda.cu:5661: ..."; not its
# abort line "ggml-cuda.cu:96: CUDA error" that follows), a GPU or host buffer that could not be
# allocated. A second one is another failure, even with no sign of a new runner in between.
_REPORT_RE: Final = re.compile(
    _AT + r"(?:CUDA|ROCm|HIP|MUSA) error(?::| \d+ at )"
    r"|: allocating [\d.]+ MiB on device \d+: \w*[Mm]alloc failed"
    r"|ggml_aligned_malloc: insufficient memory|ggml_vulkan: Device memory allocation of size"
)

# Lines that never report a failure, whatever words are in them: model metadata (a model may
# be named "error-bot"; a chat template may say anything), request and response dumps
# (prompt text), the client's "Error: ..." (cobra, not the server), and llama.cpp's
# recoverable allocation failure ("..., retrying without pipeline parallelism", which Ollama
# itself waits out, llm/status.go).
_NOT_FAULT_RE: Final = re.compile(
    r"print_info: |llm_load_print_meta: |_loader: - |log_server_r|retrying|" + _AT + r"Error: "
)
# Lines a runner writes when it starts, loads a model or serves one: a new process or a healthy
# one, so the fault in progress is over (read only while one is open).
_HEALTHY_RE: Final = re.compile(
    r"llama_model_loader: loaded|print_info: |llm_load_print_meta: |load_tensors: "
    r"|llm_load_tensors: |llama_server: initializing|main: build|system_info: "
    r"|ggml_cuda_init: found|load_backend: loaded|model loaded|listening on"
    r"|HTTP server listening|all slots are idle"
)


def _is_fault_text(line: str) -> bool:
    """Cheap screen: whether ``line`` has any word a failure line has (most have none)."""
    return (
        "rror" in line
        or "fail" in line
        or "emory" in line
        or "ERR" in line
        or "panic" in line
        or "SIG" in line
        or "signal" in line
        or "GGML_A" in line
        or "terminat" in line
        or "xception" in line
        or "corrupt" in line
    )


def runner_fault(line: str) -> str | None:
    """The kind of failure a line of runner output reports, or None (most lines).

    Per line, with no memory: :func:`parse_line` counts only the first line of a failure.
    """
    if " | task " in line:
        # llama-server's per-request slot lines (``slot <fn>: id 0 | task 7 | ...``, most of
        # what it writes): a request's progress or its own error, never a runner's failure
        return None
    if not _is_fault_text(line) or _NOT_FAULT_RE.search(line):
        return None
    if _says_oom(line.lower()):
        return "out_of_memory"
    for kind, says in _FAULT_CLASSES:
        if says.search(line):
            return kind
    return None


def _parse_raw(line: str, stream: LogStream) -> Message | None:
    kind = runner_fault(line)
    if kind is None:
        if stream.seen is not None and _HEALTHY_RE.search(line):
            stream.seen = None
        return None
    part = _REPORT if _REPORT_RE.search(line) else _RAW
    return _ERRORS["error", kind] if _counts(stream, part) else None


# --- llama-server timings -------------------------------------------------------------------

# Matched where " time = " begins: lookbehinds read the phase word before it (at any width,
# from the start of the line on), then the numbers follow. "prompt eval" is tried before
# "eval", which it also ends with.
_TIMING_AT: Final = re.compile(
    r"(?:(?<=prompt eval)()|(?<=total)()|(?<=eval)) time = +(\d+(?:\.\d+)?) ms / +(\d+) tok"
).match


def _parse_timing(line: str, at: int, stream: LogStream) -> Timing | None:
    """``at`` is where " time = " starts; the word before it names the phase."""
    found = _TIMING_AT(line, at)
    if found is None:
        return None
    if stream.seen is not None:  # a completion ended normally: the runner is healthy
        stream.seen = None
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
    """Parse one line of the process's log stream; None when it is nothing we count.

    Most runner output gives None; the first line of a runner failure gives
    ``Message("error", error_kind=...)`` and the lines after it that report the same failure
    give nothing (see the module docstring).
    """
    # Most lines carry no marker at all: ``in`` answers that without a method call, and the
    # position is looked for only on a hit. The order is the priority when markers mix.
    if "[GIN] " in line:
        at = 0 if line.startswith("[GIN] ") else _gin_marker(line)
        if at < 0:
            # a GIN-looking text inside another line (a prompt quoted in a debug line)
            return _parse_rest(line, _STREAM)
        # colours (rare: gin colours a terminal only) are stripped by the general path
        found = None if "\x1b" in line else _GIN_FAST(line, at)
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
        return _parse_gin(line, at)
    return _parse_rest(line, _STREAM)


def _parse_rest(line: str, stream: LogStream) -> Event | None:
    """Every line that is not a request line, in the order the markers take priority."""
    if "level=" in line:
        return _parse_slog(line, line.find("level="), stream)
    if " time = " in line:
        return _parse_timing(line, line.find(" time = "), stream)
    if ".go:" in line:
        event = _parse_stdlog(line, stream)
        if event is not None:
            return event
    return _parse_raw(line, stream)


_STREAM: Final = LogStream()

#: llama-server's slot lines (v0.30+, FACTS.md §2.7): a request starts on a slot, ends on it
_SLOT_START: Final = "| processing task"
_SLOT_END: Final = "| stop processing"
_SLOTS_IDLE: Final = "update_slots: all slots are idle"


def slot_change(line: str) -> int | None:
    """What a runner's slot line says about requests in flight: ``+1`` a request started on a
    slot, ``-1`` one ended, ``0`` every slot of that runner is idle; None for any other line.

    The substring tests run only on lines that mention ``slot`` (one ``in`` for all others).
    """
    if "slot" not in line:
        return None
    if _SLOT_START in line:
        return 1
    if _SLOT_END in line:
        return -1
    if _SLOTS_IDLE in line:
        return 0
    return None



def reset_stream() -> None:
    """Forget the fault in progress of :func:`parse_line`'s stream (a new log begins)."""
    _STREAM.forget()


__all__ = [
    "LEVELS",
    "RUNNER_ERROR_KINDS",
    "Event",
    "LogStream",
    "Malformed",
    "Message",
    "Request",
    "Timing",
    "parse_go_duration",
    "parse_line",
    "reset_stream",
    "runner_fault",
    "slot_change",
]
