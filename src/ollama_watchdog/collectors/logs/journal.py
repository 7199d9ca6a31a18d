"""Follow one unit's journal through ``journalctl``, resuming from a cursor file.

The cursor of the last line counted is kept in a file, so a restart of the watchdog continues
where it stopped instead of losing or recounting lines; with no cursor (first start) it
begins at the end of the journal.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from ollama_watchdog.collectors.logs.follower import Follower, LogSourceError, Sink
from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.statefile import StateFile

log = structlog.get_logger(__name__)

#: seconds journalctl gets after SIGTERM before its group is killed
_STOP_GRACE_S = 5.0
_CHUNK = 1 << 16  # bytes of journalctl output read at a time at most
#: a cursor is some 150 characters; a cursor file bigger than this is not one we wrote
CURSOR_MAX_BYTES = 4096
# journald's cursor: ``s=<hex>;i=<hex>;b=<hex>;m=<hex>;t=<hex>;x=<hex>`` (sd_journal_get_cursor)
_CURSOR_RE = re.compile(r"[A-Za-z0-9_]+=[0-9A-Za-z]+(;[A-Za-z0-9_]+=[0-9A-Za-z]+)*")


def valid_cursor(text: str) -> str | None:
    """``text`` when it has the form of a journald cursor (so it can go on journalctl's
    command line), else None."""
    return text if _CURSOR_RE.fullmatch(text) else None


class JournalFollower(Follower):
    """Follow one unit's journal through ``journalctl -o json --follow``.

    ``command`` is the journalctl invocation prefix, e.g. ``("journalctl",)``,
    ``("journalctl", "-D", "/path/to/journal")`` or an ``nsenter … journalctl`` prefix for a
    container. The cursor of the last line counted goes to ``cursor_file`` at most every
    ``save_every`` seconds and when stopping; the file is read and written through
    :class:`~ollama_watchdog.statefile.StateFile` (never trusted, written atomically).

    journalctl is asked for MESSAGE alone (``--output-fields``, systemd 236+; it adds the
    cursor and timestamps itself): a service's stdout entry carries some twenty fields, and
    formatting and parsing them cost more than everything else per line. A journalctl too old
    for the option is asked again without it. Records are read as the pipe has them and fed
    to the counters a chunk at a time; the cursor moves only after its chunk was counted.
    """

    kind = "journald"

    def __init__(
        self,
        sink: Sink,
        cursor_file: Path,
        unit: str = "ollama.service",
        command: Sequence[str] = ("journalctl",),
        save_every: float = 1.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        super().__init__(sink, backoff_initial, backoff_max)
        self.cursor_file = cursor_file
        self._state = StateFile(cursor_file, CURSOR_MAX_BYTES, valid_cursor)
        self.unit = unit
        self.command = tuple(command)
        self._save_every = save_every
        self._cursor: str | None = self._state.load()
        self._saved: str | None = self._cursor
        self._proc: subprocess.Popen[bytes] | None = None
        self._output_fields = True  # False once journalctl refused --output-fields

    @property
    def cursor(self) -> str | None:
        return self._cursor

    def _save_cursor(self) -> None:
        if self._cursor is None or self._cursor == self._saved:
            return
        # a state dir that is read-only or full is counted and logged by the StateFile; the
        # cursor stays in memory and counting goes on (a restart may then recount some lines)
        if self._state.save(self._cursor):
            self._saved = self._cursor

    def argv(self) -> list[str]:
        where = (
            [f"--after-cursor={self._cursor}", "--no-tail"]
            if self._cursor
            else ["--lines=0"]  # first start: from the end, no history into counters
        )
        # --merge: --follow otherwise keeps to the boot id journalctl reads from /proc, and a
        # sandboxed service inside a container (ProtectKernelTunables=) sees the host's boot id,
        # not the container's: journalctl would then match nothing and follow silently.
        fields = ["--output-fields=MESSAGE"] if self._output_fields else []
        return [*self.command, f"--unit={self.unit}", "--output=json", *fields, "--all",
                "--follow", "--merge", "--no-pager", *where]  # fmt: skip

    def _follow(self) -> None:
        proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # its own process group, killed as a whole
        )
        self._proc = proc
        self._set_problem(None)
        saved_at = time.monotonic()
        try:
            assert proc.stdout is not None
            pending = b""
            # unbuffered: one read() is one read(2), whatever the pipe holds now (waiting only
            # while it is empty), so a burst is counted in a few chunks
            while chunk := proc.stdout.read(_CHUNK):
                records = (pending + chunk).split(b"\n")
                pending = records.pop()  # a record not yet complete
                lines: list[str] = []
                cursor = None
                for raw in records:
                    if not raw:
                        continue
                    record = json.loads(raw)
                    message = decode_message(record.get("MESSAGE"))
                    if message is not None:
                        lines += message.split("\n")
                    if isinstance(record.get("__CURSOR"), str):
                        cursor = valid_cursor(record["__CURSOR"]) or cursor
                if lines:
                    self._sink(lines)
                if cursor is not None:
                    self._cursor = cursor
                if time.monotonic() - saved_at >= self._save_every:
                    self._save_cursor()
                    saved_at = time.monotonic()
        finally:
            self._save_cursor()
            stop_process_group(proc, _STOP_GRACE_S)
            self._proc = None
        if self._stopping.is_set():
            return
        err = proc.stderr.read().decode("utf-8", "replace").strip() if proc.stderr else ""
        if self._output_fields and "output-fields" in err:
            # systemd before 236: all fields it is (slower, same lines)
            log.warning("journalctl_without_output_fields", error=err[:200])
            self._output_fields = False
        elif self._cursor and "cursor" in err.lower():
            # the journal no longer has our cursor (vacuumed, other machine): start at the end
            log.warning("journal_cursor_dropped", cursor=self._cursor, error=err[:200])
            self._cursor = self._saved = None
            self._state.remove()
        raise LogSourceError(f"journalctl exited with {proc.returncode}: {err[-200:]}")

    def _interrupt(self) -> None:
        proc = self._proc
        if proc is not None:
            stop_process_group(proc, _STOP_GRACE_S)


def decode_message(value: object) -> str | None:
    """journald's MESSAGE: a string, or an array of bytes when not valid UTF-8 (or null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return None


__all__ = ["CURSOR_MAX_BYTES", "JournalFollower", "decode_message", "valid_cursor"]
