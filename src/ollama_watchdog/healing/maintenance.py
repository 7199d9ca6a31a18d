"""The maintenance mark: an operator's "hands off" in ``state_dir``, with an expiry.

``ollama-watchdog maintenance on [--for 2h] [--reason TEXT]`` writes ``maintenance.json`` in
``[logs] state_dir`` (the unit's ``StateDirectory``); the daemon reads it every second without a
restart, and while it is in force no remediation of any kind happens (the state is
``maintenance``, ``STATUS=`` says who set it, why and until when). The expiry is a wall-clock
time, so the mark never outlives it, reboots included: an expired mark is ignored and removed
by whoever reads it. Every mark expires: ``--for`` defaults to one hour and is capped at seven
days (a forgotten "on" must not switch healing off for good).

The file is small JSON written atomically by ``statefile.write_state_atomic``, mode 0644
so the daemon's user can read a mark root wrote. A
file that is not a valid mark is reported once, by path and why, and treated as no mark.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ollama_watchdog.config import human_duration
from ollama_watchdog.oneline import one_line
from ollama_watchdog.statefile import write_state_atomic

MARK_NAME: Final = "maintenance.json"
DEFAULT_DURATION: Final = 3600.0
MAX_DURATION: Final = 7 * 86400.0
#: a mark file larger than this is not one of ours
_MAX_BYTES: Final = 4096
REASON_LIMIT: Final = 200


class MarkError(Exception):
    """The mark cannot be read or written; the message names the path and the fix."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One maintenance window."""

    until: float  # unix seconds
    reason: str
    by: str
    set_at: float

    def sentence(self, now: float) -> str:
        left = human_duration(max(self.until - now, 0.0))
        why = f": {self.reason}" if self.reason else ""
        return f"maintenance set by {self.by}{why}, {left} left"

    def as_json(self) -> dict[str, object]:
        return {"until": self.until, "reason": self.reason, "by": self.by, "set_at": self.set_at}


def mark_path(state_dir: Path) -> Path:
    return state_dir / MARK_NAME


def _parse(raw: bytes) -> Mark:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    until, set_at = data.get("until"), data.get("set_at", 0.0)
    if not isinstance(until, (int, float)) or isinstance(until, bool) or not math.isfinite(until):
        raise ValueError("until is not a finite number")
    if not isinstance(set_at, (int, float)) or isinstance(set_at, bool):
        raise ValueError("set_at is not a number")
    reason, by = data.get("reason", ""), data.get("by", "")
    if not isinstance(reason, str) or not isinstance(by, str):
        raise ValueError("reason and by must be strings")
    return Mark(float(until), one_line(reason, REASON_LIMIT), one_line(by, 64), float(set_at))


def read_mark(state_dir: Path, now: float, *, remove_expired: bool = True) -> Mark | None:
    """The mark in force at unix time ``now``, or None (none, expired, or not a valid mark).

    Raises :class:`MarkError` for a file that exists but is not a valid mark (the caller
    reports it once); an expired mark is removed when ``remove_expired`` and allowed.
    """
    path = mark_path(state_dir)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarkError(f"{path}: cannot read the maintenance mark: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_BYTES:
        raise MarkError(
            f"{path}: not a maintenance mark (not a small regular file): remove it, then use "
            "`ollama-watchdog maintenance on`"
        )
    try:
        with path.open("rb") as fh:
            mark = _parse(fh.read(_MAX_BYTES + 1))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarkError(f"{path}: cannot read the maintenance mark: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MarkError(
            f"{path}: not a valid maintenance mark ({exc}): remove it, or set a new one with "
            "`ollama-watchdog maintenance on`"
        ) from None
    if mark.until <= now:
        if remove_expired:
            # another reader removed it, or no permission: it is ignored anyway
            with contextlib.suppress(OSError):
                path.unlink()
        return None
    return mark


def write_mark(state_dir: Path, mark: Mark) -> Path:
    """Write ``mark`` atomically; raise :class:`MarkError` naming the fix on failure."""
    path = mark_path(state_dir)
    data = json.dumps(mark.as_json(), sort_keys=True) + "\n"
    try:
        write_state_atomic(path, data, mode=0o644)
    except OSError as exc:
        raise MarkError(
            f"{path}: cannot write the maintenance mark: {exc.strerror}; run as root or as "
            f"the owner of {state_dir} (sudo ollama-watchdog maintenance ...)"
        ) from None
    return path


def clear_mark(state_dir: Path) -> bool:
    """Remove the mark; True if there was one."""
    path = mark_path(state_dir)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise MarkError(
            f"{path}: cannot remove the maintenance mark: {exc.strerror}; run as root or as "
            f"the owner of {state_dir}"
        ) from None
    return True


def operator() -> str:
    """Who is setting the mark: the sudo caller if any, else the effective user."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return sudo
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


__all__ = [
    "DEFAULT_DURATION",
    "MARK_NAME",
    "MAX_DURATION",
    "Mark",
    "MarkError",
    "clear_mark",
    "mark_path",
    "operator",
    "read_mark",
    "write_mark",
]
