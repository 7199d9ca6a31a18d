"""The simulator's log lines against Ollama's real ones (FACTS.md §2, real-logs.txt).

Real lines are parsed into values, formatted again by the simulator's formatters, and must
come back byte-for-byte; the simulator's own output must follow the same rules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from datetime import datetime

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from support.facts import REAL_LOGS
from support.sim import SimulatorProcess

from ollama_watchdog.simulator import (
    format_gin_line,
    format_go_duration,
    format_go_duration_ns,
    format_slog_line,
    format_timing_lines,
    gin_latency,
)

GIN_RE = re.compile(
    r"\[GIN\] (\d{4}/\d{2}/\d{2}) - (\d{2}:\d{2}:\d{2}) \| (\d{3}) \| +(\S+) \| +(\S*) \|"
    r' ([A-Z]+) +"((?:[^"\\]|\\.)*)"'
)
LATENCY_RE = re.compile(r"0s|\d+(\.\d+)?(ns|µs|ms|s)|(\d+h)?(\d+m)?\d+(\.\d+)?s")
SLOG_HEAD_RE = re.compile(
    r"time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d) level=(DEBUG|INFO|WARN|ERROR)"
    r" source=[\w.]+\.go:\d+ msg="
)
_UNITS = {"ns": 1e-9, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def real_lines() -> list[tuple[str, str]]:
    """(block id, line) for every line of real-logs.txt."""
    if not REAL_LOGS.exists():
        pytest.skip(f"{REAL_LOGS} not present (shared research notes)")
    block = ""
    out = []
    for line in REAL_LOGS.read_text(encoding="utf-8").splitlines():
        header = re.match(r"===== \[(\d+)\]", line)
        if header:
            block = header[1]
        out.append((block, line))
    return out


def parse_go_duration(text: str) -> float:
    return sum(float(n) * _UNITS[u] for n, u in re.findall(r"([\d.]+)(ns|µs|ms|h|m|s)", text))


def go_unquote(text: str) -> str:
    # Go's strconv.Quote output is valid JSON for everything these logs contain.
    value = json.loads(text)
    assert isinstance(value, str)
    return value


def parse_slog(line: str) -> tuple[datetime, str, str, str, list[tuple[str, object]]] | None:
    """Split a real slog line into its values; None when it was cut (unbalanced quotes)."""
    pairs: list[tuple[str, str]] = []
    for match in re.finditer(r'\s*([^\s=]+|"(?:[^"\\]|\\.)*")=("(?:[^"\\]|\\.)*"|\S*)', line):
        pairs.append((match[1], match[2]))
    rebuilt = " ".join(f"{k}={v}" for k, v in pairs)
    if rebuilt != line or len(pairs) < 4:
        return None
    try:
        values = [
            (go_unquote(k) if k.startswith('"') else k, go_unquote(v) if v.startswith('"') else v)
            for k, v in pairs
        ]
    except ValueError:  # a quoted value cut short
        return None
    (_, when), (_, level), (_, source), (_, msg) = values[:4]
    stamp = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return stamp, level, source, msg, list(values[4:])


# -- gin ----------------------------------------------------------------------------------------


def test_gin_lines_reproduce_every_real_line_byte_for_byte() -> None:
    compared = 0
    for block, line in real_lines():
        start = line.find("[GIN] ")
        match = GIN_RE.fullmatch(line[start:]) if start >= 0 else None
        if match is None or block == "07":  # [07]: the user edited the IP column
            continue
        date, clock, status, latency, ip, method, path = match.groups()
        when = datetime.strptime(f"{date} {clock}", "%Y/%m/%d %H:%M:%S")
        produced = format_gin_line(
            when, int(status), parse_go_duration(latency), ip, method, go_unquote(f'"{path}"')
        )
        assert produced == line[start:]
        compared += 1
    assert compared >= 50  # real-logs.txt: 60 [GIN] lines, 6 in [07], 1 JSON-escaped in [19]


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (41_983, "41.983µs"),
        (16_520, "16.52µs"),
        (4_407_540, "4.40754ms"),
        (1_332_430_527, "1.332430527s"),
        (60_000_000_000, "1m0s"),
        (3_723_000_000_000, "1h2m3s"),
        (1_000, "1µs"),
        (-1_500_000, "-1.5ms"),
    ],
)
def test_go_duration_matches_gos_duration_string(ns: int, text: str) -> None:
    assert format_go_duration_ns(ns) == text


def test_gin_latency_truncates_above_one_minute_only() -> None:
    assert gin_latency(70.5) == "1m10s"
    assert gin_latency(1799.999) == "29m59s"
    assert gin_latency(59.5) == "59.5s"
    assert format_go_duration(70.5) == "1m10.5s"


@given(st.integers(min_value=0, max_value=10**14))
def test_go_duration_round_trips_and_fits_the_parsers_grammar(ns: int) -> None:
    text = format_go_duration_ns(ns)
    assert LATENCY_RE.fullmatch(text)
    assert round(parse_go_duration(text) * 1e9) == pytest.approx(ns, abs=max(ns * 1e-12, 1))


@given(
    st.floats(min_value=0, max_value=7200, allow_nan=False),
    st.sampled_from(["GET", "HEAD", "POST", "DELETE"]),
    st.from_regex(r"/api/[a-z]{1,10}(\?[a-z]=[0-9]{1,3})?", fullmatch=True),
)
def test_gin_line_parses_back_to_its_values(latency: float, method: str, path: str) -> None:
    line = format_gin_line(datetime(2026, 8, 21, 9, 5, 7), 200, latency, "127.0.0.1", method, path)
    match = GIN_RE.fullmatch(line)
    assert match is not None
    assert (match[1], match[2], match[3], match[6], match[7]) == (
        "2026/08/21",
        "09:05:07",
        "200",
        method,
        path,
    )
    assert len(line.split(" | ")[2]) == 13 or len(match[4]) > 13  # %13v, counted in runes


# -- slog ---------------------------------------------------------------------------------------


def test_slog_lines_reproduce_every_real_line_byte_for_byte() -> None:
    compared = 0
    for _, line in real_lines():
        start = line.find("time=")
        if start < 0 or not SLOG_HEAD_RE.match(line[start:]):
            continue
        parsed = parse_slog(line[start:])
        if parsed is None:  # cut by a pager or the excerpt
            continue
        when, level, source, msg, attrs = parsed
        assert format_slog_line(when, level, source, msg, attrs) == line[start:]
        compared += 1
    assert compared >= 70  # 75 of 82; the rest are cut by a pager or JSON-escaped


def test_slog_quotes_only_when_needed() -> None:
    when = datetime.fromisoformat("2025-03-05T06:58:54.116789+08:00")
    line = format_slog_line(
        when,
        "INFO",
        "x.go:1",
        "offload",
        [
            ("model", r"C:\Users\m"),
            ("empty", ""),
            ("path", 'a "b" c\\d'),
            ("count", 1),
            ("ok", True),
            ("progress", 0.95),
        ],
    )
    assert line == (
        r"time=2025-03-05T06:58:54.116+08:00 level=INFO source=x.go:1 msg=offload"
        r' model=C:\Users\m empty="" path="a \"b\" c\\d" count=1 ok=true'
        r" progress=0.95"
    )


# -- timing lines -------------------------------------------------------------------------------


def test_timing_lines_match_llama_cpp_format() -> None:
    lines = format_timing_lines(0, 160, 751.87, 25, 5729.20, 96)
    assert lines == [
        "slot print_timing: id  0 | task 160 | prompt eval time =     751.87 ms /    25 tokens"
        " (   30.07 ms per token,    33.25 tokens per second)",
        "slot print_timing: id  0 | task 160 |        eval time =    5729.20 ms /    96 tokens"
        " (   59.68 ms per token,    16.76 tokens per second)",
        "slot print_timing: id  0 | task 160 |       total time =    6481.07 ms /   121 tokens",
        "slot print_timing: id  0 | task 160 |    graphs reused =         95",
    ]
    block = format_timing_lines(0, 970, 751.87, 25, 5729.20, 96, block=True)
    assert block[0] == "slot print_timing: id  0 | task 970 | "
    assert block[1].startswith("prompt eval time =     751.87 ms /    25 tokens")
    assert block[3] == "      total time =    6481.07 ms /   121 tokens"


# -- the simulator's own output -------------------------------------------------------------------


def test_simulator_output_follows_the_real_formats(simulator: SimulatorProcess) -> None:
    response = requests.post(
        simulator.url + "/api/generate",
        json={"model": "llama3.2", "prompt": "hi", "stream": False},
        timeout=15,
    )
    final = response.json()
    requests.get(simulator.url + "/missing?q=1", timeout=15)
    simulator.wait_for_log(r'GET      "/missing\?q=1"$')
    for line in simulator.stdout_text().splitlines():
        match = GIN_RE.fullmatch(line)
        assert match is not None, line
        when = datetime.strptime(f"{match[1]} {match[2]}", "%Y/%m/%d %H:%M:%S")
        assert (
            format_gin_line(
                when,
                int(match[3]),
                parse_go_duration(match[4]),
                match[5],
                match[6],
                go_unquote(f'"{match[7]}"'),
            )
            == line
        )
    slog = [ln for ln in simulator.stderr_text().splitlines() if ln.startswith("time=")]
    assert len(slog) >= 10
    for line in slog:
        assert SLOG_HEAD_RE.match(line), line
        parsed = parse_slog(line)
        assert parsed is not None, line
        assert format_slog_line(parsed[0], parsed[1], parsed[2], parsed[3], parsed[4]) == line
    # The timing block carries the same numbers the API reported.
    timing = re.search(
        r"prompt eval time = +([\d.]+) ms / +(\d+) tokens.*\n.*eval time = +([\d.]+) ms / +(\d+)",
        simulator.stderr_text(),
    )
    assert timing is not None
    assert int(timing[2]) == final["prompt_eval_count"]
    assert int(timing[4]) == final["eval_count"]
    assert float(timing[1]) == round(final["prompt_eval_duration"] / 1e6, 2)
    assert float(timing[3]) == round(final["eval_duration"] / 1e6, 2)


def test_block_timing_form_and_local_offsets(
    simulator_factory: Callable[..., SimulatorProcess],
) -> None:
    env = dict(os.environ, TZ="Asia/Kolkata")
    sim = simulator_factory("--timing-form", "block", env=env)
    streamed = requests.post(
        sim.url + "/api/generate", json={"model": "llama3.2", "prompt": "hi"}, timeout=15
    )
    assert streamed.content.endswith(b"\n")
    ps = requests.get(sim.url + "/api/ps", timeout=15).json()["models"]
    assert ps[0]["expires_at"].endswith("+05:30")
    sim.wait_for_log(r"^slot print_timing: id  0 \| task 0 \| \n^prompt eval time = ")
    first = sim.stderr_text().splitlines()[0]
    assert re.match(r"time=\S+\.\d{3}\+05:30 level=INFO", first)
