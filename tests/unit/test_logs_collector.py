"""The logs collector: counters as a scrape sees them, model names, and the journald follower.

The journald follower runs a real subprocess: a stand-in ``journalctl`` (written below) that
prints recorded ``journalctl -o json`` records from a file, honours ``--after-cursor`` and
``--lines=0`` like the real one, and keeps following the file until it is killed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import generate_latest
from support.journal import stdout_entry_fields
from support.mounts import read_only
from support.registry import registry_of
from support.runnerlog import BLOB_A, BLOB_B, loaded, start_line, timing, write_manifest
from support.wait import wait_until

from ollama_watchdog import statefile
from ollama_watchdog.collectors.logs import LogsCollector, LogSourceError
from ollama_watchdog.collectors.logs.counters import LogCounters
from ollama_watchdog.collectors.logs.file import FileFollower
from ollama_watchdog.collectors.logs.follower import LineSplitter
from ollama_watchdog.collectors.logs.journal import JournalFollower, decode_message
from ollama_watchdog.collectors.logs.model_names import ModelNames
from ollama_watchdog.ollama.routes import STATUS_CODES

GIN = '[GIN] 2026/01/20 - 23:15:46 | {code} | {lat:>13} |       127.0.0.1 | {m:<7}  "{path}"'


def gin(code: int, lat: str, method: str, path: str) -> str:
    return GIN.format(code=code, lat=lat, m=method, path=path)


# --- counters -------------------------------------------------------------------------------


def test_requests_histogram_levels_errors_and_line_counts() -> None:
    counters = LogCounters()
    reg = registry_of(counters.families)
    counters.feed(
        [
            gin(200, "41.983µs", "HEAD", "/"),
            gin(200, "1.33s", "POST", "/api/chat"),
            gin(500, "2m48s", "POST", "/api/chat"),
            gin(404, "1ms", "GET", "/wp-admin/setup.php?step=1"),
            'time=2025-03-12T12:14:22.015Z level=ERROR source=sched.go:456 msg="error loading'
            ' llama server" error="llama runner process has terminated: signal: killed"',
            "time=2025-03-12T12:14:22.015Z level=WARN source=x.go:1 msg=hello",
            "llm_load_print_meta: max token length = 256",  # runner noise: read, not counted
            "[GIN] 2026/01/20 - 23:15:46 | what is this",  # a gin marker that does not parse
        ]
    )
    v = reg.get_sample_value
    assert v("ollama_http_requests_total", {"method": "HEAD", "route": "/", "code": "200"}) == 1
    chat = {"method": "POST", "route": "/api/chat"}
    assert v("ollama_http_requests_total", {**chat, "code": "200"}) == 1
    assert v("ollama_http_requests_total", {**chat, "code": "500"}) == 1
    assert v("ollama_http_requests_total", {"method": "GET", "route": "other", "code": "404"}) == 1
    assert v("ollama_http_request_duration_seconds_count", chat) == 2
    assert v("ollama_http_request_duration_seconds_sum", chat) == pytest.approx(169.33)
    assert v("ollama_http_request_duration_seconds_bucket", {**chat, "le": "1.0"}) == 0
    assert v("ollama_http_request_duration_seconds_bucket", {**chat, "le": "2.5"}) == 1
    assert v("ollama_http_request_duration_seconds_bucket", {**chat, "le": "120.0"}) == 1
    assert v("ollama_http_request_duration_seconds_bucket", {**chat, "le": "300.0"}) == 2
    assert v("ollama_http_request_duration_seconds_bucket", {**chat, "le": "+Inf"}) == 2
    assert v("ollama_log_messages_total", {"level": "error"}) == 1
    assert v("ollama_log_messages_total", {"level": "warn"}) == 1
    assert v("ollama_log_messages_total", {"level": "debug"}) == 0  # present before it happens
    assert v("ollama_runner_errors_total", {"kind": "load_failed"}) == 1
    assert v("ollama_runner_errors_total", {"kind": "out_of_memory"}) == 0
    assert v("ollama_watchdog_log_lines_total") == 8
    assert v("ollama_watchdog_log_lines_unparsed_total") == 1


def test_status_codes_are_a_fixed_set_whatever_the_log_says() -> None:
    # issue 18: codes 000-999 were all kept: 31 routes x 8 methods x 1000 codes, 247 387 series
    counters = LogCounters()
    reg = registry_of(counters.families)
    counters.feed([gin(code, "1ms", "GET", "/api/tags") for code in range(100, 1000)])
    counters.feed([gin(code, "1ms", "GET", "/api/tags") for code in (200, 503, 999)])
    samples = [
        s
        for fam in reg.collect()
        if fam.name == "ollama_http_requests"
        for s in fam.samples
        if s.name == "ollama_http_requests_total"
    ]
    codes = {s.labels["code"]: s.value for s in samples}
    assert set(codes) == {str(c) for c in STATUS_CODES} | {"other"}
    assert codes["200"] == 2 and codes["503"] == 2 and codes["499"] == 1
    assert codes["other"] == 900 - len(STATUS_CODES) + 1
    assert sum(codes.values()) == 903


def test_a_prompt_quoting_a_gin_line_is_no_request() -> None:
    # issue 18: a debug line quoting a prompt with a GIN-looking text was counted as a real 503
    counters = LogCounters()
    reg = registry_of(counters.families)
    fake = gin(503, "17.155908ms", "POST", "/api/generate").replace('"', '\\"')
    counters.feed(
        [
            'time=2025-03-05T06:58:54.116Z level=DEBUG source=routes.go:1 msg="chat request"'
            f' prompt="{fake}"',
            gin(200, "1ms", "POST", "/api/generate"),
        ]
    )
    gen = {"method": "POST", "route": "/api/generate"}
    assert reg.get_sample_value("ollama_http_requests_total", {**gen, "code": "503"}) is None
    assert reg.get_sample_value("ollama_http_requests_total", {**gen, "code": "200"}) == 1
    assert reg.get_sample_value("ollama_log_messages_total", {"level": "debug"}) == 1


def test_no_message_text_reaches_a_label() -> None:
    counters = LogCounters()
    counters.feed(
        [
            gin(200, "1s", "POST", "/api/generate?prompt=SECRET"),
            'time=2026-01-01T00:00:00.000Z level=ERROR source=x.go:1 msg="SECRET" error="SECRET"',
            "prompt eval time =      10.00 ms /     5 tokens (SECRET)",
        ]
    )
    text = "\n".join(str(s) for f in counters.families() for s in f.samples)
    assert "SECRET" not in text


def test_tokens_go_to_the_model_of_the_last_runner(tmp_path: Path) -> None:
    write_manifest(tmp_path, "registry.ollama.ai", "library", "llama3.2", "latest", BLOB_A)
    write_manifest(tmp_path, "hf.co", "someone", "qwen-gguf", "Q4_K_M", BLOB_B)
    counters = LogCounters(ModelNames(tmp_path))
    reg = registry_of(counters.families)
    counters.feed([start_line(BLOB_A), loaded(1), *timing(751.87, 25, 5729.20, 96)])
    counters.feed(timing(100.0, 10, 1000.0, 20))
    llama = {"model": "llama3.2:latest"}
    assert reg.get_sample_value("ollama_log_prompt_tokens_total", llama) == 35
    assert reg.get_sample_value("ollama_log_generated_tokens_total", llama) == 116
    assert reg.get_sample_value("ollama_log_prompt_eval_seconds_total", llama) == pytest.approx(
        0.85187
    )
    assert reg.get_sample_value("ollama_log_generation_seconds_total", llama) == pytest.approx(
        6.7292
    )
    assert reg.get_sample_value("ollama_log_timed_completions_total", llama) == 2

    # a second runner while the first is live: the owner of a timing line is unknowable
    counters.feed([start_line(BLOB_B), loaded(2), *timing(1.0, 1, 1.0, 1)])
    assert reg.get_sample_value("ollama_log_timed_completions_total", {"model": "unknown"}) == 1
    # the server restarted, then loaded the hf.co model alone
    counters.feed(
        [
            'time=2026-08-15T16:00:00.000+12:00 level=INFO source=routes.go:1 msg="server config"'
            ' env="map[]"',
            start_line(BLOB_B),
            loaded(1),
            *timing(1.0, 3, 1.0, 4),
        ]
    )
    hf = {"model": "hf.co/someone/qwen-gguf:Q4_K_M"}
    assert reg.get_sample_value("ollama_log_generated_tokens_total", hf) == 4
    assert reg.get_sample_value("ollama_log_timed_completions_total", llama) == 2


def test_a_blob_no_manifest_names_is_unknown(tmp_path: Path) -> None:
    counters = LogCounters(ModelNames(tmp_path))
    counters.feed([start_line(BLOB_A), loaded(1), *timing(1.0, 2, 3.0, 4)])
    reg = registry_of(counters.families)
    assert reg.get_sample_value("ollama_log_generated_tokens_total", {"model": "unknown"}) == 4


def test_model_label_set_is_capped(tmp_path: Path) -> None:
    lines = []
    for i in range(100):
        blob = f"{i:064x}"
        write_manifest(tmp_path, "registry.ollama.ai", "library", f"m{i}", "latest", blob)
        lines += [start_line(blob), loaded(1), *timing(1.0, 1, 1.0, 1)]
    counters = LogCounters(ModelNames(tmp_path))
    counters.feed(lines)
    family = next(f for f in counters.families() if f.name == "ollama_log_timed_completions")
    assert len(family.samples) == 65  # 64 names + unknown
    assert sum(s.value for s in family.samples) == 100


# --- journald -------------------------------------------------------------------------------

# A stand-in for journalctl: prints records of a JSONL file the way `journalctl -o json
# --follow` does, then follows the file. Logs its argv (once positioned in the journal) so
# tests can see how it was called.
FAKE_JOURNALCTL = r"""
import json, os, sys, time
records_path, argv_log = os.environ["FAKE_JOURNAL"], os.environ["FAKE_ARGV_LOG"]
if os.environ.get("FAKE_FAIL"):
    sys.stderr.write("Failed to open journal: No such file or directory\n")
    sys.exit(1)
args = sys.argv[1:]
fields = next((a.split("=", 1)[1] for a in args if a.startswith("--output-fields=")), None)
if fields is not None and os.environ.get("FAKE_OLD"):  # systemd before 236
    sys.stderr.write("journalctl: unrecognized option '--output-fields=%s'\n" % fields)
    sys.exit(1)
# --output-fields keeps the fields asked for, plus those journalctl always prints
keep = None if fields is None else set(fields.split(",")) | {
    "__CURSOR", "__REALTIME_TIMESTAMP", "__MONOTONIC_TIMESTAMP", "_BOOT_ID"}
after = next((a.split("=", 1)[1] for a in args if a.startswith("--after-cursor=")), None)
def read():
    with open(records_path) as f:
        return [line for line in f if line.strip()]
records = read()
if after is not None:
    cursors = [json.loads(r)["__CURSOR"] for r in records]
    if after not in cursors:
        sys.stderr.write("Failed to seek to cursor: Invalid argument\n")
        sys.exit(1)
    pos = cursors.index(after) + 1
elif "--lines=0" in args:
    pos = len(records)
else:
    pos = 0
# logged once positioned, so a test that saw this call may append "new" lines safely
with open(argv_log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
while True:
    records = read()
    for r in records[pos:]:
        if keep is not None:
            r = json.dumps({k: v for k, v in json.loads(r).items() if k in keep}) + "\n"
        sys.stdout.write(r if r.endswith("\n") else r + "\n")
    sys.stdout.flush()
    pos = len(records)
    time.sleep(0.05)
"""


class FakeJournal:
    def __init__(self, tmp: Path) -> None:
        self.records = tmp / "journal.jsonl"
        self.records.touch()
        self.argv_log = tmp / "argv.jsonl"
        script = tmp / "journalctl.py"
        script.write_text(FAKE_JOURNALCTL, encoding="utf-8")
        self.command = (sys.executable, str(script))
        self.seq = 0
        os.environ["FAKE_JOURNAL"] = str(self.records)
        os.environ["FAKE_ARGV_LOG"] = str(self.argv_log)

    def append(self, *messages: str | list[int]) -> None:
        with self.records.open("a", encoding="utf-8") as f:
            for message in messages:
                self.seq += 1
                # the fields journalctl -o json prints for a line of a service's stdout
                record = {
                    "__CURSOR": f"s=4f2b8e0c1d7a4b5e9f3c2a1b0d9e8f7a;i={self.seq:x};"
                    f"b=0a1b2c3d4e5f60718293a4b5c6d7e8f9;m={self.seq * 1000:x};"
                    f"t=62a1{self.seq:08x};x={self.seq:016x}",
                    **stdout_entry_fields(self.seq, message),
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def calls(self) -> list[list[str]]:
        if not self.argv_log.exists():
            return []
        return [json.loads(x) for x in self.argv_log.read_text().splitlines()]

    def last_cursor(self) -> str:
        last = self.records.read_text(encoding="utf-8").splitlines()[-1]
        cursor: str = json.loads(last)["__CURSOR"]
        return cursor


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[FakeJournal]:
    saved = {
        k: os.environ.get(k) for k in ("FAKE_JOURNAL", "FAKE_ARGV_LOG", "FAKE_FAIL", "FAKE_OLD")
    }
    yield FakeJournal(tmp_path)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def requests_total(collector: LogsCollector) -> float:
    reg = registry_of(collector.counters.families)
    return sum(
        s.value
        for m in reg.collect()
        if m.name == "ollama_http_requests"
        for s in m.samples
        if s.name == "ollama_http_requests_total"
    )


def journald(journal: FakeJournal, state: Path, **kw: float) -> LogsCollector:
    return LogsCollector(
        "journald", state_dir=state, journalctl=journal.command, unit="ollama.service",
        backoff_initial=kw.get("backoff", 0.05), backoff_max=0.2,
    )  # fmt: skip


def test_journald_first_start_restart_and_cursor(journal: FakeJournal, tmp_path: Path) -> None:
    state = tmp_path / "state"
    journal.append(*[gin(200, "1ms", "GET", "/api/tags")] * 5)  # history before the first start

    collector = journald(journal, state)
    collector.start()
    try:
        wait_until(lambda: len(journal.calls()) == 1, "journalctl to start")
        assert "--lines=0" in journal.calls()[0]  # first start: from the end
        assert "--unit=ollama.service" in journal.calls()[0]
        assert "--output=json" in journal.calls()[0]
        assert "--output-fields=MESSAGE" in journal.calls()[0]  # the one field we read
        journal.append(*[gin(200, "2ms", "POST", "/api/chat")] * 3)
        wait_until(lambda: requests_total(collector) == 3, "three new lines counted")
        assert collector.collect()  # healthy: no exception
    finally:
        collector.stop()
    cursor_file = state / "journal-cursor-ollama.service"
    assert cursor_file.read_text().strip() == journal.last_cursor()

    # lines written while the watchdog was down are counted once by the next process
    journal.append(*[gin(500, "3ms", "POST", "/api/chat")] * 4)
    again = journald(journal, state)
    again.start()
    try:
        wait_until(lambda: requests_total(again) == 4, "the four lines written while down")
        assert journal.calls()[-1][-2:] == [f"--after-cursor={cursor_file.read_text().strip()}",
                                            "--no-tail"]  # fmt: skip
        time.sleep(0.3)  # the stand-in polls every 50 ms: give a recount a chance to show
        assert requests_total(again) == 4
    finally:
        again.stop()
    assert cursor_file.read_text().strip() == journal.last_cursor()


def test_journald_message_as_byte_array(journal: FakeJournal, tmp_path: Path) -> None:
    coloured = (
        "[GIN] 2026/01/20 - 23:15:46 |\x1b[97;42m 200 \x1b[0m|     971.777µs |"
        '       127.0.0.1 |\x1b[97;45m HEAD    \x1b[0m "/"'
    )
    raw = [*coloured.encode("utf-8"), 0xFF]  # journald sends bytes when not valid UTF-8
    collector = journald(journal, tmp_path / "state")
    collector.start()
    try:
        wait_until(lambda: len(journal.calls()) == 1, "journalctl to start")
        journal.append(raw)
        wait_until(lambda: requests_total(collector) == 1, "the byte-array line")
        reg = registry_of(collector.collect)
        labels = {"method": "HEAD", "route": "/", "code": "200"}
        assert reg.get_sample_value("ollama_http_requests_total", labels) == 1
    finally:
        collector.stop()


def test_decode_message_forms() -> None:
    assert decode_message("plain") == "plain"
    assert decode_message([104, 105]) == "hi"
    assert decode_message(None) is None  # journald nulls huge fields without --all
    assert decode_message([300]) is None


def test_journald_failure_is_reported_and_retried(journal: FakeJournal, tmp_path: Path) -> None:
    os.environ["FAKE_FAIL"] = "1"
    collector = journald(journal, tmp_path / "state")
    collector.start()
    try:
        assert collector.follower is not None
        follower = collector.follower
        wait_until(lambda: follower.restarts >= 3, "restarts with backoff")
        with pytest.raises(LogSourceError, match="journalctl exited with 1"):
            collector.collect()
        assert journal.calls() == []
        del os.environ["FAKE_FAIL"]
        wait_until(lambda: len(journal.calls()) == 1, "a journalctl that runs")
        journal.append(gin(200, "1ms", "GET", "/"))
        wait_until(lambda: requests_total(collector) == 1, "counting after recovery")
        assert collector.collect()
    finally:
        collector.stop()


def test_journald_without_output_fields_asks_again_for_all_fields(
    journal: FakeJournal, tmp_path: Path
) -> None:
    """A journalctl before systemd 236 refuses --output-fields: asked again without it."""
    os.environ["FAKE_OLD"] = "1"
    collector = journald(journal, tmp_path / "state")
    with structlog.testing.capture_logs() as logs:
        collector.start()
        try:
            wait_until(lambda: len(journal.calls()) == 1, "journalctl without the option")
            assert not any(a.startswith("--output-fields") for a in journal.calls()[0])
            journal.append(*[gin(200, "1ms", "GET", "/api/tags")] * 3)
            wait_until(lambda: requests_total(collector) == 3, "the lines, all fields")
            assert collector.collect()
        finally:
            collector.stop()
    assert [e["event"] for e in logs].count("journalctl_without_output_fields") == 1


def test_journald_unknown_cursor_starts_at_the_end(journal: FakeJournal, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal-cursor-ollama.service").write_text("s=gone;i=1\n")
    journal.append(gin(200, "1ms", "GET", "/"))  # history: must not be counted
    collector = journald(journal, state)
    collector.start()
    try:
        wait_until(lambda: any("--lines=0" in c for c in journal.calls()), "a fresh start")
        journal.append(gin(200, "1ms", "GET", "/api/ps"))
        wait_until(lambda: requests_total(collector) >= 1, "the new line")
        time.sleep(0.3)
        assert requests_total(collector) == 1
    finally:
        collector.stop()


# A cursor file is state on disk: whatever is found there, the daemon starts, follows from the
# end, logs once what was wrong with the file and writes a good one back.
def _bad_utf8(p: Path) -> None:
    p.write_bytes(b"s=4f2b\xff\xfe;i=1\n")


def _nul(p: Path) -> None:
    p.write_bytes(b"s=4f2b8e0c;i=1\x00\x00\x00\n")


def _directory(p: Path) -> None:
    p.mkdir()
    (p / "inside").write_text("x")


def _huge(p: Path) -> None:
    p.write_bytes(b"s=" + b"a" * (1 << 20))  # one "cursor" past the kernel's 128 KiB per argument


def _fifo(p: Path) -> None:
    os.mkfifo(p)  # opening it for reading would wait for a writer forever


def _not_a_cursor(p: Path) -> None:
    p.write_text("--lines=all --output=export\n")  # would become journalctl options


def _symlink_to_zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_bad_utf8, "is not valid UTF-8"),
        (_nul, "contains NUL bytes"),
        (_directory, "is a directory"),
        (_huge, "more than 4096"),
        (_fifo, "is a FIFO, not a regular file"),
        (_not_a_cursor, "does not hold a valid value"),
        (_symlink_to_zero, "is a symbolic link"),
    ],
    ids=["invalid-utf8", "nul-bytes", "directory", "huge", "fifo", "not-a-cursor", "symlink"],
)
def test_journald_bad_cursor_file_is_dropped_and_rewritten(
    journal: FakeJournal, tmp_path: Path, damage: Callable[[Path], None], problem: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    cursor_file = state / "journal-cursor-ollama.service"
    damage(cursor_file)
    journal.append(gin(200, "1ms", "GET", "/"))  # history: not counted on a fresh start
    with structlog.testing.capture_logs() as logs:
        collector = journald(journal, state)
        collector.start()
        try:
            wait_until(lambda: any("--lines=0" in c for c in journal.calls()), "a fresh start")
            journal.append(*[gin(200, "1ms", "GET", "/api/ps")] * 2)
            wait_until(lambda: requests_total(collector) == 2, "the new lines")
            assert collector.collect()  # success, not stuck
        finally:
            collector.stop()
    invalid = [e for e in logs if e["event"] == "state_file_invalid"]
    assert len(invalid) == 1
    assert invalid[0]["path"] == str(cursor_file)
    assert problem in invalid[0]["problem"]
    # rewritten: a regular file holding the cursor of the last line counted, nothing left over
    assert cursor_file.is_file() and not cursor_file.is_symlink()
    assert cursor_file.read_text() == journal.last_cursor() + "\n"
    assert sorted(p.name for p in state.iterdir()) == [cursor_file.name]


def test_journald_read_only_state_dir_is_counted_and_counting_goes_on(
    journal: FakeJournal, tmp_path: Path
) -> None:
    """A cursor save that fails (state dir read-only or full) neither stops nor restarts the
    follower: it is counted, logged when it starts failing and when it works again."""
    state = tmp_path / "state"
    state.mkdir()
    counters = LogCounters()
    cursor_file = state / "journal-cursor-ollama.service"
    follower = JournalFollower(
        counters.feed, cursor_file, command=journal.command, save_every=0.0,
        backoff_initial=0.05, backoff_max=0.2,
    )  # fmt: skip
    failures_before = statefile.write_failures()
    with structlog.testing.capture_logs() as logs:
        with read_only(state):
            follower.start()
            try:
                wait_until(lambda: len(journal.calls()) == 1, "journalctl to start")
                for n in range(1, 6):  # one batch at a time: a save (that fails) after each
                    journal.append(gin(200, "1ms", "GET", "/api/tags"))
                    wait_until(lambda n=n: counters.lines == n, f"line {n} counted")
                wait_until(lambda: statefile.write_failures() - failures_before >= 5, "saves")
                assert follower.problem is None and follower.restarts == 0
                assert not cursor_file.exists()
            finally:
                follower.stop()
        # writable again: the next run saves the cursor it has
        follower.start()
        try:
            journal.append(gin(200, "1ms", "GET", "/"))
            wait_until(lambda: counters.lines == 6, "the line after the remount")
        finally:
            follower.stop()
    assert cursor_file.read_text() == journal.last_cursor() + "\n"
    failed = [e for e in logs if e["event"] == "state_write_failed"]
    assert len(failed) == 1 and failed[0]["path"] == str(cursor_file)
    assert "Read-only file system" in failed[0]["error"]
    recovered = [e for e in logs if e["event"] == "state_write_recovered"]
    assert len(recovered) == 1 and recovered[0]["failed_writes"] >= 5
    assert not [e for e in logs if e["event"] == "log_follower_failed"]
    text = generate_latest(registry_of(statefile.families)).decode()
    assert f"ollama_watchdog_state_write_failures_total {float(statefile.write_failures())}" in text


def test_journal_follower_builds_container_commands(tmp_path: Path) -> None:
    follower = JournalFollower(
        lambda lines: None,
        tmp_path / "c",
        unit="ollama@1.service",
        command=("nsenter", "-t", "42", "-m", "journalctl", "-D", "/var/log/journal"),
    )
    assert follower.argv()[:7] == ["nsenter", "-t", "42", "-m", "journalctl", "-D",
                                   "/var/log/journal"]  # fmt: skip
    assert "--unit=ollama@1.service" in follower.argv()


# --- file -----------------------------------------------------------------------------------


def test_file_missing_at_start_is_waited_for_and_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "ollama.log"
    collector = LogsCollector("file", str(path), poll_interval=0.02)
    collector.start()
    try:
        follower = collector.follower
        assert follower is not None
        wait_until(lambda: "waiting" in (follower.problem or ""), "the waiting state")
        with pytest.raises(LogSourceError, match="waiting for"):
            collector.collect()
        path.write_text(gin(200, "1ms", "GET", "/") + "\n" + gin(200, "1ms", "GET", "/") + "\n")
        wait_until(lambda: requests_total(collector) == 2, "both lines of the new file")
        assert collector.collect()
    finally:
        collector.stop()


def test_file_existing_history_is_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "ollama.log"
    path.write_text(gin(200, "1ms", "GET", "/") + "\n")
    seen: list[str] = []
    follower = FileFollower(path, seen.extend, poll_interval=0.02)
    follower.start()
    try:
        wait_until(lambda: follower.problem is None, "the file opened")
        with path.open("a") as f:
            f.write(gin(200, "1ms", "GET", "/api/ps") + "\n" + "half a li")
        wait_until(lambda: len(seen) == 1, "the appended line")
        assert "/api/ps" in seen[0]
        with path.open("a") as f:
            f.write("ne\n")
        wait_until(lambda: len(seen) == 2, "the completed line")
        assert seen[1] == "half a line"
    finally:
        follower.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: os.mkfifo(p), "a FIFO"),
        (lambda p: p.symlink_to("/dev/null"), "a device"),
        (lambda p: p.mkdir(), "a directory"),
    ],
    ids=["fifo", "device", "directory"],
)
def test_file_source_that_is_not_a_regular_file_is_a_named_failure(
    tmp_path: Path, make: Callable[[Path], None], what: str
) -> None:
    """A FIFO at the path used to block the follower in open() (reading nothing while the
    collector said success, each reload waiting 10 s for a thread that then leaked)."""
    path = tmp_path / "ollama.log"
    make(path)
    collector = LogsCollector("file", str(path), poll_interval=0.02, backoff_initial=0.05)
    threads_before = {t for t in threading.enumerate() if t.name == "logs-file"}
    with structlog.testing.capture_logs() as logs:
        collector.start()
        try:
            follower = collector.follower
            assert follower is not None
            wait_until(lambda: what in (follower.problem or ""), f"{what} reported")
            with pytest.raises(LogSourceError, match=f"is {what}, not a regular file"):
                collector.collect()
        finally:
            collector.stop()
    leaked = {t for t in threading.enumerate() if t.name == "logs-file"} - threads_before
    assert not [t for t in leaked if t.is_alive()]
    failed = [e for e in logs if e["event"] == "log_follower_failed"]
    assert failed and f"{path} is {what}, not a regular file" in failed[0]["error"]


def _unparsed(collector: LogsCollector) -> float | None:
    return registry_of(collector.counters.families).get_sample_value(
        "ollama_watchdog_log_lines_unparsed_total"
    )


def test_an_over_long_line_is_one_unparsed_line(tmp_path: Path) -> None:
    """A line past 64 KiB is counted once, as unparsed, as soon as it passes the cap (its
    newline may never come), and the rest of it is skipped; the next line counts."""
    path = tmp_path / "ollama.log"
    path.touch()
    collector = LogsCollector("file", str(path), poll_interval=0.02)
    collector.start()
    try:
        follower = collector.follower
        assert follower is not None
        wait_until(lambda: follower.problem is None, "the file opened")
        with path.open("a") as f:
            f.write(gin(200, "1ms", "GET", "/") + " " + "x" * 100_000)  # a GIN marker, too
            f.flush()
            wait_until(lambda: _unparsed(collector) == 1, "the over-long line counted")
            f.write("y" * 300_000 + "\n" + gin(200, "1ms", "GET", "/api/ps") + "\n")
        wait_until(lambda: requests_total(collector) == 1, "the line after it")
        reg = registry_of(collector.counters.families)
        assert reg.get_sample_value("ollama_watchdog_log_lines_total") == 2
        assert _unparsed(collector) == 1
        labels = {"method": "GET", "route": "/api/ps", "code": "200"}
        assert reg.get_sample_value("ollama_http_requests_total", labels) == 1
    finally:
        collector.stop()


def test_line_splitter_bounds_lines_within_and_across_reads() -> None:
    dropped: list[int] = []
    lines = LineSplitter(dropped.append, max_line=10)
    assert lines.feed(b"abc") == []
    assert lines.feed(b"def\nshort\n0123456789AB\nok\nnext") == ["abcdef", "short", "ok"]
    assert dropped == [1]
    assert lines.feed(b"-still-under\n") == []  # "next-still-under": 16 bytes, dropped
    assert dropped == [1, 1]
    assert lines.feed(b"x" * 25) == []  # counted as it passes the cap...
    assert dropped == [1, 1, 1]
    assert lines.feed(b"y" * 25 + b"\nafter\n") == ["after"]  # ...and not again at its end
    assert dropped == [1, 1, 1]
    assert lines.feed(b"tail") == [] and lines.flush() == ["tail"]


def _gin_lines(n: int) -> str:
    return (gin(200, "1ms", "GET", "/api/tags") + "\n") * n


def test_copytruncate_refilled_with_identical_lines_loses_nothing(tmp_path: Path) -> None:
    """Rotation by copytruncate, then the writer refills the file past our offset with the
    very same lines before we look: the copy tells what the bytes cannot."""
    path = tmp_path / "ollama.log"
    path.touch()
    seen: list[str] = []
    follower = FileFollower(path, seen.extend)
    follower.poll()  # opens the (empty) file at its end
    path.write_text(_gin_lines(15))
    follower.poll()
    assert len(seen) == 15
    with path.open("a") as f:
        f.write(_gin_lines(2))  # written, not read yet
    shutil.copyfile(path, tmp_path / "ollama.log.1")  # logrotate's copy...
    with path.open("r+") as f:
        f.truncate(0)  # ...and truncation
    with path.open("a") as f:
        f.write(_gin_lines(17))
    for _ in range(3):
        follower.poll()
    assert len(seen) == 15 + 2 + 17


def test_a_copy_in_progress_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "ollama.log"
    path.write_text("")
    seen: list[str] = []
    follower = FileFollower(path, seen.extend)
    follower.poll()
    path.write_text("".join(f"line {i}\n" for i in range(10)))
    follower.poll()
    assert len(seen) == 10
    with path.open("a") as f:
        f.write("line 10\n")
    copy = tmp_path / "ollama.log-20260120"
    copy.write_bytes(path.read_bytes()[:20])  # logrotate is still copying
    follower.poll()
    assert len(seen) == 10  # not read while the copy may still be a copytruncate
    copy.write_bytes(path.read_bytes())  # copied; then truncated and refilled
    path.write_text("".join(f"line {i}\n" for i in range(11, 14)))
    follower.poll()
    follower.poll()
    assert seen == [f"line {i}" for i in range(14)]


def test_a_sibling_that_is_not_a_copy_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ollama.log"
    path.write_text("")
    seen: list[str] = []
    follower = FileFollower(path, seen.extend)
    follower.poll()
    path.write_text("one\ntwo\n")
    follower.poll()
    (tmp_path / "ollama.log.debug").write_text("something else entirely\n")
    for _ in range(3):
        follower.poll()
    with path.open("a") as f:
        f.write("three\n")
    follower.poll()
    follower.poll()
    assert seen == ["one", "two", "three"]


def test_unreadable_manifests_are_skipped_with_a_reason(tmp_path: Path) -> None:
    """A FIFO, a symlink to /dev/zero, a huge file under manifests/ are skipped, logged once
    each, and never block or swell the reader; the good manifest still names its blob."""
    blob = "ab" * 32
    write_manifest(tmp_path, "registry.ollama.ai", "library", "good", "latest", blob)
    bad = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "bad"
    bad.mkdir(parents=True)
    os.mkfifo(bad / "fifo")
    (bad / "zero").symlink_to("/dev/zero")
    with (bad / "huge").open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of nothing
    names = ModelNames(tmp_path, refresh_s=0.0)
    with structlog.testing.capture_logs() as logs:
        assert names.name_for(blob) == "good:latest"
        assert names.name_for("cd" * 32) is None  # a miss re-reads: logged once all the same
    skipped = {Path(e["path"]).name: e["reason"] for e in logs if e["event"] == "manifest_skipped"}
    assert len([e for e in logs if e["event"] == "manifest_skipped"]) == 3
    assert "is a FIFO, not a regular file" in skipped["fifo"]
    assert "is a device, not a regular file" in skipped["zero"]
    assert "manifest too large" in skipped["huge"]
