"""Boot a real Debian bookworm systemd in systemd-nspawn, for tests and the offline installer.

The system tests prove what happens between systemd, journald, polkit, Ollama and us with the
real programs, not a fake ``systemctl``. This module is the harness; it knows nothing about
pytest, so ``installer/`` tests reuse it as it is.

Python API::

    from nspawn import Container, build_base_rootfs, build_wheelhouse, project_root

    base = build_base_rootfs()                      # debootstrap once, cached by package list
    wheels = build_wheelhouse(project_root(), tmp / "wheels")   # our wheel + deps, offline
    c = Container.from_base(base, tmp / "session", private_network=True)
    c.prepare(["python3", "-m", "venv", "/opt/x"])  # before boot: nspawn runs one command
    c.copy_in(wheels, "/opt/wheelhouse")            # a file or a directory, before or after boot
    c.boot()                                        # systemd as the container's PID 1
    r = c.run(["systemctl", "is-active", "ollama.service"], timeout=30, check=False)
    r.stdout, r.returncode
    c.run(["systemctl", "restart", "ollama.service"], user="ollama-watchdog", check=False)
    status, body = c.http("GET", "http://127.0.0.1:11434/api/version")
    c.journal(unit="ollama.service")                # text, read with the host's journalctl -D
    c.poweroff()                                    # clean shutdown; kills it if that hangs
    c.destroy()                                     # poweroff if needed, then delete the copy

Safety: systemd and systemd-tmpfiles must never run against the host's root (booting it
deletes /tmp and more), so every rootfs path is checked (absolute, not ``/``, carries this
harness's marker file) before nspawn sees it, and files are written into a rootfs only through
paths that stay inside it (an absolute symlink in the rootfs would otherwise point at the host).

Environment knobs: ``OLLAMA_WATCHDOG_TEST_CACHE`` (where base rootfs trees are cached, default
``<repo>/.cache/system-tests``) and ``OLLAMA_WATCHDOG_DEBIAN_MIRROR`` (default: the Debian URI
apt uses on this host, else deb.debian.org).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from support.wait import wait_until

from ollama_watchdog.procgroup import stop_process_group

SUITE = "bookworm"

# polkitd needs a logind (libpam-systemd provides it); procps for ps/pgrep in diagnostics;
# python3-venv carries ensurepip so the venv can install our wheels offline.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "libpam-systemd",
    "dbus",
    "polkitd",
    "python3",
    "python3-venv",
    "procps",
)

# Bump when the post-debootstrap tweaks below change, so stale caches are not reused.
_BASE_LAYOUT_VERSION = "1"
MARKER = ".ollama-watchdog-test-rootfs"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_INIT_PATHS = ("/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init")

# Units that only make sense on a real console or real hardware; masked so boot is quick and
# "degraded" means something of ours failed.
_MASKED_UNITS = (
    "console-getty.service",
    "getty@.service",
    "systemd-firstboot.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
)


class HarnessError(RuntimeError):
    """The container could not be built, booted or driven."""


def project_root() -> Path:
    """The repository root (where pyproject.toml is)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise HarnessError(f"no pyproject.toml above {here}")


def cache_dir() -> Path:
    env = os.environ.get("OLLAMA_WATCHDOG_TEST_CACHE")
    return Path(env) if env else project_root() / ".cache" / "system-tests"


def debian_mirror(sources: Sequence[Path] | None = None) -> str:
    """The Debian archive URI apt uses here (debootstrap must reach the same mirror)."""
    env = os.environ.get("OLLAMA_WATCHDOG_DEBIAN_MIRROR")
    if env:
        return env
    if sources is None:
        sources = [
            Path("/etc/apt/sources.list"),
            *sorted(Path("/etc/apt/sources.list.d").glob("*")),
        ]
    for path in sources:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        # deb822 (URIs: ...) and one-line (deb URI suite ...) forms; skip security/updates.
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _check_rootfs(rootfs: Path) -> Path:
    """Refuse anything that could be the host's root: nspawn --boot there would wreck it."""
    resolved = rootfs.resolve()
    if not rootfs.is_absolute() or resolved == Path("/") or len(resolved.parts) < 3:
        raise HarnessError(f"refusing rootfs {rootfs}: not a private directory tree")
    if not (resolved / MARKER).is_file():
        raise HarnessError(f"refusing rootfs {rootfs}: no {MARKER} marker (not built by us)")
    return resolved


def inside(rootfs: Path, path: str) -> Path:
    """Host path of ``path`` inside ``rootfs``, refusing symlinks that lead out of it."""
    root = _check_rootfs(rootfs)
    if not path.startswith("/"):
        raise HarnessError(f"container path must be absolute: {path}")
    target = root / path.lstrip("/")
    # Only the parent must resolve inside: the target itself is replaced, never followed.
    parent = target.parent.resolve()
    if parent != root and root not in parent.parents:
        raise HarnessError(f"{path} leaves the rootfs through a symlink ({parent})")
    return parent / target.name


def _digest(items: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_base_rootfs(
    packages: Sequence[str] = BASE_PACKAGES,
    *,
    cache: Path | None = None,
    mirror: str | None = None,
    timeout: float = 1200.0,
) -> Path:
    """Return a cached debootstrap tree with ``packages``; build it (about a minute) if absent.

    The tree is shared between sessions and must stay pristine: copy it (``Container.from_base``)
    before changing or booting anything.
    """
    cache = cache or cache_dir()
    mirror = mirror or debian_mirror()
    key = _digest([SUITE, mirror, _BASE_LAYOUT_VERSION, *sorted(packages)])
    final = cache / f"rootfs-{key}"
    with _locked(cache / f"rootfs-{key}.lock"):
        if (final / MARKER).is_file():
            return final
        work = cache / f"rootfs-{key}.building"
        if work.exists():
            shutil.rmtree(work)
        log = cache / f"rootfs-{key}.debootstrap.log"
        cmd = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            SUITE,
            str(work),
            mirror,
        ]
        with log.open("wb") as out:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        if proc.returncode != 0:
            raise HarnessError(f"debootstrap failed ({proc.returncode}); see {log}")
        _tweak_base(work)
        (work / MARKER).write_text(json.dumps({"suite": SUITE, "packages": sorted(packages)}))
        work.rename(final)
        return final


def _tweak_base(root: Path) -> None:
    """File-level changes only: nothing from the tree is executed on the host."""
    etc_system = root / "etc/systemd/system"
    etc_system.mkdir(parents=True, exist_ok=True)
    for unit in _MASKED_UNITS:
        link = etc_system / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # Persistent journal inside the tree, so the host can read it with journalctl -D after a
    # failure, even when the container is gone.
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    (root / "etc/hostname").write_text("owt-test\n")
    # apt caches are useless inside the test container and make every copy slower.
    for cached in (root / "var/cache/apt/archives").glob("*.deb"):
        cached.unlink()


def build_wheelhouse(
    project: Path, dest: Path, *, python: str | None = None, timeout: float = 600.0
) -> Path:
    """Our wheel, built fresh from the working tree, plus every dependency as a wheel.

    The container boots with ``--private-network``, so it installs from this folder with
    ``pip install --no-index --find-links``. Bookworm's python3 is 3.11, like ours, so wheels
    built here fit.
    """
    python = python or str(project / ".venv/bin/python")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            python,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(dest),
            str(project),
        ],
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    return dest


def _nspawn_base_args(rootfs: Path, *, private_network: bool, machine: str) -> list[str]:
    args = [
        "systemd-nspawn",
        f"--directory={rootfs}",
        f"--machine={machine}",
        "--register=no",
        "--keep-unit",
        "--quiet",
    ]
    if private_network:
        args.append("--private-network")
    return args


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the parenthesised comm, which may itself contain spaces.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


_machine_ids = itertools.count(1)


class Container:
    """One nspawn container over a private copy of a base rootfs.

    ``prepare()`` runs one command in the tree before boot (nspawn's non-boot mode);
    ``boot()`` starts systemd as PID 1; ``run()`` enters every namespace of that PID 1 with
    ``nsenter`` (as root, or as ``user`` through setpriv, which goes through no PAM session,
    like a system service). Always finish with ``poweroff()`` or ``destroy()``.
    """

    def __init__(
        self, rootfs: Path, *, private_network: bool = True, machine: str | None = None
    ) -> None:
        self.rootfs = _check_rootfs(rootfs)
        self.private_network = private_network
        # nspawn keeps per-machine state under /run/systemd/nspawn/ on the host: two containers
        # booted at once (system and installer tests) must not share a name.
        self.machine = machine or f"owt-{os.getpid()}-{next(_machine_ids)}"
        self.console_log = self.rootfs.parent / f"{self.rootfs.name}.console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None

    @classmethod
    def from_base(cls, base: Path, session: Path, **kwargs: object) -> Container:
        """Copy ``base`` (reflink where the filesystem allows) into ``session/rootfs``."""
        _check_rootfs(base)
        session.mkdir(parents=True, exist_ok=True)
        rootfs = session / "rootfs"
        if rootfs.exists():
            raise HarnessError(f"{rootfs} already exists")
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(base), str(rootfs)], check=True, timeout=600
        )
        return cls(rootfs, **kwargs)  # type: ignore[arg-type]

    # --- before boot -------------------------------------------------------------------------

    def prepare(
        self, cmd: Sequence[str], *, timeout: float = 300.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one command in the (not booted) tree, with /proc, /dev and no network."""
        if self.booted:
            raise HarnessError("prepare() is for before boot(); use run()")
        args = [
            *_nspawn_base_args(self.rootfs, private_network=True, machine=self.machine),
            "--pipe",
            f"--setenv=PATH={CONTAINER_PATH}",
            "--",
            *cmd,
        ]
        proc = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise HarnessError(
                f"prepare {list(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def write_file(self, path: str, data: str | bytes, *, mode: int = 0o644) -> None:
        """Create or replace a file in the container (through nsenter once booted)."""
        raw = data.encode() if isinstance(data, str) else data
        if self.booted:
            self.run(
                [
                    "sh",
                    "-c",
                    'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                    "sh",
                    path,
                    f"{mode:o}",
                ],
                input=raw,
            )
            return
        target = inside(self.rootfs, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_bytes(raw)
        target.chmod(mode)

    def copy_in(self, src: Path, dst: str, *, mode: int | None = None) -> None:
        """Copy a host file or directory tree to ``dst`` in the container."""
        if src.is_dir():
            for item in sorted(src.rglob("*")):
                if item.is_file():
                    rel = item.relative_to(src).as_posix()
                    self.copy_in(item, f"{dst.rstrip('/')}/{rel}")
            return
        self.write_file(
            dst, src.read_bytes(), mode=mode if mode is not None else src.stat().st_mode & 0o7777
        )

    # --- running -----------------------------------------------------------------------------

    @property
    def booted(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    @property
    def init_pid(self) -> int:
        """Host PID of the container's systemd (not of systemd-nspawn)."""
        if self._init_pid is None:
            raise HarnessError("container is not booted")
        return self._init_pid

    def boot(self, *, timeout: float = 120.0) -> None:
        """Boot systemd and wait until the boot has finished (running or degraded)."""
        if self._nspawn is not None:
            raise HarnessError("already booted")
        args = [
            *_nspawn_base_args(
                self.rootfs, private_network=self.private_network, machine=self.machine
            ),
            "--boot",
            "--console=pipe",
            "--link-journal=no",
        ]
        console = self.console_log.open("ab")
        try:
            # Own session and process group, so the fixture can always kill what it started.
            self._nspawn = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            console.close()
        deadline = time.monotonic() + timeout
        nspawn = self._nspawn

        def find_init() -> int | None:
            if nspawn.poll() is not None:
                raise HarnessError(
                    f"systemd-nspawn exited {nspawn.returncode}:\n{self.console_text()}"
                )
            found = None
            for kid in _children(nspawn.pid):
                argv = _cmdline(kid)
                if argv and argv[0] in _INIT_PATHS:
                    found = kid
            return found

        try:
            self._init_pid = wait_until(find_init, "container systemd", timeout, interval=0.1)
        except AssertionError:
            raise HarnessError("container systemd did not appear") from None
        # PID 1 may not have its bus socket yet: "Failed to connect to bus" leaves no state.
        state, err = "", ""

        def system_state() -> str:
            nonlocal state, err
            remaining = max(5.0, deadline - time.monotonic())
            r = self.run(
                ["systemctl", "is-system-running", "--wait"], timeout=remaining, check=False
            )
            state, err = r.stdout.strip(), r.stderr.strip()
            return state

        with contextlib.suppress(AssertionError):  # no state at all is reported just below
            wait_until(system_state, "a system state", deadline - time.monotonic(), interval=0.2)
        if state not in {"running", "degraded"}:
            raise HarnessError(f"boot ended in state {state!r} ({err}):\n{self.console_text()}")

    def run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = True,
        user: str | None = None,
        input: bytes | str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the booted container; stdout/stderr come back as text.

        The environment is fresh (PATH, LANG, plus ``env``): nothing of the host's leaks in.
        """
        base_env = {"PATH": CONTAINER_PATH, "LANG": "C.UTF-8", **(env or {})}
        inner: list[str] = ["env", "-i", *(f"{k}={v}" for k, v in base_env.items())]
        if user is not None:
            inner = [
                "setpriv",
                f"--reuid={user}",
                f"--regid={user}",
                "--init-groups",
                "--reset-env",
                *inner,
            ]
        args = ["nsenter", f"--target={self.init_pid}", "--all", "--", *inner, *cmd]
        data = input.encode() if isinstance(input, str) else input
        proc = subprocess.run(args, input=data, capture_output=True, timeout=timeout, check=False)
        result = subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise HarnessError(
                f"{list(cmd)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def http(
        self, method: str, url: str, *, body: bytes | None = None, timeout: float = 10.0
    ) -> tuple[int, str]:
        """One HTTP request from inside the container; (status, body), status 0 if none."""
        script = (
            "import sys, urllib.request, urllib.error\n"
            "data = sys.stdin.buffer.read() or None\n"
            "req = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1])\n"
            "if data: req.add_header('Content-Type', 'application/json')\n"
            "try:\n"
            "    r = urllib.request.urlopen(req, timeout=float(sys.argv[3]))\n"
            "    code, text = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    code, text = e.code, e.read()\n"
            "except Exception as e:\n"
            "    code, text = 0, repr(e).encode()\n"
            "sys.stdout.write(str(code) + '\\n' + text.decode('utf-8', 'replace'))\n"
        )
        proc = self.run(
            ["python3", "-c", script, method, url, str(timeout)],
            input=body or b"",
            timeout=timeout + 30,
            check=False,
        )
        head, _, rest = proc.stdout.partition("\n")
        if not head.isdigit():
            raise HarnessError(f"http helper failed: {proc.stdout}{proc.stderr}")
        return int(head), rest

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "--value", f"--property={prop}", unit]).stdout.strip()

    def journal(
        self,
        *matches: str,
        unit: str | None = None,
        since_cursor: str | None = None,
        output: str = "short-precise",
    ) -> str:
        """The container's journal, read from the tree with the host's ``journalctl -D``.

        ``matches`` are journalctl field matches (``"UNIT=ollama.service"``); do not combine
        them or ``unit`` with ``since_cursor`` (see ``journal_entries``). Works after poweroff
        too, so failure reports still have it.
        """
        args = [
            "journalctl",
            f"--directory={self.rootfs / 'var/log/journal'}",
            "--no-pager",
            f"--output={output}",
        ]
        if unit:
            args.append(f"--unit={unit}")
        if since_cursor:
            args.append(f"--after-cursor={since_cursor}")
        args.extend(matches)
        if self.booted:
            # What was logged so far must be in the files before the host reads them.
            self.run(["journalctl", "--flush"], check=False, timeout=30)
            self.run(["journalctl", "--sync"], check=False, timeout=30)
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
        return proc.stdout + proc.stderr

    def journal_entries(
        self, *matches: str, unit: str | None = None, since_cursor: str | None = None
    ) -> list[dict[str, Any]]:
        """Journal entries as journald's JSON objects (fields such as MESSAGE, UNIT).

        ``matches`` (``"FIELD=value"``, all must hold) and ``unit`` (the unit's own lines and
        systemd's lines about it) are applied here, not by journalctl: journalctl 252 returns
        nothing for ``--after-cursor`` combined with matches the cursor's entry does not meet.
        """
        text = self.journal(since_cursor=since_cursor, output="json")
        wanted = [m.split("=", 1) for m in matches]
        entries: list[dict[str, Any]] = []
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if unit and unit not in (entry.get("_SYSTEMD_UNIT"), entry.get("UNIT")):
                continue
            if all(entry.get(field) == value for field, value in wanted):
                entries.append(entry)
        return entries

    def journal_messages(self, *, unit: str | None = None, since_cursor: str | None = None) -> str:
        """MESSAGE of each entry, one a line (see ``journal_entries`` for the filters)."""
        entries = self.journal_entries(unit=unit, since_cursor=since_cursor)
        return "\n".join(str(e.get("MESSAGE", "")) for e in entries)

    def journal_cursor(self) -> str:
        """Cursor of the newest entry now: pass it as ``since_cursor`` to see only what follows."""
        entries = self.journal_entries()
        if not entries:
            raise HarnessError("the container's journal is empty")
        cursor: str = entries[-1]["__CURSOR"]
        return cursor

    def console_text(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except OSError:
            return ""

    # --- stopping ----------------------------------------------------------------------------

    def poweroff(self, *, timeout: float = 90.0) -> None:
        """Shut the container down cleanly; if that hangs, kill its PID 1 and nspawn."""
        proc = self._nspawn
        if proc is None:
            return
        init_pid = self._init_pid

        def kill_init() -> None:
            # Killing PID 1 of the container ends its whole PID namespace; nspawn then exits.
            if init_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init_pid, signal.SIGKILL)

        try:
            # SIGTERM makes nspawn ask the container's systemd for a clean poweroff.
            stop_process_group(
                proc, timeout, leader_only=True, reap_timeout=30.0, before_kill=kill_init
            )
        except BaseException:
            # Interrupted while waiting (a test's timeout): the container must still go.
            stop_process_group(proc, first=None, reap_timeout=30.0, before_kill=kill_init)
            raise
        finally:
            self._nspawn = None
            self._init_pid = None

    def destroy(self) -> None:
        """Power off if needed and delete the private tree."""
        self.poweroff()
        root = _check_rootfs(self.rootfs)
        shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.poweroff()
