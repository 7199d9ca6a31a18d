"""State files in state_dir: read as hostile input, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from ollama_watchdog.statefile import read_state, write_state_atomic


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def test_round_trip_replaces_whole_content_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state" / "mark"  # the directory is created on the first write
    write_state_atomic(path, "1234567890\n")
    write_state_atomic(path, b"42\n")
    assert read_state(path, 64, _number) == 42
    assert os.listdir(path.parent) == ["mark"]


def test_absent_is_none_without_a_log_event(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        assert read_state(tmp_path / "nothing", 64, _number) is None
    assert logs == []


def test_rejected_content_is_logged_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "mark"
    path.write_text("soon\n")
    with structlog.testing.capture_logs() as logs:
        assert read_state(path, 64, _number) is None
    assert [(e["event"], e["path"], e["problem"]) for e in logs] == [
        ("state_file_invalid", str(path), "does not hold a valid value")
    ]
    assert not path.exists()
    write_state_atomic(path, "7\n")  # and the next write puts a good one back
    assert read_state(path, 64, _number) == 7


def test_a_file_grown_past_the_cap_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "mark"
    path.write_text("1" * 65)
    with structlog.testing.capture_logs() as logs:
        assert read_state(path, 64, _number) is None
    assert "has 65 bytes, more than 64" in logs[0]["problem"]
