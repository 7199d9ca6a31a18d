"""Request, error and token metrics from Ollama's own log, followed in the background.

Ollama has no ``/metrics``; its log has a line per request and per runner failure
(:mod:`ollama_watchdog.ollama.logparse`). This collector follows that log without sitting in the
request path, from one of two sources (``[logs] source``):

* ``journald``: ``journalctl -o json --follow`` for the unit. The cursor of the last line
  counted is kept in ``state_dir``, so a restart of the watchdog continues where it stopped
  instead of losing or recounting lines. With no cursor (first start) it begins at the end of
  the journal: history is not replayed into counters.
* ``file``: a path followed like ``tail -F``: rename+create rotation and copytruncate rotation
  both keep every line written before the rotation, and a missing file is waited for.

A follower that fails restarts itself with exponential backoff. While it is down ``collect()``
raises, which the scheduler records as ``ollama_watchdog_collector_success{collector="logs"} 0``.
``collect()`` itself never does I/O: it copies counters under a lock held for microseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import structlog
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from ollama_watchdog.ollama.logparse import (
    LEVELS,
    RUNNER_ERROR_KINDS,
    Event,
    Message,
    Request,
    Timing,
    parse_line,
)

log = structlog.get_logger(__name__)

Source = Literal["journald", "file", "none"]

#: request latency buckets (seconds): a HEAD / takes microseconds, a long generation minutes
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
_BUCKET_LABELS: Final = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")

#: model label value when the owner of a timing line cannot be known
UNKNOWN_MODEL: Final = "unknown"
#: the model label takes at most this many distinct names (plus ``unknown``)
MAX_MODELS: Final = 64

_MODEL_MEDIA_TYPE: Final = "application/vnd.ollama.image.model"


class LogSourceError(RuntimeError):
    """The log source is not being followed right now (the message says why)."""


# --- blob -> model name ---------------------------------------------------------------------


def display_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The shortest form Ollama shows (FACTS.md §1.2): ``llama3.2:latest``, ``user/m:tag``."""
    if host == "registry.ollama.ai":
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def read_model_blobs(models_dir: Path) -> dict[str, str]:
    """Map each model-weights blob (sha256 hex) to the model name its manifest gives it.

    A blob shared by several names (``ollama cp``) maps to the first name in sorted order, so
    the label is stable. Unreadable manifests are skipped: a name we cannot resolve is
    ``unknown``, never an error.
    """
    blobs: dict[str, str] = {}
    for manifest in sorted(models_dir.glob("manifests/*/*/*/*")):
        try:
            doc = json.loads(manifest.read_bytes())
            layers = doc["layers"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        host, namespace, model, tag = manifest.parts[-4:]
        name = display_name(host, namespace, model, tag)
        for layer in layers if isinstance(layers, list) else ():
            if not isinstance(layer, dict) or layer.get("mediaType") != _MODEL_MEDIA_TYPE:
                continue
            digest = layer.get("digest")
            if isinstance(digest, str) and digest.startswith("sha256:"):
                blobs.setdefault(digest[7:], name)
    return blobs


class ModelNames:
    """Blob → model name through the manifests, re-read on a miss at most every ``refresh_s``."""

    def __init__(
        self,
        models_dir: Path | None,
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = models_dir
        self._refresh_s = refresh_s
        self._clock = clock
        self._blobs: dict[str, str] = {}
        self._read_at: float | None = None

    def name_for(self, blob: str) -> str | None:
        name = self._blobs.get(blob)
        if name is not None or self._dir is None:
            return name
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now
            self._blobs = read_model_blobs(self._dir)
        return self._blobs.get(blob)


# --- counters -------------------------------------------------------------------------------


@dataclass
class _RouteCounts:
    """The requests of one (method, route): a count per status code, a latency histogram."""

    codes: dict[int, int]
    buckets: list[int]
    total: float = 0.0


@dataclass
class _Tokens:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    completions: int = 0


class LogCounters:
    """Everything counted from the log; fed by a follower thread, read by ``collect()``.

    The model of a timing line is the model of the runner started last, and ``unknown`` while
    the scheduler reports more than one loaded runner (timing lines do not say which runner
    wrote them, FACTS.md §2.7).
    """

    def __init__(self, models: ModelNames | None = None) -> None:
        self._lock = threading.Lock()
        self._models = models or ModelNames(None)
        self.lines = 0
        self.unparsed = 0
        # (method, route) -> counts: one lookup per request line for both metrics
        self._routes: dict[tuple[str, str], _RouteCounts] = {}
        self._levels: dict[str, int] = dict.fromkeys(LEVELS, 0)
        self._errors: dict[str, int] = dict.fromkeys(RUNNER_ERROR_KINDS, 0)
        self._tokens: dict[str, _Tokens] = {}
        # model tracking: touched by the follower thread only
        self._runner_blob: str | None = None
        self._loaded_runners = 0

    def feed(self, lines: Iterable[str]) -> None:
        """Parse and count a batch of lines (one lock acquisition per batch)."""
        # Parse outside the lock, so collect() never waits for it. Most lines give no event
        # (None) and are only counted.
        parsed = list(map(parse_line, lines))
        events = [event for event in parsed if event is not None]
        with self._lock:
            self.lines += len(parsed)
            self._count(events)

    def _count(self, events: list[Event]) -> None:
        # One loop per batch with the counters bound to locals: this runs for every event.
        routes, levels = self._routes, self._levels
        tokens: _Tokens | None = None  # of the current model, looked up once per batch
        for event in events:
            if isinstance(event, Request):
                method, route, code, seconds = event
                counts = routes.get((method, route))
                if counts is None:
                    counts = routes[method, route] = _RouteCounts(
                        {}, [0] * (len(DURATION_BUCKETS) + 1)
                    )
                counts.codes[code] = counts.codes.get(code, 0) + 1
                counts.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
                counts.total += seconds
            elif isinstance(event, Timing):
                phase, seconds, count = event
                if tokens is None:
                    tokens = self._tokens_for(self._current_model())
                if phase == "prompt":
                    tokens.prompt_tokens += count
                    tokens.prompt_seconds += seconds
                elif phase == "eval":
                    tokens.generated_tokens += count
                    tokens.generation_seconds += seconds
                else:
                    tokens.completions += 1
            elif isinstance(event, Message):
                level, error_kind, runner_blob, loaded_runners, server_start = event
                levels[level] += 1
                if error_kind is not None:
                    self._errors[error_kind] += 1
                if runner_blob is not None:
                    self._runner_blob = runner_blob
                    tokens = None  # the model may have changed
                if loaded_runners is not None:
                    self._loaded_runners = loaded_runners
                    tokens = None
                if server_start:
                    # a new server has no runners yet: whatever was live died with the old one
                    self._runner_blob = None
                    self._loaded_runners = 0
                    tokens = None
            else:  # Malformed
                self.unparsed += 1

    def _current_model(self) -> str:
        if self._runner_blob is None or self._loaded_runners > 1:
            return UNKNOWN_MODEL
        # The manifests may be re-read here (rarely, on a miss): this runs on the follower
        # thread, never on collect()'s.
        return self._models.name_for(self._runner_blob) or UNKNOWN_MODEL

    def _tokens_for(self, model: str) -> _Tokens:
        tokens = self._tokens.get(model)
        if tokens is None:
            if len(self._tokens) >= MAX_MODELS and model != UNKNOWN_MODEL:
                return self._tokens_for(UNKNOWN_MODEL)
            tokens = self._tokens[model] = _Tokens()
        return tokens

    def families(self) -> list[Metric]:
        """Complete metric families from a consistent copy of the counters."""
        with self._lock:
            lines, unparsed = self.lines, self.unparsed
            routes = {
                key: (dict(c.codes), list(c.buckets), c.total) for key, c in self._routes.items()
            }
            levels = dict(self._levels)
            errors = dict(self._errors)
            tokens = {m: _Tokens(**vars(t)) for m, t in self._tokens.items()}

        req = CounterMetricFamily(
            "ollama_http_requests",
            "Requests Ollama logged (gin request log), by method, route and status code.",
            labels=["method", "route", "code"],
        )
        for (method, route), (codes, _, _) in sorted(routes.items()):
            for code, n in sorted((str(code), n) for code, n in codes.items()):
                req.add_metric([method, route, code], n)
        dur = HistogramMetricFamily(
            "ollama_http_request_duration_seconds",
            "Request latency as Ollama logged it (whole seconds above one minute).",
            labels=["method", "route"],
        )
        for (method, route), (_, buckets, total) in sorted(routes.items()):
            cumulative: list[tuple[str, float]] = []
            running = 0
            for le, n in zip(_BUCKET_LABELS, buckets, strict=True):
                running += n
                cumulative.append((le, float(running)))
            dur.add_metric([method, route], cumulative, total)
        lvl = CounterMetricFamily(
            "ollama_log_messages", "Ollama server log messages by level.", labels=["level"]
        )
        for level in LEVELS:
            lvl.add_metric([level], levels[level])
        err = CounterMetricFamily(
            "ollama_runner_errors",
            "Model runner failures Ollama logged, by kind.",
            labels=["kind"],
        )
        for kind in RUNNER_ERROR_KINDS:
            err.add_metric([kind], errors[kind])

        def per_model(name: str, doc: str, field: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, t in sorted(tokens.items()):
                family.add_metric([model], getattr(t, field))
            return family

        return [
            req,
            dur,
            lvl,
            err,
            per_model(
                "ollama_log_prompt_tokens",
                "Prompt tokens evaluated (llama-server timing lines; cache hits excluded).",
                "prompt_tokens",
            ),
            per_model(
                "ollama_log_generated_tokens",
                "Tokens generated (llama-server timing lines).",
                "generated_tokens",
            ),
            per_model(
                "ollama_log_prompt_eval_seconds",
                "Time spent evaluating prompts (llama-server timing lines).",
                "prompt_seconds",
            ),
            per_model(
                "ollama_log_generation_seconds",
                "Time spent generating tokens (llama-server timing lines).",
                "generation_seconds",
            ),
            per_model(
                "ollama_log_timed_completions",
                "Completions that ended normally and printed a timing block.",
                "completions",
            ),
            CounterMetricFamily("ollama_watchdog_log_lines", "Ollama log lines read.", value=lines),
            CounterMetricFamily(
                "ollama_watchdog_log_lines_unparsed",
                "Lines with a gin or slog marker that did not parse (Ollama's format moved).",
                value=unparsed,
            ),
        ]


# --- followers ------------------------------------------------------------------------------

Sink = Callable[[list[str]], None]


class _Follower:
    """A thread that runs ``_follow()`` and restarts it with backoff when it fails."""

    kind = "follower"

    def __init__(self, sink: Sink, backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self._sink = sink
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._problem: str | None = "not started"
        self.restarts = 0

    @property
    def problem(self) -> str | None:
        """Why the source is not being followed now, or None while it is."""
        with self._lock:
            return self._problem

    def _set_problem(self, problem: str | None) -> None:
        with self._lock:
            self._problem = problem

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"logs-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _interrupt(self) -> None:
        """Unblock ``_follow()`` (override where it blocks on something other than the event)."""

    def _follow(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        delay = self._backoff_initial
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._follow()
            except Exception as exc:  # classify at the boundary: any failure means "restart"
                if self._stopping.is_set():
                    break
                reason = f"{type(exc).__name__}: {exc}"[:300]
                self._set_problem(reason)
                self.restarts += 1
                # a run that lasted a while was healthy: start the backoff over
                if time.monotonic() - started > 4 * delay:
                    delay = self._backoff_initial
                log.warning("log_follower_failed", source=self.kind, error=reason, retry_in=delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max)
            else:
                if not self._stopping.is_set():
                    self._set_problem("follower ended")
                    self._stopping.wait(delay)
                    delay = min(delay * 2, self._backoff_max)
        self._set_problem("stopped")


class FileFollower(_Follower):
    """Follow a file by name, like ``tail -F``.

    Rotation by rename (``create``): the old file is read to its end, then kept open a little
    longer for writers that have not reopened yet, and the new file is read from its start.
    Rotation by ``copytruncate``: lines written before the truncation that were not read yet
    are taken from the rotated copy (the sibling whose bytes before our offset match ours).
    At the very first start the file is read from its end: history is not counted.
    """

    kind = "file"
    #: keep a renamed-away file open this long after its last growth
    RETIRE_AFTER_S: Final = 2.0
    _MATCH_BYTES: Final = 256

    def __init__(
        self,
        path: Path,
        sink: Sink,
        poll_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        super().__init__(sink, backoff_initial, backoff_max)
        self.path = path
        self._poll = poll_interval
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._offset = 0
        self._partial = b""
        self._tail = b""  # the last bytes read, to recognise our file's copy
        self._retiring: list[tuple[int, float, bytes]] = []  # (fd, last growth, partial line)
        self._first_open = True

    def _follow(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._fd is None and not self._open():
                    self._stopping.wait(self._poll)
                    continue
                # Look for rotation *before* reading: after a copytruncate a fast writer may
                # refill the file past our offset, and reading first would take the new bytes
                # as the continuation of the old ones. Then read everything there is and
                # sleep: batches of lines per poll keep the CPU cost per line low.
                self._check_rotation()
                self._drain()
                self._drain_retiring()
                self._stopping.wait(self._poll)
        finally:
            self._close_all()

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # a file that appears later is read from its start: all of it is new
            self._first_open = False
            self._set_problem(f"waiting for {self.path}")
            return False
        st = os.fstat(fd)
        ino = (st.st_dev, st.st_ino)
        if self._first_open:
            # first start: begin at the end, like journald's first start
            self._offset = st.st_size
        elif ino != self._ino:
            self._offset = 0  # a new file: read it all
        elif st.st_size < self._offset:
            self._offset = 0  # same file, truncated while we were away
        if self._offset == 0 or self._first_open:
            self._tail = b""  # nothing read from this file yet: nothing to compare with
        self._first_open = False
        self._fd, self._ino = fd, ino
        os.lseek(fd, self._offset, os.SEEK_SET)
        self._set_problem(None)
        return True

    def _emit(self, data: bytes, partial: bytes) -> bytes:
        """Send the complete lines of ``partial + data``; return the unfinished rest."""
        data = partial + data
        cut = data.rfind(b"\n")
        if cut < 0:
            return data
        self._sink(data[:cut].decode("utf-8", "replace").split("\n"))
        return data[cut + 1 :]

    def _drain(self) -> None:
        assert self._fd is not None
        while chunk := os.read(self._fd, 1 << 16):
            self._offset += len(chunk)
            self._tail = (self._tail + chunk)[-self._MATCH_BYTES :]
            self._partial = self._emit(chunk, self._partial)

    def _drain_retiring(self) -> None:
        now = time.monotonic()
        keep = []
        for fd, last, partial in self._retiring:
            while chunk := os.read(fd, 1 << 16):
                last = now
                partial = self._emit(chunk, partial)
            if now - last < self.RETIRE_AFTER_S:
                keep.append((fd, last, partial))
            else:
                if partial:
                    self._sink([partial.decode("utf-8", "replace")])
                os.close(fd)
        self._retiring = keep

    def _check_rotation(self) -> None:
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, new one not created yet: keep reading the old one
        if (st.st_dev, st.st_ino) != self._ino:
            # rename+create: retire the old file (writers may still append to it) and switch
            self._retiring.append((self._fd, time.monotonic(), self._partial))
            self._fd, self._partial = None, b""
            self._open()
        elif st.st_size < self._offset or not self._tail_still_there():
            self._recover_from_copy()
            self._partial = self._tail = b""
            self._offset = 0
            os.lseek(self._fd, 0, os.SEEK_SET)

    def _tail_still_there(self) -> bool:
        """Do the bytes before our offset still match? (A fast writer may refill a truncated
        file past our offset before we look; its size alone would not show the truncation.)"""
        assert self._fd is not None
        n = len(self._tail)
        return n == 0 or os.pread(self._fd, n, self._offset - n) == self._tail

    def _recover_from_copy(self) -> None:
        """copytruncate: read what we had not read yet from the rotated copy, if we find it."""
        parent, base = self.path.parent, self.path.name
        candidates = [
            p
            for p in parent.iterdir()
            if p.name != base and p.name.startswith(base) and not p.name.endswith((".gz", ".xz"))
        ]
        candidates.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        want = self._tail
        for cand in candidates[:4]:
            try:
                with cand.open("rb") as f:
                    if self._offset < len(want) or os.fstat(f.fileno()).st_size < self._offset:
                        continue
                    f.seek(self._offset - len(want))
                    if f.read(len(want)) != want:
                        continue
                    rest = f.read()
            except OSError:
                continue
            self._partial = self._emit(rest, self._partial)
            if self._partial:
                self._sink([self._partial.decode("utf-8", "replace")])
            log.info("log_rotation_recovered", path=str(cand), bytes=len(rest))
            return
        log.warning("log_truncated", path=str(self.path), lost_after_offset=self._offset)

    def _close_all(self) -> None:
        for fd, _, _ in self._retiring:
            os.close(fd)
        self._retiring = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_CHUNK = 1 << 16  # bytes of journalctl output read at a time at most


class JournalFollower(_Follower):
    """Follow one unit's journal through ``journalctl -o json --follow``.

    ``command`` is the journalctl invocation prefix, e.g. ``("journalctl",)``,
    ``("journalctl", "-D", "/path/to/journal")`` or an ``nsenter … journalctl`` prefix for a
    container. The cursor of the last line counted goes to ``cursor_file`` at most every
    ``save_every`` seconds and when stopping.

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
        self.unit = unit
        self.command = tuple(command)
        self._save_every = save_every
        self._cursor: str | None = self._load_cursor()
        self._saved: str | None = self._cursor
        self._proc: subprocess.Popen[bytes] | None = None
        self._output_fields = True  # False once journalctl refused --output-fields

    @property
    def cursor(self) -> str | None:
        return self._cursor

    def _load_cursor(self) -> str | None:
        try:
            text = self.cursor_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    def _save_cursor(self) -> None:
        if self._cursor is None or self._cursor == self._saved:
            return
        self.cursor_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cursor_file.with_name(self.cursor_file.name + ".tmp")
        tmp.write_text(self._cursor + "\n", encoding="utf-8")
        os.replace(tmp, self.cursor_file)  # atomic: a crash leaves the old or the new cursor
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
                        cursor = record["__CURSOR"]
                if lines:
                    self._sink(lines)
                if cursor is not None:
                    self._cursor = cursor
                if time.monotonic() - saved_at >= self._save_every:
                    self._save_cursor()
                    saved_at = time.monotonic()
        finally:
            self._save_cursor()
            _kill_group(proc)
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
            with contextlib.suppress(FileNotFoundError):
                self.cursor_file.unlink()
        raise LogSourceError(f"journalctl exited with {proc.returncode}: {err[-200:]}")

    def _interrupt(self) -> None:
        proc = self._proc
        if proc is not None:
            _kill_group(proc)


def decode_message(value: object) -> str | None:
    """journald's MESSAGE: a string, or an array of bytes when not valid UTF-8 (or null)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    return None


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


# --- the collector --------------------------------------------------------------------------


class LogsCollector:
    """Collector ``logs``: request/error/token metrics from Ollama's log (journald or a file)."""

    name = "logs"

    def __init__(
        self,
        source: Source,
        path: str = "",
        state_dir: Path = Path("/var/lib/ollama-watchdog"),
        models_dir: Path | None = None,
        journalctl: Sequence[str] = ("journalctl",),
        unit: str = "ollama.service",
        poll_interval: float = 0.2,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.counters = LogCounters(ModelNames(models_dir))
        self.follower: _Follower | None
        if source == "journald":
            # one cursor per unit: ollama-watchdog@N instances share the StateDirectory
            cursor = state_dir / f"journal-cursor-{unit}"
            self.follower = JournalFollower(
                self.counters.feed, cursor, unit, journalctl,
                backoff_initial=backoff_initial, backoff_max=backoff_max,
            )  # fmt: skip
        elif source == "file":
            if not path:
                raise ValueError("[logs] source = 'file' needs [logs] path")
            self.follower = FileFollower(
                Path(path), self.counters.feed, poll_interval,
                backoff_initial=backoff_initial, backoff_max=backoff_max,
            )  # fmt: skip
        elif source == "none":
            self.follower = None
        else:
            raise ValueError(f"unknown log source {source!r}")

    def start(self) -> None:
        if self.follower is not None:
            self.follower.start()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()

    def collect(self) -> Sequence[Metric]:
        if self.follower is not None:
            problem = self.follower.problem
            if problem is not None:
                raise LogSourceError(f"{self.follower.kind}: {problem}")
        return self.counters.families()


__all__ = [
    "DURATION_BUCKETS",
    "MAX_MODELS",
    "UNKNOWN_MODEL",
    "FileFollower",
    "JournalFollower",
    "LogCounters",
    "LogSourceError",
    "LogsCollector",
    "ModelNames",
    "decode_message",
    "display_name",
    "read_model_blobs",
]
