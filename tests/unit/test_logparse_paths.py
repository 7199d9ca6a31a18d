"""The parser's fast paths against its general ones: every form of a line gives one event.

parse_line() takes the common form of each kind of line in as few steps as it can and hands
any other form to a general path. These tests write the same request, message or timing in
a common and an uncommon form (colours on, JSON-escaped, an odd width, a cold cache) and
require the same event from both, so a fast path can never drift from the format's meaning.
Lines come from the simulator's formatters where it has one (the producer side of FACTS.md).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ollama_watchdog.ollama.logparse import (
    Malformed,
    Message,
    Request,
    Timing,
    parse_line,
    reset_stream,
)
from ollama_watchdog.ollama.routes import METHODS, ROUTES, route_label
from ollama_watchdog.simulator.logformat import (
    format_gin_line,
    format_slog_line,
    format_timing_lines,
)

WHEN = datetime(2026, 8, 1, 12, 0, 0)


@pytest.fixture(autouse=True)
def _fresh_stream() -> None:
    """Each test starts a log of its own: no runner fault of an earlier test is in progress."""
    reset_stream()


PATHS = sorted(r.template.replace(":", "x") for r in ROUTES)


def coloured(line: str, code: int, method: str) -> str:
    """The same line as gin prints it to a terminal (colours around status and method)."""
    line = line.replace(f"| {code:3d} |", f"|\x1b[97;42m {code:3d} \x1b[0m|", 1)
    return line.replace(f"| {method:<7} ", f"|\x1b[97;44m {method:<7} \x1b[0m", 1)


def json_escaped(line: str) -> str:
    """The same line as a GUI wrapper logs it inside a JSON string (real-logs.txt [19])."""
    escaped = line.replace("\\", "\\\\").replace('"', '\\"')
    return '{"level":30,"msg":"' + escaped + '\\n"}'


@given(
    st.sampled_from(PATHS),
    st.sampled_from(sorted(METHODS)),
    st.integers(100, 599),
    st.integers(min_value=0, max_value=3 * 3600 * 10**9),
    st.sampled_from(["127.0.0.1", "10.0.0.123", "2001:db8::1"]),
)
def test_a_request_is_the_same_event_in_every_form(
    path: str, method: str, code: int, ns: int, client: str
) -> None:
    plain = format_gin_line(WHEN, code, ns / 1e9, client, method, path + "?q=1")
    event = parse_line(plain)
    assert isinstance(event, Request)
    assert (event.method, event.route, event.code) == (method, route_label(path), code)
    for form in (coloured(plain, code, method), json_escaped(plain), "ollama  | " + plain):
        assert parse_line(form) == event, form
    # whole minutes and seconds above a minute, as gin truncates them
    want = ns / 1e9 if ns <= 60 * 10**9 else ns // 10**9
    assert event.seconds == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_many_distinct_paths_keep_every_label_right() -> None:
    """A scanner's stream of new URLs fills and empties the label cache; nothing drifts."""
    first = format_gin_line(WHEN, 200, 0.0015, "127.0.0.1", "POST", "/api/chat")
    assert parse_line(first) == Request("POST", "/api/chat", 200, 0.0015)
    for i in range(10_000):
        probe = format_gin_line(WHEN, 404, 0.5, "10.9.9.9", "GET", f"/wp-{i}.php")
        assert parse_line(probe) == Request("GET", "other", 404, 0.5)
    assert parse_line(first) == Request("POST", "/api/chat", 200, 0.0015)


def test_a_huge_url_is_parsed_like_a_short_one() -> None:
    line = format_gin_line(WHEN, 404, 0.002, "127.0.0.1", "GET", "/api/tags?" + "x" * 5000)
    assert parse_line(line) == Request("GET", "/api/tags", 404, 0.002)


def test_long_latencies_stay_exact_past_the_cache() -> None:
    """Whole-second latencies above a minute are remembered; thousands of them stay exact."""
    for secs in [*range(60, 9000, 1), 60, 61, 3599]:  # more than the cache holds, then again
        h, rest = divmod(secs, 3600)
        text = (f"{h}h" if h else "") + f"{rest // 60}m{rest % 60}s"
        line = format_gin_line(WHEN, 200, float(secs), "127.0.0.1", "POST", "/api/chat")
        assert f"| {text:>13} |" in line or f"|{text:>14} |" in line, line
        assert parse_line(line) == Request("POST", "/api/chat", 200, float(secs)), line


@pytest.mark.parametrize(
    ("prefix", "event"),
    [
        # the first marker opens a request line: the text up to its first "|" is the date
        ("[GIN] x", Request("GET", "/api/tags", 200, 0.0015)),
        # the first marker does not: the line is malformed, whatever follows
        ("[GIN] 404 |", Malformed("gin")),
        # the first marker is not where gin writes it: no request, whatever follows
        ("junk [GIN] x", None),
        ("junk [GIN] | ", None),
    ],
)
def test_the_first_gin_marker_decides(prefix: str, event: Request | Malformed | None) -> None:
    line = prefix + format_gin_line(WHEN, 200, 0.0015, "127.0.0.1", "GET", "/api/tags")
    assert parse_line(line) == event
    # the general path (taken for coloured lines) reads the same line the same way
    assert parse_line(line.replace("| GET", "|\x1b[0m GET", 1)) == event


# --- slog -----------------------------------------------------------------------------------

#: the substrings FACTS.md §2.5 (llm/status.go) and the scheduler's refusals call memory
OOM_TEXTS = [
    "out of memory",
    "out of device memory",
    "out-of-memory",
    "cudaMalloc failed",
    "hipMalloc failed",
    "failed to allocate",
    "allocation failed",
    "not enough memory",
    "insufficient memory",
    "VK_ERROR_OUT_OF_DEVICE_MEMORY",
    "ErrorOutOfMemory",
    "requires more system memory",
    "too large for system memory",
]


@pytest.mark.parametrize("text", OOM_TEXTS)
def test_every_memory_error_is_out_of_memory(text: str) -> None:
    line = format_slog_line(
        datetime(2026, 8, 1, tzinfo=UTC),
        "ERROR",
        "sched.go:734",
        "error loading llama server",
        [("error", f"llama-server process has terminated: {text.upper()} (exit 1)")],
    )
    assert parse_line(line) == Message("error", error_kind="out_of_memory")
    assert parse_line(json_escaped(line)) == Message("error", error_kind="out_of_memory")


@pytest.mark.parametrize(
    ("msg", "event"),
    [
        ("llama runner terminated", Message("info", error_kind="runner_terminated")),
        ("Load failed", Message("info", error_kind="load_failed")),
        ("server config", Message("info", server_start=True)),
        ("Listening on 127.0.0.1:11434 (version 0.5.7)", Message("info", server_start=True)),
        # starts like a classified message, is not one
        ("llama runner started in 29.96 seconds", Message("info")),
        ("Load failed!", Message("info")),
        ("Load", Message("info")),
    ],
)
@pytest.mark.parametrize("form", ["plain", "json", "journald"])
def test_messages_are_classified_in_every_form(msg: str, event: Message, form: str) -> None:
    line = format_slog_line(datetime(2026, 8, 1, tzinfo=UTC), "INFO", "x.go:1", msg, [])
    line = {
        "plain": line,
        "json": json_escaped(line),
        "journald": "Aug 01 12:00:00 box ollama[1]: " + line,
    }[form]
    assert parse_line(line) == event


def test_a_count_int_cannot_read_is_no_count() -> None:
    line = 'time=x level=INFO source=sched.go:1 msg="loaded runners" count=²'
    assert parse_line(line) == Message("info")


# --- timings --------------------------------------------------------------------------------


@given(
    st.floats(0, 10_000_000, allow_nan=False),
    st.integers(0, 99_999),
    st.floats(0, 10_000_000, allow_nan=False),
    st.integers(0, 99_999),
)
def test_timings_are_the_same_in_both_forms_and_any_width(
    prompt_ms: float, prompt_tokens: int, eval_ms: float, eval_tokens: int
) -> None:
    per_line = format_timing_lines(0, 7, prompt_ms, prompt_tokens, eval_ms, eval_tokens)
    block = format_timing_lines(0, 7, prompt_ms, prompt_tokens, eval_ms, eval_tokens, block=True)
    events = [e for e in map(parse_line, per_line) if isinstance(e, Timing)]
    assert [e for e in map(parse_line, block) if e is not None] == events
    # the phase word without llama-server's padding (another width, another path)
    assert [parse_line(line.lstrip()) for line in block[1:]] == events
    assert len(events) == 3
    assert [parse_line(line) for line in per_line[3:]] == [None]  # "graphs reused"
    assert [(e.phase, e.tokens) for e in events] == [
        ("prompt", prompt_tokens),
        ("eval", eval_tokens),
        ("total", prompt_tokens + eval_tokens),
    ]
    assert events[0].seconds == pytest.approx(round(prompt_ms, 2) / 1000, abs=1e-9)
