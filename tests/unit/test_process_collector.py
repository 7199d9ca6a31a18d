"""ProcessCollector against real processes this test starts.

The stand-ins follow the team's matching rule: a Python script named ``ollama`` run as
``python3 <dir>/ollama serve`` spawns model processes of both eras (``<dir>/llama-server`` and
``<dir>/ollama runner``), each holding a known amount of resident memory. Most tests point the
collector's ``procfs`` at a directory of links to the test's own ``/proc/PID`` entries, so other
Ollama stand-ins that run on this shared machine at the same time cannot change the counts; one
test scans the real ``/proc``.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest
import structlog
from prometheus_client import CollectorRegistry
from support.nvml import FakeGpu, FakeNvml
from support.registry import registry_of
from support.sim import SimulatorProcess
from support.wait import wait_until

from ollama_watchdog.collectors.api import ApiCollector
from ollama_watchdog.collectors.evidence import EvidenceCollector
from ollama_watchdog.collectors.gpu import GpuCollector
from ollama_watchdog.collectors.process import ProcessCollector, SystemdMainPid
from ollama_watchdog.ollama.api import OllamaClient
from ollama_watchdog.ollama.processes import classify_argv
from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.signals import Signal, SignalKind

MIB = 1024 * 1024
ALLOC_MIB = 48
DEADLINE = 30.0  # generous wait for processes to start on a shared, noisy machine

RUNNER_BODY = r"""
import os, sys, time
# Touch every page so the memory is resident, not just reserved.
held = bytearray(b"\x01") * (int(os.environ.get("STANDIN_ALLOC_MIB", "0")) * 1024 * 1024)
burn = float(os.environ.get("STANDIN_BURN_S", "0"))
while time.process_time() < burn:
    pass
print("ready", os.getpid(), flush=True)
time.sleep(3600)
"""

OLLAMA_STANDIN = r"""
import json, os, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
if sys.argv[1:2] == ["serve"]:
    if os.environ.get("STANDIN_WRAP") == "1":  # like `sudo ollama serve`: a matching parent
        inner = subprocess.Popen([sys.executable, __file__, "serve"],
                                 env=dict(os.environ, STANDIN_WRAP="0"))
        sys.exit(inner.wait())
    kids = []
    for kind in filter(None, os.environ.get("STANDIN_RUNNERS", "").split(",")):
        if kind == "llama-server":
            argv = [sys.executable, os.path.join(here, "llama-server"), "--model", "blob"]
        else:
            argv = [sys.executable, __file__, "runner", "--model", "blob", "--port", "0"]
        kids.append(subprocess.Popen(argv))
    print(json.dumps({"server": os.getpid(), "runners": [k.pid for k in kids]}), flush=True)
    time.sleep(3600)
elif sys.argv[1:2] == ["runner"]:
    exec(open(os.path.join(here, "runner_body.py")).read())
"""


class StandIns:
    """Writes the stand-in scripts and starts them; kills every process group it started."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        (self.bin / "runner_body.py").write_text(RUNNER_BODY)
        (self.bin / "ollama").write_text(OLLAMA_STANDIN)
        (self.bin / "llama-server").write_text(RUNNER_BODY)
        self.procfs = root / "proc"
        self.procfs.mkdir()
        self._groups: list[subprocess.Popen[str]] = []

    def _start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            start_new_session=True,  # one process group per stand-in, killed as a whole
        )
        self._groups.append(proc)
        return proc

    def server(
        self, runners: Sequence[str] = (), *, wrap: bool = False, burn_s: float = 0.0
    ) -> tuple[int, list[int], subprocess.Popen[str]]:
        """Start ``ollama serve`` with model children; return (server pid, runner pids, Popen)."""
        env = {
            "STANDIN_RUNNERS": ",".join(runners),
            "STANDIN_ALLOC_MIB": str(ALLOC_MIB),
            "STANDIN_BURN_S": str(burn_s),
            "STANDIN_WRAP": "1" if wrap else "0",
        }
        proc = self._start([str(self.bin / "ollama"), "serve"], env)
        lines = _lines(proc, 1 + len(runners))
        info = json.loads(next(line for line in lines if line.startswith("{")))
        self.expose(proc.pid, info["server"], *info["runners"])
        return int(info["server"]), [int(p) for p in info["runners"]], proc

    def lone_runner(self) -> int:
        """A llama-server whose parent is this test, not an Ollama server: an orphan."""
        proc = self._start(
            [str(self.bin / "llama-server"), "--model", "blob"],
            {"STANDIN_ALLOC_MIB": str(ALLOC_MIB)},
        )
        _lines(proc, 1)
        self.expose(proc.pid)
        return proc.pid

    def expose(self, *pids: int) -> None:
        """Make pids visible in the private procfs (links to the real /proc entries)."""
        for pid in pids:
            link = self.procfs / str(pid)
            if not link.exists():
                link.symlink_to(f"/proc/{pid}")

    def cleanup(self) -> None:
        for proc in self._groups:
            # the whole group, even when the server is gone: its runners outlive it
            stop_process_group(proc, first=None, sweep=True, reap_timeout=DEADLINE)
            if proc.stdout is not None:
                proc.stdout.close()


def _lines(proc: subprocess.Popen[str], count: int) -> list[str]:
    """Read ``count`` lines from a stand-in's stdout, waiting at most DEADLINE."""
    assert proc.stdout is not None
    out: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def pump() -> None:
        for _ in range(count):
            line = stdout.readline()
            if not line:
                return
            out.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + DEADLINE
    got = [out.get(timeout=max(0.1, deadline - time.monotonic())) for _ in range(count)]
    return got


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[StandIns]:
    s = StandIns(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models"
    (d / "blobs").mkdir(parents=True)
    (d / "manifests" / "registry.ollama.ai" / "library" / "tiny").mkdir(parents=True)
    (d / "blobs" / ("sha256-" + "a" * 64)).write_bytes(b"x" * 1000)
    (d / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest").write_bytes(b"{}")
    return d


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def vmrss(pid: int) -> int:
    """Resident memory read straight from /proc/PID/status, independent of psutil."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


# ---------------------------------------------------------------- the matching rule


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/usr/local/bin/ollama", "serve"], "server"),
        (["python3", "/usr/local/bin/ollama", "serve"], "server"),
        (["ollama", "serve", "--verbose"], "server"),
        (["/usr/bin/ollama", "runner", "--model", "/m/blobs/sha256-x", "--port", "4"], "runner"),
        (["/usr/local/lib/ollama/llama-server", "--model", "b", "--port", "5"], "runner"),
        (["python3", "/tmp/x/llama-server", "--model", "b"], "runner"),
        (["ollama", "run", "llama3.2"], None),
        (["ollama-watchdog", "run"], None),
        (["/usr/bin/ollama"], None),
        (["grep", "ollama"], None),
        (["bash", "-c", "ollama serve"], None),
        (["python3", "-m", "x", "/tmp/llama-server"], None),  # llama-server is argv[3]
        ([], None),
    ],
)
def test_classify_argv_follows_the_shared_rule(argv: list[str], role: str | None) -> None:
    assert classify_argv(argv) == role


# ---------------------------------------------------------------- processes


def test_server_and_runners_of_both_eras(standins: StandIns, models_dir: Path) -> None:
    before = time.time()
    server, runners, _ = standins.server(["llama-server", "runner"])
    after = time.time()
    c = ProcessCollector(models_dir, procfs=standins.procfs)
    reg = registry_of(c)

    assert value(reg, "ollama_process_up") == 1
    assert value(reg, "ollama_process_runners") == 2
    assert value(reg, "ollama_process_orphan_runners") == 0
    assert c.ollama_pids() == {server, *runners}

    runner_rss = value(reg, "ollama_process_resident_memory_bytes", role="runner")
    assert runner_rss is not None
    # each runner holds ALLOC_MIB of touched memory, plus an interpreter
    assert runner_rss >= 2 * ALLOC_MIB * MIB
    assert abs(runner_rss - sum(vmrss(p) for p in runners)) < 4 * MIB
    server_rss = value(reg, "ollama_process_resident_memory_bytes", role="server")
    assert server_rss is not None and abs(server_rss - vmrss(server)) < 4 * MIB

    started = value(reg, "ollama_process_start_time_seconds", role="server")
    assert started is not None and before - 2 <= started <= after + 2
    runner_started = value(reg, "ollama_process_start_time_seconds", role="runner")
    assert runner_started is not None and started <= runner_started + 1
    fds = value(reg, "ollama_process_open_fds")
    assert fds is not None and fds >= 3  # stdin, stdout, stderr at least
    threads = value(reg, "ollama_process_threads", role="runner")
    assert threads is not None and threads >= 2
    assert value(reg, "ollama_process_cpu_seconds_total", role="server") is not None


def test_no_server_means_up_zero(standins: StandIns, models_dir: Path) -> None:
    reg = registry_of(ProcessCollector(models_dir, procfs=standins.procfs))
    assert value(reg, "ollama_process_up") == 0
    assert value(reg, "ollama_process_runners") == 0
    assert value(reg, "ollama_process_resident_memory_bytes", role="server") is None
    assert value(reg, "ollama_process_open_fds") is None


def test_runner_not_started_by_the_server_is_an_orphan(
    standins: StandIns, models_dir: Path
) -> None:
    server, runners, _ = standins.server(["llama-server"])
    lone = standins.lone_runner()
    c = ProcessCollector(models_dir, procfs=standins.procfs)
    reg = registry_of(c)
    assert value(reg, "ollama_process_runners") == 2
    assert value(reg, "ollama_process_orphan_runners") == 1
    snap = c.snapshot
    assert snap is not None and snap.orphan_pids == {lone}
    # the orphan still holds memory, and GPU attribution must see it
    assert c.ollama_pids() == {server, *runners, lone}


def test_server_crash_turns_its_runners_into_orphans(standins: StandIns, models_dir: Path) -> None:
    server, _runners, proc = standins.server(["llama-server", "runner"])
    c = ProcessCollector(models_dir, procfs=standins.procfs)
    assert value(registry_of(c), "ollama_process_orphan_runners") == 0

    os.kill(server, signal.SIGKILL)  # the runners live on, re-parented
    proc.wait(timeout=DEADLINE)
    reg = registry_of(c)
    assert value(reg, "ollama_process_up") == 0
    assert value(reg, "ollama_process_runners") == 2
    assert value(reg, "ollama_process_orphan_runners") == 2
    rss = value(reg, "ollama_process_resident_memory_bytes", role="runner")
    assert rss is not None and rss >= 2 * ALLOC_MIB * MIB


def test_runner_cpu_counter_never_drops_when_a_runner_exits(
    standins: StandIns, models_dir: Path
) -> None:
    _, runners, _ = standins.server(["llama-server", "llama-server"], burn_s=0.3)
    c = ProcessCollector(models_dir, procfs=standins.procfs)
    first = value(registry_of(c), "ollama_process_cpu_seconds_total", role="runner")
    # /proc counts CPU in clock ticks (10 ms): allow one tick of truncation per runner
    assert first is not None and first >= 2 * (0.3 - 0.011)

    os.kill(runners[0], signal.SIGKILL)
    # The stand-in server never reaps it: the runner stays a zombie, which holds nothing
    # and must not count as a runner.
    wait_until(
        lambda: psutil.Process(runners[0]).status() == psutil.STATUS_ZOMBIE,
        "runner died",
        timeout=DEADLINE,
    )
    reg = registry_of(c)
    assert value(reg, "ollama_process_runners") == 1
    second = value(reg, "ollama_process_cpu_seconds_total", role="runner")
    assert second is not None and second >= first


def test_wrapper_parent_is_not_taken_for_the_server(standins: StandIns, models_dir: Path) -> None:
    server, _runners, proc = standins.server(["llama-server"], wrap=True)
    assert server != proc.pid  # the inner server, child of the matching wrapper
    c = ProcessCollector(models_dir, procfs=standins.procfs)
    reg = registry_of(c)
    assert value(reg, "ollama_process_orphan_runners") == 0
    snap = c.snapshot
    assert snap is not None and snap.server is not None and snap.server.pid == server


def test_unit_mainpid_picks_the_instance_and_skips_other_instances_runners(
    standins: StandIns, models_dir: Path
) -> None:
    older, older_runners, _ = standins.server(["llama-server"])
    mine, my_runners, _ = standins.server(["runner"])

    by_age = ProcessCollector(models_dir, procfs=standins.procfs)
    by_age.collect()
    assert by_age.ollama_pids() == {older, *older_runners}

    by_unit = ProcessCollector(models_dir, procfs=standins.procfs, main_pid=lambda: mine)
    reg = registry_of(by_unit)
    assert by_unit.ollama_pids() == {mine, *my_runners}
    # the other instance's runner has a live Ollama parent: not ours, and not an orphan
    assert value(reg, "ollama_process_runners") == 1
    assert value(reg, "ollama_process_orphan_runners") == 0


def test_gpu_memory_of_the_instance_is_its_server_its_runners_and_runners_left_behind(
    standins: StandIns, models_dir: Path
) -> None:
    """ollama-watchdog@0 on a host with a second Ollama: the process collector's pids (this
    instance's server, found by the unit's MainPID, and its children) split NVML's compute
    processes (faked: no GPU here) into Ollama's and other's."""
    other, other_runners, _ = standins.server(["llama-server"])
    mine, my_runners, _ = standins.server(["runner"])
    lone = standins.lone_runner()  # its server is gone: memory a restart should have freed
    gib = 1024**3
    gpu = FakeGpu(
        uuid="GPU-a",
        procs=[(mine, gib // 2), (my_runners[0], 3 * gib), (lone, 2 * gib),
               (other, gib), (other_runners[0], 5 * gib), (os.getpid(), gib)],
    )  # fmt: skip
    process = ProcessCollector(models_dir, procfs=standins.procfs, main_pid=lambda: mine)
    gpus = GpuCollector(process.ollama_pids, nvml=FakeNvml([gpu]), devices=["GPU-a"])
    try:
        process.collect()  # the daemon runs the process collector first; pids are its last
        reg = registry_of(gpus)
    finally:
        gpus.stop()
    assert value(reg, "ollama_gpu_ollama_memory_bytes", gpu="0") == gib // 2 + 3 * gib + 2 * gib
    assert value(reg, "ollama_gpu_other_memory_bytes", gpu="0") == gib + 5 * gib + gib


LISTENER = """\
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
time.sleep(600)
"""


def test_without_a_unit_the_server_listening_on_the_urls_port_is_this_instances(
    standins: StandIns, models_dir: Path, tmp_path: Path
) -> None:
    """Two ``ollama serve`` on one host and no systemd unit (``[ollama] unit = ""``): each
    watchdog picks the server listening on its own ``[ollama] url`` port, not the oldest."""
    script = tmp_path / "listen" / "ollama"
    script.parent.mkdir()
    script.write_text(LISTENER)
    ports: list[int] = []
    pids: list[int] = []
    for _ in range(2):
        proc = standins._start([str(script), "serve"], {})
        ports.append(int(_lines(proc, 1)[0]))
        pids.append(proc.pid)
        standins.expose(proc.pid)
    older, younger = pids
    for port, want in ((ports[1], younger), (ports[0], older), (None, older)):
        c = ProcessCollector(models_dir, procfs=standins.procfs, listen_port=port)
        snap = c.scan()
        assert snap.server is not None and snap.server.pid == want, (port, want)
    nobody = ProcessCollector(models_dir, procfs=standins.procfs, listen_port=1)
    server = nobody.scan().server
    assert server is not None and server.pid == older  # none listens there: the oldest


def test_vram_not_released_is_right_when_one_of_two_gpus_is_freed_and_the_other_not(
    standins: StandIns, models_dir: Path, simulator: SimulatorProcess
) -> None:
    """A runner spread over two (faked) GPUs, then the model unloaded (``/api/ps`` of a real
    simulator lists none): the ``vram_held`` evidence counts what is left on either GPU, so
    GPU 0 freed and GPU 1 not is still memory held; both freed is not."""
    server, runners, _ = standins.server(["llama-server"])
    gib = 1024**3
    gpu0 = FakeGpu(uuid="GPU-a", procs=[(runners[0], 3 * gib), (os.getpid(), gib)])
    gpu1 = FakeGpu(uuid="GPU-b", procs=[(runners[0], 3 * gib), (server, gib // 2)])
    process = ProcessCollector(models_dir, procfs=standins.procfs, main_pid=lambda: server)
    gpus = GpuCollector(process.ollama_pids, nvml=FakeNvml([gpu0, gpu1]))
    api = ApiCollector(OllamaClient(simulator.url, 5.0), emit=lambda s: None)
    evidence = EvidenceCollector(lambda s: None, process=process, api=api, gpu=gpus,
                                 models_dir=models_dir)

    def held() -> Signal:
        process.collect()
        api.collect()
        gpus.collect()
        (sig,) = [s for s in evidence.signals() if s.kind == SignalKind.VRAM_HELD]
        return sig

    try:
        first = held()  # the runner still on both GPUs with nothing in /api/ps
        assert not first.ok and first.count == 6 * gib + gib // 2
        gpu0.procs = [(os.getpid(), gib)]  # GPU 0 freed; GPU 1 keeps its runner and the server's
        one = held()
        assert not one.ok and one.count == 3 * gib + gib // 2
        gpu1.procs = [(server, gib // 2)]  # the runner gone from both: the server's 512 MiB
        assert not held().ok
        gpu1.procs = []
        both = held()
        assert both.ok and both.count == 0  # another user's 1 GiB on GPU 0 is not Ollama's
    finally:
        gpus.stop()


def test_real_procfs_scan_finds_the_standins(standins: StandIns, models_dir: Path) -> None:
    server, runners, _ = standins.server(["llama-server", "runner"])
    lone = standins.lone_runner()
    c = ProcessCollector(models_dir, main_pid=lambda: server)  # real /proc, shared machine
    c.collect()
    snap = c.snapshot
    assert snap is not None and snap.server is not None and snap.server.pid == server
    # other people's stand-ins may run here too: check ours are in, with the right status
    assert {server, *runners, lone} <= c.ollama_pids()
    assert lone in snap.orphan_pids
    assert not set(runners) & snap.orphan_pids


# ---------------------------------------------------------------- host and models dir


def test_host_memory_matches_meminfo(standins: StandIns, models_dir: Path) -> None:
    reg = registry_of(ProcessCollector(models_dir, procfs=standins.procfs))
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    total = int(meminfo["MemTotal"].split()[0]) * 1024
    assert value(reg, "ollama_host_memory_total_bytes") == total
    available = value(reg, "ollama_host_memory_available_bytes")
    assert available is not None and 0 < available <= total


def test_models_dir_size_is_cached_until_the_directory_changes(
    standins: StandIns, models_dir: Path
) -> None:
    now = [1000.0]
    c = ProcessCollector(
        models_dir, procfs=standins.procfs, dir_size_max_age=300.0, clock=lambda: now[0]
    )
    assert value(registry_of(c), "ollama_models_dir_size_bytes") == 1000 + 2

    blob = models_dir / "blobs" / ("sha256-" + "b" * 64)
    blob.write_bytes(b"y" * 500)  # a new file changes blobs/'s mtime: walked again
    assert value(registry_of(c), "ollama_models_dir_size_bytes") == 1502

    # Growing a file in place (a resumed download) leaves the mtimes alone: the cached size
    # stays until max_age has passed, which is what keeps a round cheap.
    with blob.open("ab") as fh:
        fh.write(b"z" * 100)
    assert value(registry_of(c), "ollama_models_dir_size_bytes") == 1502
    now[0] += 301.0
    assert value(registry_of(c), "ollama_models_dir_size_bytes") == 1602

    reg = registry_of(c)
    free = value(reg, "ollama_models_dir_free_bytes")
    st = os.statvfs(models_dir)
    assert free is not None and 0 < free <= st.f_blocks * st.f_frsize
    # the file system's size, for the "percent free" alerts
    assert value(reg, "ollama_models_dir_filesystem_size_bytes") == st.f_blocks * st.f_frsize


def test_symlinks_in_models_dir_are_not_followed(standins: StandIns, models_dir: Path) -> None:
    big = models_dir.parent / "elsewhere.bin"
    big.write_bytes(b"q" * 10_000)
    (models_dir / "blobs" / "link").symlink_to(big)
    reg = registry_of(ProcessCollector(models_dir, procfs=standins.procfs))
    assert value(reg, "ollama_models_dir_size_bytes") == 1002


def test_missing_models_dir_is_reported_once_and_not_an_error(
    standins: StandIns, tmp_path: Path
) -> None:
    c = ProcessCollector(tmp_path / "nope", procfs=standins.procfs)
    with structlog.testing.capture_logs() as logs:
        reg = registry_of(c)
        c.collect()
    assert value(reg, "ollama_models_dir_free_bytes") is None
    assert value(reg, "ollama_models_dir_size_bytes") is None
    assert value(reg, "ollama_models_dir_filesystem_size_bytes") is None
    assert value(reg, "ollama_host_memory_total_bytes") is not None
    assert [e["event"] for e in logs].count("models_dir_unreadable") == 1


# ---------------------------------------------------------------- systemd MainPID


def _fake_systemctl(tmp_path: Path, body: str) -> Path:
    """A stand-in systemctl (the one boundary we replace: no systemd on this machine)."""
    exe = tmp_path / "systemctl"
    exe.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\n{body}\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe


def test_systemd_mainpid_is_cached_while_the_process_lives(tmp_path: Path) -> None:
    exe = _fake_systemctl(tmp_path, f"echo {os.getpid()}")
    now = [0.0]
    main = SystemdMainPid("ollama.service", systemctl=str(exe), clock=lambda: now[0])
    assert main() == os.getpid()
    assert main() == os.getpid()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["show -p MainPID --value ollama.service"]
    now[0] += 61.0
    assert main() == os.getpid()
    assert len((tmp_path / "calls").read_text().splitlines()) == 2


def test_systemd_mainpid_zero_failure_and_hang_give_none(tmp_path: Path) -> None:
    stopped = SystemdMainPid("ollama.service", systemctl=str(_fake_systemctl(tmp_path, "echo 0")))
    assert stopped() is None
    broken = SystemdMainPid("ollama.service", systemctl=str(tmp_path / "missing-systemctl"))
    hung_exe = tmp_path / "hung"
    hung_exe.mkdir()
    hung = SystemdMainPid(
        "ollama.service", systemctl=str(_fake_systemctl(hung_exe, "exec sleep 30")), timeout=0.5
    )
    with structlog.testing.capture_logs() as logs:
        assert broken() is None
        assert hung() is None
    assert [e["event"] for e in logs] == ["systemd_mainpid_unavailable"] * 2


# ---------------------------------------------------------------- against the simulator


def test_simulator_server_and_its_runner_are_found(tmp_path: Path, models_dir: Path) -> None:
    """The team's simulator, run as ``ollama serve``, spawns a real runner child on a load."""
    requests = pytest.importorskip("requests")
    from support.sim import SimulatorProcess

    with SimulatorProcess(tmp_path / "sim", as_ollama=True) as sim:
        c = ProcessCollector(models_dir, main_pid=lambda: sim.pid)  # real /proc
        c.collect()
        snap = c.snapshot
        assert snap is not None and snap.server is not None and snap.server.pid == sim.pid
        assert not [r for r in snap.runners if r.ppid == sim.pid]

        tags = requests.get(f"{sim.url}/api/tags", timeout=10).json()
        # any model that generates (the fake store also holds an embedding model)
        model = next(m["name"] for m in tags["models"] if "embed" not in m["name"])
        reply = requests.post(
            f"{sim.url}/api/generate",
            json={"model": model, "prompt": "hi", "stream": False},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        c.collect()
        snap = c.snapshot
        assert snap is not None
        mine = [r for r in snap.runners if r.ppid == sim.pid]
        assert len(mine) == 1 and mine[0].pid in c.ollama_pids()
        assert mine[0].pid not in snap.orphan_pids
        assert mine[0].rss_bytes > 0
