"""The log parser against every real excerpt, Go's duration grammar and hostile input.

The expectations per excerpt of ``real-logs.txt`` were written by reading the excerpt (its
lines are quoted in that file), not by running the parser.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.facts import REAL_LOGS

from ollama_watchdog.ollama.logparse import (
    LEVELS,
    RUNNER_ERROR_KINDS,
    LogStream,
    Malformed,
    Message,
    Request,
    Timing,
    parse_go_duration,
    parse_line,
    reset_stream,
)
from ollama_watchdog.ollama.routes import METHODS, OTHER, ROUTE_LABELS, ROUTES, route_label


@pytest.fixture(autouse=True)
def _fresh_stream() -> None:
    """Each test starts a log of its own: no runner fault of an earlier test is in progress."""
    reset_stream()


def excerpts() -> dict[str, list[str]]:
    """Excerpt id -> its log lines (header, context and separator lines removed)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    in_body = False
    for line in REAL_LOGS.read_text(encoding="utf-8").splitlines():
        head = re.match(r"===== \[(\d+)\]", line)
        if head:
            current = blocks.setdefault(head.group(1), [])
            in_body = False
        elif current is not None and not in_body:
            in_body = line.startswith("-----")
        elif current is not None and not line.startswith("---- ("):
            current.append(line)
    return blocks


@dataclass
class Seen:
    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    levels: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    blobs: list[str] = field(default_factory=list)
    loaded: list[int] = field(default_factory=list)
    starts: int = 0
    malformed: int = 0


def summarise(lines: list[str]) -> Seen:
    reset_stream()  # each excerpt is a log of its own
    seen = Seen()
    for line in lines:
        event = parse_line(line)
        if isinstance(event, Request):
            seen.requests[(event.method, event.route, event.code)] += 1
            seen.seconds.append(event.seconds)
        elif isinstance(event, Message):
            seen.levels[event.level] += 1
            if event.error_kind:
                seen.errors[event.error_kind] += 1
            if event.runner_blob:
                seen.blobs.append(event.runner_blob)
            if event.loaded_runners is not None:
                seen.loaded.append(event.loaded_runners)
            seen.starts += event.server_start
        elif isinstance(event, Malformed):
            seen.malformed += 1
        else:
            assert event is None or isinstance(event, Timing)
    return seen


GEN, CHAT, SHOW, TAGS, PS = "/api/generate", "/api/chat", "/api/show", "/api/tags", "/api/ps"
DDE5 = "dde5aa3fc5ffc17176b5e8bdc82f587b24b2678c6c66101bf7da77af9f7ccdff"


@dataclass(frozen=True)
class Expect:
    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    seconds: tuple[float, ...] = ()  # every latency, in line order
    levels: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    blobs: tuple[str, ...] = ()
    loaded: tuple[int, ...] = ()
    starts: int = 0


EXPECTED: dict[str, Expect] = {
    # log.Printf era: the runner failure is a load failure; 7 requests
    "01": Expect(
        {("POST", GEN, 500): 1, ("HEAD", "/", 200): 4, ("POST", SHOW, 200): 2},
        (1.332430527, 41.983e-6, 37.102e-6, 816.071e-6, 35.097e-6, 855.153e-6, 43.59e-6),
        {"error": 1, "info": 1},
        {"load_failed": 1},
    ),
    # French journald month 'janv.'
    "02": Expect(
        {("POST", GEN, 200): 2, ("HEAD", "/", 200): 3, ("GET", PS, 200): 2, ("POST", SHOW, 200): 1},
        (
            32.779561288,
            971.777e-6,
            1.193025e-3,
            16.52e-6,
            0.219033913,
            0.200665714,
            15.85e-6,
            21.16e-6,
        ),
    ),
    "04": Expect(
        {("POST", "/v1/chat/completions", 200): 3}, (3.738662321, 0.837348699, 26.426482449)
    ),
    # pre-0.7 first line through Go's log package, then slog; 'Listening on' starts too
    "05": Expect({("POST", CHAT, 404): 1}, (414.019e-6,), {"info": 4}, starts=2),
    # latencies above one minute are whole seconds
    "07": Expect({("POST", CHAT, 200): 6}, (70, 72, 73, 72, 73, 72), {"info": 5}),
    # 403 with '0s'
    "08": Expect(
        {("GET", TAGS, 200): 3, ("POST", GEN, 403): 3},
        (6.2826e-3, 0, 2.1904e-3, 0, 1.0021e-3, 0),
        {"info": 6},
        starts=2,
    ),
    "10": Expect(levels={"info": 5}, blobs=(DDE5,), loaded=(1,)),
    "11": Expect(levels={"info": 3}),
    "13": Expect(levels={"info": 2}),  # raw ggml lines around are nothing
    "14": Expect(levels={"info": 3}),  # the log UI's own 'info' lines are nothing
    "16": Expect({("POST", GEN, 503): 4}, (42.044125e-3, 43.173125e-3, 44.790209e-3, 45.941833e-3)),
    "17": Expect(
        {("POST", CHAT, 500): 10},
        (1799, 1799, 1799, 1111, 4.709180529, 1800, 1800, 1799, 19.409145891, 49.968259888),
    ),
    # each line wrapped in a GUI's JSON record, quotes escaped as \"; one fault: the runner
    # died during the load (GGML_ASSERT), counted at 'llama runner terminated'; the verdict
    # 'error loading llama server' that follows is the same fault
    "19": Expect(
        {("POST", CHAT, 500): 1},
        (1.5308332,),
        {"info": 1, "error": 2},
        {"runner_terminated": 1},
    ),
    "20": Expect(),  # a goroutine dump is full of '.go:' but holds no log line
    # 'signal: killed' is not called out-of-memory: it may as well be a kill -9
    "22": Expect({("POST", GEN, 500): 1}, (168,), {"info": 5, "error": 1}, {"load_failed": 1}),
    "23": Expect(
        {("POST", CHAT, 500): 1, ("GET", "/api/version", 200): 1},
        (24.154367033, 313.555e-6),
        {"info": 1, "error": 1},
        {"load_failed": 1},
    ),
    "25": Expect(levels={"info": 4}),  # the CLI's 'Error: 500 ...' is a client line
    # one fault, counted at the runner's 'cudaMalloc failed: out of memory' (an error
    # message of its own); 'error loading model', 'terminate called' and the server's
    # 'error loading llama server' quoting it are the same fault (the last still an error)
    "26": Expect(levels={"error": 2}, errors={"out_of_memory": 1}),
    # raw runner output: cudaMalloc out of memory, then 'error loading model: unable to
    # allocate', 'failed to load model', a Go panic and its goroutine dump: one fault
    "28": Expect(levels={"error": 1}, errors={"out_of_memory": 1}),
    # host RAM: 'failed to allocate buffer' twice, 'error loading model', 'failed to load
    # model', a Go panic: one fault
    "29": Expect(levels={"error": 1}, errors={"out_of_memory": 1}),
    # the WARN precedes the refusal; only 'Load failed' (an INFO line) counts as the error
    "31": Expect(levels={"warn": 1, "info": 2}, errors={"out_of_memory": 1}),
    # lines cut by the pager ('>') still give their level
    "32": Expect(levels={"debug": 2, "warn": 1}),
    # a shell prompt glued in front of a gin line
    "34": Expect(
        {("HEAD", "/", 200): 1, ("POST", SHOW, 200): 1}, (42.709e-6, 48.614366e-3), {"info": 3}
    ),
    # C output glued in front of 'time=' without a newline
    "35": Expect(levels={"warn": 2, "info": 3}, errors={"gpu_error": 1}),
    "37": Expect(
        {("GET", TAGS, 200): 1, ("POST", SHOW, 200): 7},
        (
            524.39e-6,
            5.17857e-3,
            9.942254e-3,
            16.881746e-3,
            17.335899e-3,
            19.825733e-3,
            25.595439e-3,
            25.161915e-3,
        ),
        {"info": 2},
    ),
    "38": Expect(levels={"info": 2}),
    "40": Expect(levels={"info": 3}),  # the user removed 'time=': 'level=' is enough
    "41": Expect(levels={"info": 1, "debug": 7}, starts=1),
    "43": Expect(levels={"info": 4}, starts=2),
    "44": Expect(levels={"info": 3}, starts=1),  # [GIN-debug] route table is not a request
    "46": Expect(),
    "47": Expect(),
    # the Windows tray app's own crash loop: warnings and errors, but no runner failure
    "49": Expect(levels={"warn": 5, "error": 4}),
    "50": Expect(),
    "52": Expect(),  # client-side error strings
}


def test_every_excerpt_has_an_expectation() -> None:
    assert sorted(excerpts()) == sorted(EXPECTED)


@pytest.mark.parametrize("excerpt", sorted(EXPECTED))
def test_real_excerpt(excerpt: str) -> None:
    seen = summarise(excerpts()[excerpt])
    want = EXPECTED[excerpt]
    assert dict(seen.requests) == want.requests
    assert seen.seconds == pytest.approx(list(want.seconds), rel=1e-12, abs=1e-15)
    assert dict(seen.levels) == want.levels
    assert dict(seen.errors) == want.errors
    assert tuple(seen.blobs) == want.blobs
    assert tuple(seen.loaded) == want.loaded
    assert seen.starts == want.starts
    assert seen.malformed == 0


def test_every_real_gin_line_is_a_request() -> None:
    lines = [line for lines in excerpts().values() for line in lines if "[GIN] " in line]
    assert len(lines) == 59
    assert all(isinstance(parse_line(line), Request) for line in lines)


# --- gin lines ------------------------------------------------------------------------------

PLAIN = (
    '[GIN] 2024/11/08 - 09:00:15 | 503 |   17.155908ms |     192.169.0.5 | POST     "/api/generate"'
)


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "Dec 24 23:48:35 host ollama[3974]: ",
        "de des. 24 23:48:35 host ollama[3974]: ",
        "10月 19 15:17:57 VM9890-ubuntu ollama[89]: ",
        "июл 02 10:00:01 box ollama[1]: ",
        "2025-03-06 11:42:21 ",
        "ollama  | ",
        "ollama-1  | 2025-03-06T11:42:21.123456789Z ",
        "2025-03-06T11:42:21.123456789Z stdout F ",
        "2024-11-21T18:09:24+0100 box ollama[1]: ",
        "Dec 24 23:48:35.123456 host ollama[3974]: ",
        "huskeyw@timmy:~$ ",
        '{"level":30,"time":1752516972752,"pid":10104,"hostname":"Ryzen7","msg":"',
    ],
)
def test_prefixes_do_not_matter(prefix: str) -> None:
    assert parse_line(prefix + PLAIN) == Request("POST", "/api/generate", 503, 0.017155908)


@pytest.mark.parametrize(
    "line",
    [
        # issue 18: a debug line quoting a prompt that holds a GIN-looking text is no request
        'time=2025-03-05T06:58:54.116Z level=DEBUG source=server.go:1 msg="chat request"'
        ' prompt="' + PLAIN.replace('"', '\\"') + '"',
        "Dec 24 23:48:35 host ollama[3974]: time=2025-03-05T06:58:54.116Z level=DEBUG"
        ' source=routes.go:1 msg=prompt prompt="say ' + PLAIN.replace('"', '\\"') + '"',
        # a runner echoing a prompt, and text glued in front of the marker by anyone
        "srv  params_from_: prompt: " + PLAIN,
        'llama_server: {"prompt":"' + PLAIN.replace('"', '\\"') + '"}',
        "ggml_cuda_init: found 1 CUDA devices" + PLAIN,
        "Dec 24 23:48:35 host ollama[3974]: user says " + PLAIN,
        "x" * 600 + " " + PLAIN,
    ],
)
def test_a_gin_marker_not_where_gin_writes_it_is_no_request(line: str) -> None:
    event = parse_line(line)
    assert not isinstance(event, (Request, Malformed))
    if "level=DEBUG" in line:
        assert event == Message("debug")  # the line is what it is: a debug message
    assert LogStream().parse(line) == event


def test_ansi_colours_are_ignored() -> None:
    coloured = (
        "[GIN] 2024/11/08 - 09:00:15 |\x1b[97;41m 503 \x1b[0m|   17.155908ms |"
        '     192.169.0.5 |\x1b[97;46m POST    \x1b[0m "/api/generate"'
    )
    assert parse_line(coloured) == parse_line(PLAIN)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/tags?x=1", "/api/tags"),
        ("/api/blobs/sha256:" + "a" * 64, "/api/blobs/:digest"),
        ("/v1/models/llama3.2:latest", "/v1/models/:model"),
        ("/v1/models/", OTHER),
        ("/v1/models/a/b", OTHER),
        ("/api/tags/", OTHER),
        ("/wp-login.php", OTHER),
        ("/../../etc/passwd", OTHER),
        ("/api/generate%00", OTHER),
    ],
)
def test_paths_map_to_fixed_routes(path: str, route: str) -> None:
    line = (
        f'[GIN] 2026/01/20 - 23:15:46 | 404 |     971.777µs |       127.0.0.1 | GET      "{path}"'
    )
    event = parse_line(line)
    assert isinstance(event, Request)
    assert event.route == route


def test_unknown_method_is_other() -> None:
    line = '[GIN] 2026/01/20 - 23:15:46 | 405 |        1.2µs |       127.0.0.1 | PROPFIND "/"'
    assert parse_line(line) == Request(OTHER, "/", 405, 1.2e-6)


@pytest.mark.parametrize(
    "line",
    [
        "[GIN] 2026/01/20 - 23:15:46 | 200 | garbage |",
        '[GIN] 2026/01/20 - 23:15:46 | 200 |      -1s |       127.0.0.1 | GET      "/"',
        '[GIN] 2026/01/20 - 23:15:46 | 200 |     infs |       127.0.0.1 | GET      "/"',
        "time=2025-01-01T00:00:00.000Z level=LOUD msg=x",
    ],
)
def test_marked_but_broken_lines_are_malformed(line: str) -> None:
    assert isinstance(parse_line(line), Malformed)


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("41.983µs", 41.983e-6),
        ("41.983μs", 41.983e-6),  # Greek mu
        ("17.155908ms", 17.155908e-3),
        ("1.33s", 1.33),
        ("2m48s", 168.0),
        ("1h2m3s", 3723.0),
        ("1m0.5s", 60.5),
        ("850ns", 850e-9),
        ("32.779561288s", 32.779561288),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("text", ["", "s", "1", "1.s", "-1s", "1e3s", "1_0s", "nans", "1d", "m1s"])
def test_not_go_durations(text: str) -> None:
    assert parse_go_duration(text) is None


def go_duration(ns: int) -> str:
    """Go's Duration.String(), written from its documented output (test reference only)."""
    if ns == 0:
        return "0s"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _frac(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return _frac(ns, 1_000_000) + "ms"
    h, rest = divmod(ns, 3_600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    return out + _frac(rest, 10**9) + "s"


def _frac(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    digits = str(frac).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


@given(st.integers(min_value=0, max_value=100 * 3600 * 10**9))
def test_duration_round_trip(ns: int) -> None:
    assert parse_go_duration(go_duration(ns)) == pytest.approx(ns / 1e9, rel=1e-12, abs=1e-12)


# --- slog and timing lines ------------------------------------------------------------------


def test_runner_start_and_count_v030() -> None:
    blob = "a" * 64
    start = parse_line(
        "time=2026-08-15T15:45:11.755+12:00 level=INFO source=llama_server.go:433"
        f' msg="starting llama-server" cmd="/usr/local/lib/ollama/llama-server --model'
        f' /usr/share/ollama/.ollama/models/blobs/sha256-{blob} --port 40001 --host 127.0.0.1"'
    )
    assert start == Message("info", runner_blob=blob)
    count = parse_line(
        "time=2026-08-15T15:45:12.000+12:00 level=INFO source=sched.go:500"
        ' msg="loaded runners" count=2'
    )
    assert count == Message("info", loaded_runners=2)


@pytest.mark.parametrize(
    ("msg", "error", "kind"),
    [
        ("llama-server terminated", "exit status 2", "runner_terminated"),
        (
            "error loading llama server",
            "llama-server process has terminated: exit status 1",
            "load_failed",
        ),
        (
            "error loading llama server",
            "llama-server reported out-of-memory during startup: CUDA error",
            "out_of_memory",
        ),
        (
            "error loading llama server",
            "timed out waiting for llama-server to start - last error",
            "load_timeout",
        ),
        # the runner answered with an error; "EOF" would be the runner gone (a crash)
        ("llama-server completion error", "context size exceeded", "completion_failed"),
        (
            "llama-server completion error",
            'Post \\"http://127.0.0.1:1/completion\\": EOF',
            "runner_terminated",
        ),
        (
            "runtime OOM detected; expiring loaded models to clear memory before next request",
            "",
            "out_of_memory",
        ),
    ],
)
def test_runner_errors_v030(msg: str, error: str, kind: str) -> None:
    line = f'time=2026-08-01T10:00:00.000Z level=ERROR source=x.go:1 msg="{msg}" error="{error}"'
    assert parse_line(line) == Message("error", error_kind=kind)


PER_LINE = """\
slot print_timing: id  0 | task 160 | prompt eval time =     751.87 ms /    25 tokens (   30.07 ms per token,    33.25 tokens per second)
slot print_timing: id  0 | task 160 |        eval time =    5729.20 ms /    96 tokens (   60.31 ms per token,    16.58 tokens per second)
slot print_timing: id  0 | task 160 |       total time =    6481.07 ms /   121 tokens
slot print_timing: id  0 | task 160 |    graphs reused =         95"""  # noqa: E501
BLOCK = """\
slot print_timing: id  0 | task 970 | 
prompt eval time =     751.87 ms /    25 tokens (   30.07 ms per token,    33.25 tokens per second)
       eval time =    5729.20 ms /    96 tokens (   60.31 ms per token,    16.58 tokens per second)
      total time =    6481.07 ms /   121 tokens"""  # noqa: W291


@pytest.mark.parametrize("text", [PER_LINE, BLOCK])
def test_timing_lines_both_forms(text: str) -> None:
    events = [e for e in map(parse_line, text.splitlines()) if e is not None]
    assert events == [
        Timing("prompt", 0.75187, 25),
        Timing("eval", 5.7292, 96),
        Timing("total", 6.48107, 121),
    ]


def test_inf_tokens_per_second_does_not_matter() -> None:
    line = "prompt eval time =       0.00 ms /     0 tokens (     nan ms per token,      inf tokens per second)"  # noqa: E501
    assert parse_line(line) == Timing("prompt", 0.0, 0)


# --- bounded labels, whatever the input -----------------------------------------------------


def test_route_set_is_fixed() -> None:
    assert {r.template for r in ROUTES} | {OTHER} == ROUTE_LABELS
    assert route_label("/") == "/"


@given(st.text(max_size=300))
def test_any_text_gives_bounded_labels(text: str) -> None:
    for line in (text, PLAIN[:40] + text, "time=x level=" + text, "[GIN] " + text):
        event = parse_line(line)
        if isinstance(event, Request):
            assert event.method in METHODS | {OTHER}
            assert event.route in ROUTE_LABELS
            assert 100 <= event.code <= 999 or event.code < 100
        elif isinstance(event, Message):
            assert event.level in LEVELS
            assert event.error_kind is None or event.error_kind in RUNNER_ERROR_KINDS


@given(
    st.sampled_from([*sorted(METHODS), "BREW"]),
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters='"\\'), max_size=80
    ),
    st.integers(100, 599),
)
def test_scanner_paths_never_make_new_routes(method: str, path: str, code: int) -> None:
    line = f'[GIN] 2026/01/20 - 23:15:46 | {code} |      1.5ms |  10.0.0.1 | {method:<7}  "/{path}"'
    event = parse_line(line)
    assert isinstance(event, Request)
    assert event.route in ROUTE_LABELS
    assert event.code == code


# --- producer (the simulator) against parser ------------------------------------------------


def _simulator_formats() -> object:
    try:
        from ollama_watchdog import simulator

        if hasattr(simulator, "format_gin_line"):
            return simulator
    except ImportError:
        pass
    return pytest.importorskip("ollama_watchdog.simulator.logformat")


@given(
    st.sampled_from(sorted(r.template.replace(":", "x") for r in ROUTES)),
    st.sampled_from(sorted(METHODS)),
    st.integers(100, 599),
    st.integers(min_value=0, max_value=2 * 3600 * 10**9),
)
def test_simulator_gin_lines_parse_back(path: str, method: str, code: int, ns: int) -> None:
    from datetime import datetime

    fmt = _simulator_formats()
    line = fmt.format_gin_line(  # type: ignore[attr-defined]
        datetime(2026, 8, 1, 12, 0, 0), code, ns / 1e9, "127.0.0.1", method, path + "?q=1"
    )
    event = parse_line(line)
    assert isinstance(event, Request)
    assert (event.method, event.route, event.code) == (method, route_label(path), code)
    # gin truncates above one minute to whole seconds
    want = ns / 1e9 if ns <= 60 * 10**9 else ns // 10**9
    assert event.seconds == pytest.approx(want, rel=1e-9, abs=1e-9)


@given(st.integers(min_value=0, max_value=100 * 3600 * 10**9))
def test_simulator_durations_parse_back(ns: int) -> None:
    fmt = _simulator_formats()
    text = fmt.format_go_duration(ns / 1e9)  # type: ignore[attr-defined]
    assert parse_go_duration(text) == pytest.approx(ns / 1e9, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("block", [False, True])
def test_simulator_timing_lines_parse_back(block: bool) -> None:
    fmt = _simulator_formats()
    if not hasattr(fmt, "format_timing_lines"):
        pytest.skip("simulator has no format_timing_lines")
    lines = fmt.format_timing_lines(0, 7, 751.87, 25, 5729.2, 96, block=block)
    events = [e for e in map(parse_line, lines) if e is not None]
    assert events == [
        Timing("prompt", 0.75187, 25),
        Timing("eval", 5.7292, 96),
        Timing("total", pytest.approx(6.48107), 121),  # type: ignore[arg-type]
    ]


def test_simulator_slog_error_line_parses_back() -> None:
    from datetime import UTC, datetime

    fmt = _simulator_formats()
    line = fmt.format_slog_line(  # type: ignore[attr-defined]
        datetime(2026, 8, 1, tzinfo=UTC),
        "ERROR",
        "sched.go:734",
        "error loading llama server",
        [("error", "llama-server process has terminated: signal: killed")],
    )
    assert parse_line(line) == Message("error", error_kind="load_failed")
