"""Ollama's processes, host memory and the models directory's disk (psutil).

Replaces the old monitor loop's ``ps %mem`` greps with exact numbers. One round:

1. scan ``<procfs>/*/cmdline`` once and keep the processes that match the shared rule
   (:func:`classify_argv`): the server is ``ollama serve``; a model process is ``llama-server``
   (v0.30+) or ``ollama runner`` (up to 0.24);
2. pick *the* server: the systemd unit's MainPID when one is configured and alive, else the
   ``ollama serve`` process (see :meth:`ProcessCollector._pick_server`);
3. read each matched process's memory, CPU time, start time, threads and fds through psutil;
4. host memory from ``/proc/meminfo``, the models directory's free space from ``statvfs`` and its
   size from a cache that is refreshed only when the directory changed or the cache is old.

A model process whose parent is not the current server is an *orphan*: Ollama crashed or was
restarted and the runner it spawned lives on, still holding RAM and VRAM. Model processes whose
parent is another live Ollama server belong to another instance on the same host and are skipped.

A process that exits while it is being read is normal (runners come and go with model loads):
it is left out of the round, never reported as an error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from ollama_watchdog.ollama.processes import Role, classify_argv, runner_model_digest

log = structlog.get_logger(__name__)

ROLES: tuple[Role, ...] = ("server", "runner")

# Metric names (DESIGN.md "Process and host"; ollama_process_threads is our addition).
PROCESS_UP = "ollama_process_up"
PROCESS_RSS = "ollama_process_resident_memory_bytes"
PROCESS_CPU = "ollama_process_cpu_seconds"  # CounterMetricFamily appends _total
PROCESS_START = "ollama_process_start_time_seconds"
PROCESS_FDS = "ollama_process_open_fds"
PROCESS_THREADS = "ollama_process_threads"
PROCESS_RUNNERS = "ollama_process_runners"
PROCESS_ORPHANS = "ollama_process_orphan_runners"
HOST_MEM_TOTAL = "ollama_host_memory_total_bytes"
HOST_MEM_AVAILABLE = "ollama_host_memory_available_bytes"
MODELS_DIR_FREE = "ollama_models_dir_free_bytes"
MODELS_DIR_SIZE = "ollama_models_dir_size_bytes"
MODELS_FS_SIZE = "ollama_models_dir_filesystem_size_bytes"


@dataclass(frozen=True)
class ProcessSample:
    """One Ollama process as read in one round."""

    pid: int
    ppid: int
    role: Role
    rss_bytes: int
    cpu_seconds: float
    start_time: float
    threads: int
    #: None where /proc/PID/fd may not be read (another user's process, no CAP_SYS_PTRACE)
    open_fds: int | None
    #: a model process: the sha256 hex of the blob it serves (from ``--model``), if named
    model_digest: str | None = None
    #: stopped by a signal (SIGSTOP, a debugger): it makes no progress whatever it holds
    stopped: bool = False


@dataclass(frozen=True)
class ProcessSnapshot:
    """Everything one round of :class:`ProcessCollector` saw."""

    server: ProcessSample | None
    #: model processes of this instance, orphans included
    runners: tuple[ProcessSample, ...]
    orphan_pids: frozenset[int]
    #: CPU seconds per role, monotone across process exits (see ``_CpuAccount``)
    cpu_seconds_total: dict[Role, float]
    host_memory_total: int
    host_memory_available: int
    models_dir_free: int | None
    models_dir_size: int | None
    #: size of the file system holding the models dir (for "percent free" alerts)
    models_fs_size: int | None = None

    @property
    def pids(self) -> frozenset[int]:
        """Pids of the server and of every model process (orphans too: they hold GPU memory)."""
        found = {r.pid for r in self.runners}
        if self.server is not None:
            found.add(self.server.pid)
        return frozenset(found)


class SystemdMainPid:
    """The MainPID of a systemd unit, read with ``systemctl show`` and cached between rounds.

    ``systemctl`` is asked again only when the cached pid is gone or the cache is older than
    ``max_age``: a restart gives the unit a new MainPID and kills the old one, which we notice on
    the next round. Missing ``systemctl`` (containers) or a failing call gives ``None`` and the
    caller falls back to matching command lines; it is logged once.
    """

    def __init__(
        self,
        unit: str,
        *,
        timeout: float = 2.0,
        max_age: float = 60.0,
        systemctl: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.unit = unit
        self._timeout = timeout
        self._max_age = max_age
        self._systemctl = systemctl or shutil.which("systemctl")
        self._clock = clock
        self._cached: int | None = None
        self._read_at = float("-inf")
        self._warned = False

    def __call__(self) -> int | None:
        fresh = self._clock() - self._read_at < self._max_age
        if fresh and (self._cached is None or psutil.pid_exists(self._cached)):
            return self._cached
        self._cached = self._query()
        self._read_at = self._clock()
        return self._cached

    def _query(self) -> int | None:
        if self._systemctl is None:
            self._warn_once("systemctl not found")
            return None
        try:
            out = subprocess.run(
                [self._systemctl, "show", "-p", "MainPID", "--value", self.unit],
                capture_output=True,
                text=True,
                timeout=self._timeout,
                check=True,
            ).stdout.strip()
            pid = int(out)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            self._warn_once(f"{type(exc).__name__}: {exc}")
            return None
        # MainPID=0: the unit is not running (or has no main process)
        return pid if pid > 0 else None

    def _warn_once(self, error: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning("systemd_mainpid_unavailable", unit=self.unit, error=error)


class _CpuAccount:
    """Per-role CPU seconds that never go down while processes come and go.

    A plain sum over live runners would drop when a runner exits, which Prometheus reads as a
    counter reset and turns into a bogus spike. So the last reading of every process that
    disappears is retired into a per-role total.
    """

    def __init__(self) -> None:
        self._live: dict[tuple[int, float], tuple[Role, float]] = {}
        self._retired: dict[Role, float] = dict.fromkeys(ROLES, 0.0)

    def update(self, samples: Iterable[ProcessSample]) -> dict[Role, float]:
        live = {(s.pid, s.start_time): (s.role, s.cpu_seconds) for s in samples}
        for key, (role, cpu) in self._live.items():
            if key not in live:
                self._retired[role] += cpu
        self._live = live
        totals = dict(self._retired)
        for role, cpu in live.values():
            totals[role] += cpu
        return totals


class _DirSizeCache:
    """Size of a directory tree, walked only when it changed or the last walk is old.

    Ollama adds and removes blobs by creating, renaming and deleting files in ``blobs/`` and
    ``manifests/``, which changes those directories' mtimes: a stat of three directories per
    round tells whether a walk is needed. A download that only appends to a ``-partial`` file
    does not touch the mtime, so a walk also happens once ``max_age`` has passed.
    """

    def __init__(self, root: Path, *, max_age: float, clock: Callable[[], float]) -> None:
        self._root = root
        self._max_age = max_age
        self._clock = clock
        self._signature: tuple[int, ...] | None = None
        self._walked_at = float("-inf")
        self._size: int | None = None

    def size(self) -> int | None:
        try:
            signature = tuple(
                p.stat().st_mtime_ns if p.exists() else 0
                for p in (self._root, self._root / "blobs", self._root / "manifests")
            )
        except OSError:
            return None
        stale = self._clock() - self._walked_at >= self._max_age
        if signature != self._signature or stale:
            self._size = _tree_size(self._root) if self._root.is_dir() else None
            self._signature = signature
            self._walked_at = self._clock()
        return self._size


def _tree_size(root: Path) -> int:
    """Apparent size of every regular file below ``root``; symlinks are not followed."""
    total = 0
    pending = [str(root)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:  # removed while we walked: not there any more
                        continue
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


@dataclass(frozen=True)
class _Candidate:
    pid: int
    role: Role
    model_digest: str | None = None


class ProcessCollector:
    """Ollama server + model processes, host memory and the models directory.

    Roots are arguments so tests and containers can point them elsewhere: ``procfs`` is scanned
    for command lines (per-process details go through psutil, which reads
    ``psutil.PROCFS_PATH``; a daemon reading a host's /proc mounted elsewhere sets both).
    ``main_pid`` returns the systemd unit's MainPID or None (see :class:`SystemdMainPid`).
    ``listen_port`` is the port of ``[ollama] url``: without a unit, and with several
    ``ollama serve`` on the host, the one listening on it is this instance's server.
    """

    name = "process"

    def __init__(
        self,
        models_dir: Path,
        *,
        procfs: Path = Path("/proc"),
        main_pid: Callable[[], int | None] | None = None,
        listen_port: int | None = None,
        dir_size_max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models_dir = models_dir
        self._procfs = procfs
        self._main_pid = main_pid
        self._listen_port = listen_port
        self._listen_denied_logged = False
        self._cpu = _CpuAccount()
        self._dir_size = _DirSizeCache(models_dir, max_age=dir_size_max_age, clock=clock)
        self._snapshot: ProcessSnapshot | None = None
        self._fds_denied_logged = False
        self._statvfs_logged = False
        self._lock = threading.Lock()  # collect() is not re-entrant; guards the CPU account

    # ----- the public surface used by the daemon and the GPU collector -----

    @property
    def snapshot(self) -> ProcessSnapshot | None:
        """The last finished round (None before the first)."""
        return self._snapshot

    def ollama_pids(self) -> frozenset[int]:
        """Pids of Ollama's own processes from the last round; the GPU collector's attribution."""
        snap = self._snapshot
        return snap.pids if snap is not None else frozenset()

    def collect(self) -> Sequence[Metric]:
        with self._lock:
            self._snapshot = self.scan()
            return families(self._snapshot)

    # ----- one round -----

    def scan(self) -> ProcessSnapshot:
        """Read everything once and return the snapshot (no metrics built)."""
        candidates = list(self._scan_cmdlines())
        samples: dict[int, ProcessSample] = {}
        for cand in candidates:
            sample = self._read(cand)
            if sample is not None:
                samples[sample.pid] = sample

        servers = [s for s in samples.values() if s.role == "server"]
        server = self._pick_server(servers)
        other_servers = {s.pid for s in servers} - ({server.pid} if server else set())
        runners: list[ProcessSample] = []
        orphans: set[int] = set()
        for s in samples.values():
            if s.role != "runner" or s.ppid in other_servers:
                continue  # another Ollama instance's model process: not ours, not an orphan
            runners.append(s)
            if server is None or s.ppid != server.pid:
                orphans.add(s.pid)

        counted = [*runners, *([server] if server else [])]
        mem = psutil.virtual_memory()
        free, fs_size = self._filesystem()
        return ProcessSnapshot(
            server=server,
            runners=tuple(sorted(runners, key=lambda r: r.pid)),
            orphan_pids=frozenset(orphans),
            cpu_seconds_total=self._cpu.update(counted),
            host_memory_total=int(mem.total),
            host_memory_available=int(mem.available),
            models_dir_free=free,
            models_dir_size=self._dir_size.size(),
            models_fs_size=fs_size,
        )

    def _scan_cmdlines(self) -> Iterable[_Candidate]:
        # One read of /proc/PID/cmdline per process, with a substring test before any
        # decoding: this loop is most of a round's cost on a busy host, so it uses raw
        # os.open/os.read (half the CPU of open()) and reads at most 64 KiB: the words the
        # rule looks at come first.
        procfs = str(self._procfs)
        try:
            entries = os.listdir(procfs)
        except OSError as exc:
            raise RuntimeError(f"cannot list {procfs}: {exc}") from exc
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                fd = os.open(f"{procfs}/{entry}/cmdline", os.O_RDONLY)
            except OSError:  # gone since the listing
                continue
            try:
                raw = os.read(fd, 65536)
            except OSError:  # exited mid-read
                continue
            finally:
                os.close(fd)
            if b"ollama" not in raw and b"llama-server" not in raw:
                continue
            argv = raw.rstrip(b"\0").decode("utf-8", "replace").split("\0")
            role = classify_argv(argv)
            if role is not None:
                digest = runner_model_digest(argv) if role == "runner" else None
                yield _Candidate(int(entry), role, digest)

    def _read(self, cand: _Candidate) -> ProcessSample | None:
        try:
            proc = psutil.Process(cand.pid)
            with proc.oneshot():
                status = proc.status()
                if status == psutil.STATUS_ZOMBIE:
                    return None  # exited, not yet reaped: holds no memory
                cpu = proc.cpu_times()
                mem = proc.memory_info()
                sample = ProcessSample(
                    pid=cand.pid,
                    ppid=proc.ppid(),
                    role=cand.role,
                    rss_bytes=int(mem.rss),
                    cpu_seconds=float(cpu.user + cpu.system),
                    start_time=float(proc.create_time()),
                    threads=int(proc.num_threads()),
                    open_fds=self._num_fds(proc),
                    model_digest=cand.model_digest,
                    stopped=status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP),
                )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None  # exited between the scan and the read: normal
        return sample

    def _num_fds(self, proc: psutil.Process) -> int | None:
        try:
            return int(proc.num_fds())
        except psutil.AccessDenied:
            if not self._fds_denied_logged:
                self._fds_denied_logged = True
                log.warning(
                    "process_fds_denied",
                    pid=proc.pid,
                    hint="run as the ollama user or with CAP_SYS_PTRACE to read open fds",
                )
            return None

    def _pick_server(self, servers: list[ProcessSample]) -> ProcessSample | None:
        """Choose the current server among ``ollama serve`` processes.

        A wrapper such as ``sudo ollama serve`` matches the rule too and is the parent of the
        real server, so parents of other candidates are dropped first. With a unit configured,
        its MainPID (or the candidate it is an ancestor of) wins; otherwise, with several left,
        the one listening on ``[ollama] url``'s port (one watchdog per instance without
        systemd); otherwise the oldest remains.
        """
        parents = {s.ppid for s in servers}
        leaves = [s for s in servers if s.pid not in parents] or servers
        main_pid = self._main_pid() if self._main_pid is not None else None
        if main_pid is not None:
            for s in leaves:
                if s.pid == main_pid or s.ppid == main_pid:
                    return s
            main = self._read(_Candidate(main_pid, "server"))
            if main is not None:
                return main  # systemd knows best even when the argv does not look like Ollama
        if self._listen_port is not None and len(leaves) > 1:
            for s in sorted(leaves, key=lambda s: (s.start_time, s.pid)):
                if self._listens(s.pid, self._listen_port):
                    return s
        return min(leaves, key=lambda s: (s.start_time, s.pid), default=None)

    def _listens(self, pid: int, port: int) -> bool:
        """Whether process ``pid`` holds a TCP socket listening on ``port``.

        Reading another user's sockets needs that user or CAP_SYS_PTRACE; denied, it is logged
        once (with the fix: set ``[ollama] unit``) and the oldest server is taken as before.
        """
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.AccessDenied:
            if not self._listen_denied_logged:
                self._listen_denied_logged = True
                log.warning(
                    "process_sockets_denied",
                    pid=pid,
                    hint="several ollama serve run here: set [ollama] unit so this "
                    "watchdog finds its own server, or run it as the ollama user",
                )
            return False
        except psutil.Error:
            return False
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns
        )

    def _filesystem(self) -> tuple[int | None, int | None]:
        """(bytes free for Ollama, file system size) of the models dir, or Nones."""
        try:
            st = os.statvfs(self.models_dir)
        except OSError as exc:
            if not self._statvfs_logged:
                self._statvfs_logged = True
                log.warning("models_dir_unreadable", path=str(self.models_dir), error=str(exc))
            return None, None
        self._statvfs_logged = False
        # f_bavail: what an unprivileged writer (Ollama) can still use
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def families(snap: ProcessSnapshot) -> list[Metric]:
    """Metric families of one snapshot (pure: tests and the benchmark call it directly)."""
    up = GaugeMetricFamily(PROCESS_UP, "1 if the Ollama server process was found")
    up.add_metric([], 1.0 if snap.server is not None else 0.0)

    rss = GaugeMetricFamily(
        PROCESS_RSS, "Resident memory of Ollama's processes, summed by role", labels=["role"]
    )
    cpu = CounterMetricFamily(
        PROCESS_CPU,
        "CPU seconds (user+system) used by Ollama's processes by role, kept across exits",
        labels=["role"],
    )
    start = GaugeMetricFamily(
        PROCESS_START,
        "Start time of the server, and of the most recently started model process (unix s)",
        labels=["role"],
    )
    threads = GaugeMetricFamily(
        PROCESS_THREADS, "Threads of Ollama's processes, summed by role", labels=["role"]
    )
    fds = GaugeMetricFamily(PROCESS_FDS, "Open file descriptors of the Ollama server process")
    if snap.server is not None:
        rss.add_metric(["server"], float(snap.server.rss_bytes))
        start.add_metric(["server"], snap.server.start_time)
        threads.add_metric(["server"], float(snap.server.threads))
        if snap.server.open_fds is not None:
            fds.add_metric([], float(snap.server.open_fds))
    rss.add_metric(["runner"], float(sum(r.rss_bytes for r in snap.runners)))
    threads.add_metric(["runner"], float(sum(r.threads for r in snap.runners)))
    if snap.runners:
        start.add_metric(["runner"], max(r.start_time for r in snap.runners))
    for role in ROLES:
        cpu.add_metric([role], snap.cpu_seconds_total[role])

    runners = GaugeMetricFamily(PROCESS_RUNNERS, "Model processes (runners) now, orphans included")
    runners.add_metric([], float(len(snap.runners)))
    orphans = GaugeMetricFamily(
        PROCESS_ORPHANS,
        "Model processes whose parent is not the current Ollama server (left by a crash)",
    )
    orphans.add_metric([], float(len(snap.orphan_pids)))

    mem_total = GaugeMetricFamily(HOST_MEM_TOTAL, "Host memory total (MemTotal)")
    mem_total.add_metric([], float(snap.host_memory_total))
    mem_avail = GaugeMetricFamily(HOST_MEM_AVAILABLE, "Host memory available (MemAvailable)")
    mem_avail.add_metric([], float(snap.host_memory_available))

    out: list[Metric] = [up, rss, cpu, start, threads, fds, runners, orphans, mem_total, mem_avail]
    if snap.models_dir_free is not None:
        free = GaugeMetricFamily(
            MODELS_DIR_FREE, "Bytes free for unprivileged users on the models dir's filesystem"
        )
        free.add_metric([], float(snap.models_dir_free))
        out.append(free)
    if snap.models_fs_size is not None:
        fs_size = GaugeMetricFamily(
            MODELS_FS_SIZE, "Size of the file system that holds the models directory"
        )
        fs_size.add_metric([], float(snap.models_fs_size))
        out.append(fs_size)
    if snap.models_dir_size is not None:
        size = GaugeMetricFamily(
            MODELS_DIR_SIZE, "Apparent size of all files under the models directory (cached walk)"
        )
        size.add_metric([], float(snap.models_dir_size))
        out.append(size)
    return out


__all__ = [
    "ProcessCollector",
    "ProcessSample",
    "ProcessSnapshot",
    "SystemdMainPid",
    "families",
]
