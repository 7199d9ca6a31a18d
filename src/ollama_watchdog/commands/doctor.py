"""``ollama-watchdog doctor``: the checklist an on-call person runs at 3 a.m.

Each item prints ``OK``, ``WARN`` or ``FAIL`` with what was found and, when not OK, the fix, or
``SKIP`` with why it was not checked (never ``OK`` for what was not looked at); ``--json``: the
same findings as one JSON document, for a script or a fleet inventory.
Exit code: 0 all OK, 1 some WARN, 2 some FAIL (SKIP never counts).

Besides Ollama it checks the watchdog itself (its own ``/metrics`` at ``[exporter] listen``:
running, its state, what it sees) and where each loaded model sits (GPU or CPU).

Gathering (systemctl, /proc, sockets, NVML, the journal, the store) happens in thin functions
with timeouts; judging is done by pure functions that take plain data, so every rule is tested
without a systemd or a GPU at hand. Nothing here changes the system.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psutil

from ollama_watchdog.boundedread import FileRefused, open_regular, read_bounded
from ollama_watchdog.config import parse_listen
from ollama_watchdog.exporter.scrape import Samples, sample, scrape, total
from ollama_watchdog.ollama import env as ollama_env
from ollama_watchdog.ollama.api import LoadedModel, OllamaClient, ProbeError
from ollama_watchdog.ollama.env import Verdict
from ollama_watchdog.ollama.logparse import Message, parse_line
from ollama_watchdog.ollama.processes import classify_argv
from ollama_watchdog.oneline import one_line
from ollama_watchdog.store import ModelStore, StoreScan
from ollama_watchdog.store.progress import human_bytes

if TYPE_CHECKING:
    from ollama_watchdog.config import Config

_COMMAND_TIMEOUT = 15.0
_LOG_TAIL_BYTES = 4 * 1024 * 1024
_PARAMS_MAX_BYTES = 1024 * 1024  # a params layer is a small JSON object of options
PARAMS_MEDIA = "application/vnd.ollama.image.params"
GIB = 1024**3


class Level(enum.IntEnum):
    """Severity of one finding; the exit code is the worst one (SKIP counts as OK)."""

    SKIP = -1
    OK = 0
    WARN = 1
    FAIL = 2


@dataclass(frozen=True, slots=True)
class Finding:
    """One checklist item: what was found and how to fix it."""

    item: str
    level: Level
    text: str
    fix: str = ""


# --------------------------------------------------------------------------------------------
# gathering: thin, bounded, never raising


def run_command(argv: Sequence[str], timeout: float = _COMMAND_TIMEOUT) -> tuple[int, str] | None:
    """(exit code, stdout) of a command, or None when the program is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, errors="replace"
        )
    except subprocess.TimeoutExpired:
        return 124, ""
    except OSError:
        return None
    return proc.returncode, proc.stdout + proc.stderr if proc.returncode else proc.stdout


def systemd_properties(unit: str) -> tuple[dict[str, str] | None, str]:
    """``systemctl show`` properties of the unit, or None and why not."""
    props = "LoadState,ActiveState,SubState,NRestarts,MainPID,Environment,EnvironmentFiles"
    result = run_command(["systemctl", "show", unit, f"--property={props}", "--no-pager"])
    if result is None:
        return None, "systemctl is not installed"
    code, out = result
    if code != 0:
        return None, " ".join(out.split())[:160] or f"systemctl exited {code}"
    parsed: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            parsed[key] = value
    return parsed, ""


@dataclass(frozen=True, slots=True)
class Listener:
    """A listening TCP socket on Ollama's port, and who owns it."""

    address: str
    pid: int | None
    argv: tuple[str, ...]


def listeners(port: int) -> list[Listener]:
    found: list[Listener] = []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return found
    for conn in conns:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        argv: tuple[str, ...] = ()
        if conn.pid is not None:
            try:
                argv = tuple(psutil.Process(conn.pid).cmdline())
            except (psutil.Error, OSError):
                argv = ()
        found.append(Listener(conn.laddr.ip, conn.pid, argv))
    return found


def process_environ(pid: int) -> dict[str, str] | None:
    """The real environment of a process (what Ollama sees), if we may read it."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            env[key] = value
    return env


def unit_environ(props: Mapping[str, str]) -> dict[str, str]:
    """Environment= and EnvironmentFiles= of the unit (when the process is not readable)."""
    env: dict[str, str] = {}
    for files in props.get("EnvironmentFiles", "").split("\n"):
        path = files.split(" (", 1)[0].strip().lstrip("-")
        if path:
            try:
                text = Path(path).read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    key, _, value = line.strip().partition("=")
                    env[key.strip()] = value.strip().strip("\"'")
    try:
        words = shlex.split(props.get("Environment", ""))
    except ValueError:
        words = props.get("Environment", "").split()
    for word in words:
        key, sep, value = word.partition("=")
        if sep:
            env[key] = value
    return env


def nvml_gpus() -> tuple[list[str] | None, str]:
    """GPU names NVML reports, or None and why NVML is not usable."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None, str(exc) or type(exc).__name__
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names, ""
    except Exception as exc:
        return None, str(exc) or type(exc).__name__
    finally:
        # shutting down a half-initialised NVML has nothing left to report
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def read_log_tail(config: Config, lines: int) -> tuple[list[str] | None, str]:
    """The last lines of Ollama's log from the configured source, or None and why not."""
    source = config.logs.source
    if source == "none":
        return None, "[logs] source = none"
    if source == "file":
        path = Path(config.logs.path)
        try:
            fd = open_regular(path)  # a FIFO at the path must not hang the checklist
        except FileRefused as exc:
            return None, f"cannot read {path}: it {exc} ([logs] path must name Ollama's log file)"
        except OSError as exc:
            return None, f"cannot read {path}: {exc.strerror or exc}"
        with os.fdopen(fd, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _LOG_TAIL_BYTES))
            text = fh.read(_LOG_TAIL_BYTES).decode(errors="replace")
        return text.splitlines()[-lines:], ""
    if not config.ollama.unit:
        return None, "no unit to read the journal of: set [ollama] unit, or [logs] source = file"
    result = run_command(
        ["journalctl", "-u", config.ollama.unit, "-o", "cat", "-n", str(lines), "--no-pager"]
    )
    if result is None:
        return None, "journalctl is not installed"
    code, out = result
    if code != 0:
        return None, " ".join(out.split())[:160] or f"journalctl exited {code}"
    if not out.strip():
        return None, f"journalctl -u {config.ollama.unit} returned no lines"
    return out.splitlines(), ""


def firewall_rules() -> str | None:
    """The packet filter rules as text (nftables, else iptables), or None if not readable."""
    for argv in (["nft", "list", "ruleset"], ["iptables-save"]):
        result = run_command(argv)
        if result is not None and result[0] == 0:
            return result[1]
    return None


# --------------------------------------------------------------------------------------------
# judging: pure functions of gathered data


def judge_service(unit: str, props: Mapping[str, str] | None, why: str) -> Finding:
    if props is None:
        return Finding(
            "service", Level.WARN, f"cannot ask systemd about {unit}: {why}",
            "run doctor on the Ollama host, as root, where systemd manages Ollama",
        )  # fmt: skip
    if props.get("LoadState") == "not-found":
        return Finding(
            "service", Level.FAIL, f"{unit} is not installed",
            f"install the unit (systemd/ollama.service) or set [ollama] unit; now: {unit}",
        )  # fmt: skip
    state = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})"
    restarts = int(props.get("NRestarts", "0") or 0)
    if props.get("ActiveState") != "active":
        return Finding(
            "service", Level.FAIL, f"{unit} is {state}",
            f"systemctl start {unit}; see why it stopped: journalctl -u {unit} -n 100",
        )  # fmt: skip
    if restarts:
        return Finding(
            "service", Level.WARN, f"{unit} is {state}, restarted {restarts} times by systemd",
            f"it keeps dying: see the log errors below and journalctl -u {unit} -n 200",
        )  # fmt: skip
    return Finding("service", Level.OK, f"{unit} is {state}, 0 restarts")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address == "localhost"


def _is_wildcard(address: str) -> bool:
    return address in ("0.0.0.0", "::", "")


def judge_port(port: int, found: Sequence[Listener]) -> Finding:
    if not found:
        return Finding(
            "port", Level.FAIL, f"nothing listens on port {port}",
            "start Ollama, and check that OLLAMA_HOST and [ollama] url name the same port",
        )  # fmt: skip
    owners = {(lst.pid, lst.argv) for lst in found}
    where = ", ".join(sorted({lst.address for lst in found}))
    for pid, argv in owners:
        if pid is None:
            return Finding(
                "port", Level.WARN, f"port {port} is listening on {where}, owner unknown",
                "run doctor as root to see which process holds the port",
            )  # fmt: skip
        if classify_argv(argv) != "server":
            name = os.path.basename(argv[0]) if argv else "?"
            return Finding(
                "port", Level.FAIL, f"port {port} is held by {name} (pid {pid}), not ollama serve",
                "stop that process, or move Ollama to a free port (OLLAMA_HOST) and [ollama] url",
            )  # fmt: skip
    pids = ", ".join(str(pid) for pid, _ in sorted(owners, key=lambda o: o[0] or 0))
    return Finding("port", Level.OK, f"ollama serve (pid {pids}) listens on {where}:{port}")


_VERSION_FIX = {
    "refused": "start Ollama (systemctl start ollama) and check OLLAMA_HOST against [ollama] url",
    "timeout": "Ollama accepts connections but does not answer: hung, or still discovering GPUs "
    "at start-up; the watchdog restarts it after failure_threshold failed probes",
    "http_error": "an HTTP error from /api/version: a 403 means Ollama rejected the Host header "
    "(OLLAMA_HOST/OLLAMA_ORIGINS); otherwise check what proxies this URL",
    "bad_response": "something that is not Ollama answers at this URL (a proxy or another server?)",
}


def judge_version(
    url: str, version: str | None, error: ProbeError | None, seconds: float
) -> Finding:
    if version is not None:
        return Finding(
            "api", Level.OK, f"Ollama {version} answers at {url} ({seconds * 1000:.0f} ms)"
        )
    assert error is not None
    return Finding(
        "api", Level.FAIL, f"GET {url}/api/version failed: {error.reason} ({error.detail})",
        _VERSION_FIX[error.reason],
    )  # fmt: skip


def inference_compute(lines: Iterable[str]) -> list[dict[str, str]]:
    """The ``inference compute`` lines of the last server start: one dict of attributes each."""
    found: list[dict[str, str]] = []
    for line in lines:
        if 'msg="server config"' in line or "server config env=" in line:
            found = []  # a new start: earlier discovery results no longer apply
        elif 'msg="inference compute"' in line:
            attrs: dict[str, str] = {}
            for word in shlex.split(line[line.index('msg="inference compute"') + 23 :]):
                key, sep, value = word.partition("=")
                if sep:
                    attrs[key] = value
            found.append(attrs)
    return found


def judge_gpu(
    enabled: str, nvml: list[str] | None, nvml_error: str, compute: list[dict[str, str]] | None
) -> list[Finding]:
    if enabled == "false":
        return [Finding("gpu", Level.SKIP, "[gpu] enabled = false")]
    out: list[Finding] = []
    if nvml is None:
        level = Level.FAIL if enabled == "true" else Level.SKIP
        out.append(Finding(
            "gpu", level, f"NVML not usable: {nvml_error}",
            "install the NVIDIA driver (nvidia-smi must work) or set [gpu] enabled = false"
            if level is Level.FAIL else "",
        ))  # fmt: skip
    else:
        out.append(Finding("gpu", Level.OK, f"NVML sees {len(nvml)} GPUs: {', '.join(nvml)}"))
    if compute is None:
        return out
    if not compute:
        out.append(Finding(
            "gpu-ollama", Level.WARN, "no `inference compute` line in the log since the last start",
            "the log may have rotated; restart Ollama, or read journalctl -u ollama | grep compute",
        ))  # fmt: skip
        return out
    gpus = [c for c in compute if c.get("library", "").lower() not in ("cpu", "")]
    if not gpus:
        total = compute[0].get("total", "?")
        if nvml:
            out.append(Finding(
                "gpu-ollama", Level.FAIL,
                f"Ollama runs on the CPU ({total} RAM) although NVML sees {len(nvml)} GPUs",
                "check CUDA_VISIBLE_DEVICES and OLLAMA_LLM_LIBRARY in the unit, that "
                "lib/ollama/cuda_v12 or cuda_v13 is installed next to the binary, and that the "
                "ollama user is in the video/render groups",
            ))  # fmt: skip
        else:
            out.append(Finding("gpu-ollama", Level.OK, f"Ollama runs on the CPU ({total} RAM)"))
        return out
    names = ", ".join(
        f"{c.get('library')} {c.get('description') or c.get('name', '?')} ({c.get('total', '?')})"
        for c in gpus
    )
    level = Level.WARN if nvml is not None and len(gpus) < len(nvml) else Level.OK
    fix = "Ollama uses fewer GPUs than NVML sees: check CUDA_VISIBLE_DEVICES" if level else ""
    return [*out, Finding("gpu-ollama", level, f"Ollama uses {names}", fix)]


def judge_models_dir(
    path: Path, exists: bool, owner: str | None, free: int | None, total: int | None
) -> list[Finding]:
    if not exists:
        return [Finding(
            "models-dir", Level.FAIL, f"{path} does not exist",
            f"create it (mkdir -p {path}; chown -R ollama:ollama {path}) or point OLLAMA_MODELS "
            "and [ollama] models_dir at the real store",
        )]  # fmt: skip
    out: list[Finding] = []
    if owner == "ollama":
        out.append(Finding("models-dir", Level.OK, f"{path} exists, owned by ollama"))
    else:
        out.append(Finding(
            "models-dir", Level.WARN, f"{path} is owned by {owner or '?'}, not ollama",
            f"the service user must be able to write it: chown -R ollama:ollama {path}",
        ))  # fmt: skip
    if free is not None and total:
        text = f"{human_bytes(free)} free of {human_bytes(total)} on the models filesystem"
        if free < 2 * GIB:
            out.append(Finding(
                "disk", Level.FAIL, text,
                "pulls and model creation fail: remove unused models (ollama rm) or grow the disk",
            ))  # fmt: skip
        elif free < 10 * GIB or free < total * 0.05:
            out.append(Finding(
                "disk", Level.WARN, text,
                "one more large model may not fit: remove unused models (ollama rm)",
            ))  # fmt: skip
        else:
            out.append(Finding("disk", Level.OK, text))
    return out


def judge_blobs(scan: StoreScan) -> list[Finding]:
    refs = scan.referenced()
    missing = sorted(d for d in refs if d not in scan.present)
    wrong_size = sorted(
        d for d, layer in refs.items() if d in scan.present and scan.present[d] != layer.size
    )
    unreferenced = sorted(set(scan.present) - set(refs))
    out: list[Finding] = []
    for bad in scan.bad_manifests:
        out.append(Finding(
            "blobs", Level.FAIL, f"manifest {bad.relpath} is unreadable ({bad.error})",
            "Ollama skips pruning while it exists: delete it and pull the model again",
        ))  # fmt: skip
    if missing or wrong_size:
        models = sorted({m for d in [*missing, *wrong_size] for m in scan.models_using(d)})
        out.append(Finding(
            "blobs", Level.FAIL,
            f"{len(missing)} referenced blobs absent, {len(wrong_size)} of the wrong size "
            f"(models: {', '.join(models)})",
            "run `ollama-watchdog models verify` for the list, then `ollama pull` those models "
            "or restore them from a backup",
        ))  # fmt: skip
    if unreferenced:
        size = sum(scan.present[d] for d in unreferenced)
        out.append(Finding(
            "blobs", Level.WARN,
            f"{len(unreferenced)} blobs ({human_bytes(size)}) are referenced by no manifest",
            "Ollama deletes them at its next start (unless OLLAMA_NOPRUNE); if a model is "
            "missing its manifest, restore the manifest before restarting",
        ))  # fmt: skip
    if not out:
        out.append(Finding(
            "blobs", Level.OK,
            f"{len(scan.manifests)} models, {len(refs)} referenced blobs all present "
            "(contents not hashed: `ollama-watchdog models verify` does that)",
        ))  # fmt: skip
    return out


def judge_env(env: Mapping[str, str], source: str) -> list[Finding]:
    names = sorted(k for k in env if k.startswith("OLLAMA_"))
    out: list[Finding] = []
    for name in names:
        check = ollama_env.classify_env_variable(name)
        if check.verdict is Verdict.KNOWN:
            continue
        what = "was removed" if check.verdict is Verdict.IGNORED else "is not an Ollama variable"
        out.append(Finding(
            "env", Level.WARN, f"{name} {what}: Ollama ignores it ({source})",
            f"{check.hint}; remove it from the unit (systemctl edit ollama)",
        ))  # fmt: skip
    if not out:
        out.append(Finding(
            "env", Level.OK, f"{len(names)} OLLAMA_* variables, all read by Ollama ({source})"
        ))  # fmt: skip
    return out


def judge_parameters(
    model_params: Mapping[str, Iterable[str]], modelfiles: Mapping[str, Iterable[str]]
) -> list[Finding]:
    """Parameters stored in models (params layers) and written in Modelfiles."""
    out: list[Finding] = []
    for origin, names, stored in [
        *((f"model {m}", p, True) for m, p in sorted(model_params.items())),
        *((f"Modelfile {f}", p, False) for f, p in sorted(modelfiles.items())),
    ]:
        for name in names:
            check = ollama_env.classify_parameter(name)
            if check.verdict is Verdict.KNOWN:
                continue
            if check.verdict is Verdict.IGNORED:
                level, effect = Level.WARN, "is ignored"
            elif stored:
                # already inside a model: requests carry it and Ollama logs "invalid option"
                level, effect = Level.WARN, "is ignored (invalid option)"
            else:
                level, effect = Level.FAIL, "makes `ollama create` fail"
            out.append(Finding(
                "parameters", level, f"{origin}: PARAMETER {name} {effect}",
                f"{check.hint}; remove the line and re-create the model",
            ))  # fmt: skip
    if not out and not model_params and not modelfiles:
        out.append(Finding(
            "parameters", Level.SKIP,
            "no model stores parameters and no --modelfile was given: nothing to check",
        ))  # fmt: skip
    elif not out:
        out.append(Finding("parameters", Level.OK, "no ignored or rejected Modelfile parameters"))
    return out


def judge_exposure(
    port: int,
    found: Sequence[Listener],
    host_env: str | None,
    rules: str | None,
    exporter_listen: str,
    web_config: str,
) -> list[Finding]:
    out: list[Finding] = []
    exposed = [lst.address for lst in found if not _is_loopback(lst.address)]
    if not found and host_env:
        host = urlsplit(host_env if "://" in host_env else "http://" + host_env).hostname or ""
        if not _is_loopback(host):
            exposed = [host or "0.0.0.0"]
    if exposed:
        where = ", ".join(sorted(set(exposed)))
        rule_seen = rules is not None and any(
            f"dport {port}" in line or f"--dport {port}" in line or f"dports {port}" in line
            for line in rules.splitlines()
        )
        if rule_seen:
            out.append(Finding(
                "exposure", Level.OK,
                f"Ollama listens on {where}; a firewall rule mentions port {port} (review it)",
            ))  # fmt: skip
        else:
            known = "no firewall rule for it" if rules is not None else "firewall not readable"
            out.append(Finding(
                "exposure", Level.WARN,
                f"Ollama listens on {where}:{port} without authentication ({known})",
                "anyone who reaches the port can run and delete models: set "
                "OLLAMA_HOST=127.0.0.1:11434 and put nginx with basic auth in front "
                "(nginx/ollama.conf), or firewall the port",
            ))  # fmt: skip
    elif found:
        out.append(Finding("exposure", Level.OK, "Ollama listens on loopback only"))
    else:
        out.append(Finding("exposure", Level.SKIP, "Ollama is not listening; nothing exposed"))
    exp_host = exporter_listen.rsplit(":", 1)[0].strip("[]")
    if not web_config and not _is_loopback(exp_host):
        out.append(Finding(
            "exposure", Level.WARN,
            f"the exporter listens on {exporter_listen} with neither TLS nor basic auth",
            "set [exporter] web_config (tls_server_config, basic_auth_users) or listen on "
            "127.0.0.1",
        ))  # fmt: skip
    return out


def judge_log_errors(lines: Sequence[str] | None, why: str, limit: int = 3) -> Finding:
    if lines is None:
        return Finding("log", Level.SKIP, f"log not read: {why}")
    if not lines:
        return Finding("log", Level.SKIP, "the log is empty: no lines to check")
    errors: list[str] = []
    for line in lines:
        event = parse_line(line)
        if isinstance(event, Message) and (event.level == "error" or event.error_kind):
            errors.append(line)
    if not errors:
        return Finding("log", Level.OK, f"no errors in the last {len(lines)} log lines")
    shown = " | ".join(_short(line) for line in errors[-limit:])
    return Finding(
        "log", Level.WARN,
        f"{len(errors)} errors in the last {len(lines)} log lines; last: {shown}",
        "read the context: journalctl -u ollama -n 300 (out of memory: smaller model, lower "
        "num_ctx or OLLAMA_NUM_PARALLEL; runner crashes: check the GPU driver)",
    )  # fmt: skip


def _short(line: str, limit: int = 200) -> str:
    # keep the slog part: the journald prefix says nothing the operator does not know
    at = line.find("level=")
    return one_line(line[at:] if at >= 0 else line, limit)


#: the watchdog's states (``ollama_watchdog_state``) and what each means for the operator:
#: (level, what it means, fix)
_WATCHDOG_STATES: dict[str, tuple[Level, str, str]] = {
    "healthy": (Level.OK, "Ollama passes its probes", ""),
    "degraded": (
        Level.WARN, "probes are failing, not yet enough for an action",
        "see the api and log items; the watchdog acts after failure_threshold failures",
    ),
    "busy": (
        Level.WARN, "deep probes time out while other requests complete: Ollama is saturated "
        "(no action is taken for this)",
        "more capacity (OLLAMA_NUM_PARALLEL, another instance) or fewer concurrent requests",
    ),
    "remediating": (
        Level.WARN, "an unload or runner kill is in flight",
        "wait a minute and run doctor again; journalctl -u ollama-watchdog says why",
    ),
    "restarting": (
        Level.WARN, "a restart of Ollama is in flight",
        "wait a minute and run doctor again; journalctl -u ollama-watchdog says why",
    ),
    "backoff": (
        Level.WARN, "Ollama keeps failing; the next restart waits for its backoff",
        "find the cause in the log item; journalctl -u ollama-watchdog -n 50",
    ),
    "gave_up": (
        Level.FAIL, "the restart budget is spent: the watchdog no longer restarts Ollama",
        "fix the cause (log item, journalctl -u ollama), then re-arm: systemctl restart "
        "ollama-watchdog (health coming back re-arms it too)",
    ),
    "disabled": (
        Level.WARN, "[watchdog] enabled = false: nothing restarts a hung Ollama",
        "set [watchdog] enabled = true and systemctl reload ollama-watchdog, if that was not "
        "on purpose",
    ),
    "maintenance": (
        Level.WARN, "maintenance: the watchdog keeps its hands off Ollama",
        "when the work is done: ollama-watchdog maintenance off",
    ),
    "draining": (
        Level.WARN, "a planned action waits for requests in flight to finish",
        "wait; it acts at the latest after [healing] planned_max_wait",
    ),
    "deferred": (
        Level.WARN, "a planned action waits: the fleet's action budget is at its limit",
        "see the other hosts' watchdogs; it acts when the budget frees",
    ),
}

def exporter_url(listen: str) -> str:
    """The URL of the watchdog's own /metrics from ``[exporter] listen`` (any-address: loopback)."""
    host, port = parse_listen(listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


#: a passing deep probe that took at least this share of ``probe.deep_timeout`` is near failing
DEEP_TIMEOUT_MARGIN = 0.8


def judge_watchdog(
    url: str, samples: Samples | None, why: str, now: float, deep_timeout: float | None = None
) -> list[Finding]:
    """The watchdog's own view: running, its state, whether it sees Ollama up, and (with
    ``deep_timeout``, the watchdog's ``probe.deep_timeout`` when a deep model is set) whether its
    last passing deep probe came close to timing out."""
    if samples is None:
        return [Finding(
            "watchdog", Level.FAIL, f"the watchdog does not answer at {url}: {why}",
            "nothing restarts a hung Ollama and no alert has data: systemctl start "
            "ollama-watchdog; why it stopped: journalctl -u ollama-watchdog -n 50 (or run "
            "doctor with the watchdog's own --config)",
        )]  # fmt: skip
    states = [
        dict(labels)["state"]
        for (name, labels), value in samples.items()
        if name == "ollama_watchdog_state" and value == 1 and dict(labels).get("state")
    ]
    if len(states) != 1:
        return [Finding(
            "watchdog", Level.WARN,
            f"{url} answers but has no single ollama_watchdog_state (found {len(states)})",
            "is this port the watchdog's? check [exporter] listen against the running daemon",
        )]  # fmt: skip
    state = states[0]
    level, meaning, fix = _WATCHDOG_STATES.get(
        state, (Level.WARN, "a state this doctor does not know", "upgrade ollama-watchdog")
    )
    restarts = total(samples, "ollama_watchdog_restarts_total")
    facts = f"{int(restarts)} restarts since it started"
    until = sample(samples, "ollama_watchdog_maintenance_until_timestamp_seconds")
    if state == "maintenance" and until:
        facts += f"; the mark expires in {max(0, round((until - now) / 60))} min"
    out = [Finding("watchdog", level, f"state {state}: {meaning} ({facts})", fix)]
    up = sample(samples, "ollama_up")
    if up is None:
        out.append(Finding(
            "watchdog", Level.WARN, "the watchdog exports no ollama_up: its api collector fails",
            "journalctl -u ollama-watchdog -n 50 names the collector error",
        ))  # fmt: skip
    elif up == 0:
        out.append(Finding(
            "watchdog", Level.FAIL, "the watchdog sees Ollama down (ollama_up 0)",
            "see the api item; if doctor reaches Ollama but the watchdog does not, their "
            "[ollama] url differ: run doctor with the watchdog's --config",
        ))  # fmt: skip
    if deep_timeout is not None:
        out += _judge_deep_margin(samples, deep_timeout)
    if sample(samples, "ollama_watchdog_dry_run") == 1:
        out.append(Finding(
            "watchdog", Level.WARN, "--dry-run is on: decisions are logged, nothing is carried out",
            "remove --dry-run from the unit's ExecStart when the trial is over",
        ))  # fmt: skip
    return out


def _judge_deep_margin(samples: Samples, deep_timeout: float) -> list[Finding]:
    """A deep probe that passes only just inside its timeout fails on the next slow answer (a
    longer queue, a model load): then it counts towards a restart, unless the log shows other
    requests completing (busy). Said before that happens, while it still passes."""
    if sample(samples, "ollama_probe_success", probe="generate") != 1:
        return []
    took = sample(samples, "ollama_probe_duration_seconds", probe="generate")
    if took is None or took < DEEP_TIMEOUT_MARGIN * deep_timeout:
        return []
    return [Finding(
        "watchdog", Level.WARN,
        f"the last deep probe passed in {took:.1f} s, {round(100 * took / deep_timeout)}% of "
        f"probe.deep_timeout ({deep_timeout:g} s): a little slower and it fails, and failed "
        "deep probes lead to an unload or a restart when no log source shows Ollama busy",
        f"raise [probe] deep_timeout to at least twice the slowest answer (here {2 * took:.0f}s "
        "or more), or choose a smaller deep_model",
    )]  # fmt: skip


def judge_placement(
    loaded: Sequence[LoadedModel] | None, why: str, gpus: int | None, gpu_note: str
) -> list[Finding]:
    """Where each loaded model sits, from /api/ps (``size_vram`` of ``size``).

    ``gpus``: how many GPUs this host has (NVML or Ollama's discovery), None when unknown.
    """
    if loaded is None:
        return [Finding("placement", Level.SKIP, f"/api/ps not read: {why}")]
    if not loaded:
        return [Finding("placement", Level.SKIP, "no model is loaded: nothing to place")]
    out: list[Finding] = []
    for m in loaded:
        size = f"{human_bytes(m.size)}"
        if m.size > 0 and m.size_vram >= m.size:
            out.append(Finding("placement", Level.OK, f"{m.name}: all on GPU ({size})"))
        elif m.size_vram > 0:
            pct = round(100 * m.size_vram / m.size) if m.size else 0
            out.append(Finding(
                "placement", Level.WARN,
                f"{m.name}: {pct}% on GPU, the rest on the CPU ({human_bytes(m.size_vram)} of "
                f"{size}): generation runs at CPU speed",
                "it does not fit in free VRAM: a smaller model or quantisation, a lower "
                "num_ctx or OLLAMA_NUM_PARALLEL, or unload the other models",
            ))  # fmt: skip
        elif gpus:
            out.append(Finding(
                "placement", Level.FAIL,
                f"{m.name}: on the CPU ({size}, size_vram 0) although this host has {gpus} "
                "GPUs: silent CPU fallback",
                "Ollama did not find the GPU at its start: systemctl restart ollama; if it "
                "stays, see the gpu-ollama item (CUDA_VISIBLE_DEVICES, driver, video/render "
                "groups); a model pinned to CPU on purpose has num_gpu 0",
            ))  # fmt: skip
        else:
            out.append(Finding(
                "placement", Level.OK, f"{m.name}: on the CPU ({size}); {gpu_note}"
            ))  # fmt: skip
    return out


def check_watchdog(config: Config) -> list[Finding]:
    """Gather and judge the watchdog's own /metrics."""
    url = exporter_url(config.exporter.listen)
    if config.exporter.web_config:
        return [Finding(
            "watchdog", Level.SKIP,
            f"{url} is behind [exporter] web_config (TLS or basic auth): doctor holds no "
            "credentials; curl it with yours",
        )]  # fmt: skip
    samples, why = scrape(url, min(config.ollama.timeout, 5.0))
    deep = config.probe.deep_timeout if config.probe.deep_model else None
    return judge_watchdog(url, samples, why, time.time(), deep)


def check_placement(
    config: Config, nvml: Sequence[str] | None, compute: Sequence[Mapping[str, str]] | None
) -> list[Finding]:
    """Gather /api/ps and judge where each loaded model sits."""
    client = OllamaClient(config.ollama.url, config.ollama.timeout)
    try:
        loaded: list[LoadedModel] | None = client.ps()
        why = ""
    except ProbeError as exc:
        loaded, why = None, f"{exc.reason} ({exc.detail})"
    finally:
        client.close()
    discovered = [c for c in compute or () if c.get("library", "").lower() not in ("cpu", "")]
    gpus: int | None = len(nvml) if nvml else len(discovered) or None
    if config.gpu.enabled == "false" and not discovered:
        note = "whether this host has a GPU was not checked ([gpu] enabled = false)"
    elif nvml is None and not discovered:
        note = "no GPU seen (NVML not usable, no GPU in Ollama's discovery)"
    else:
        note = "this host has no GPU"
    return judge_placement(loaded, why, gpus, note)


# --------------------------------------------------------------------------------------------
# the checklist


def stored_parameters(store: ModelStore, scan: StoreScan) -> dict[str, list[str]]:
    """Parameter names in each model's params layer (JSON object of options)."""
    out: dict[str, list[str]] = {}
    for manifest in scan.manifests:
        for layer in manifest.layers:
            if layer.media_type != PARAMS_MEDIA or layer.size > _PARAMS_MAX_BYTES:
                continue
            try:
                doc = json.loads(read_bounded(store.blob_path(layer.digest), _PARAMS_MAX_BYTES))
            except (OSError, ValueError):
                continue  # missing or corrupt blobs are the blobs item's business
            if isinstance(doc, dict):
                out[str(manifest.name)] = sorted(doc)
    return out


def run_doctor(config: Config, modelfiles: Sequence[Path], log_lines: int) -> list[Finding]:
    findings: list[Finding] = []
    props: dict[str, str] | None = None  # no unit: nothing asked of systemd
    if config.ollama.unit:
        props, why = systemd_properties(config.ollama.unit)
        findings.append(judge_service(config.ollama.unit, props, why))
    else:
        findings.append(
            Finding("service", Level.SKIP, "no systemd unit configured ([ollama] unit is empty)")
        )

    url = urlsplit(config.ollama.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    found = listeners(port)
    findings.append(judge_port(port, found))

    client = OllamaClient(config.ollama.url, config.ollama.timeout)
    start = time.monotonic()
    try:
        version, error = client.version(), None
    except ProbeError as exc:
        version, error = None, exc
    finally:
        client.close()
    findings.append(judge_version(config.ollama.url, version, error, time.monotonic() - start))

    lines, log_why = read_log_tail(config, log_lines)
    if config.gpu.enabled != "false":
        names, nvml_error = nvml_gpus()
    else:
        names, nvml_error = None, ""
    compute = inference_compute(lines) if lines is not None else None
    findings += judge_gpu(config.gpu.enabled, names, nvml_error, compute)

    models_dir = config.ollama.models_dir
    exists = models_dir.is_dir()
    owner = free = total = None
    if exists:
        st = models_dir.stat()
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        usage = shutil.disk_usage(models_dir)
        free, total = usage.free, usage.total
    findings += judge_models_dir(models_dir, exists, owner, free, total)
    store = ModelStore(models_dir)
    scan = store.scan() if exists else None
    if scan is not None:
        findings += judge_blobs(scan)

    server_pids = [lst.pid for lst in found if lst.pid and classify_argv(lst.argv) == "server"]
    env = process_environ(server_pids[0]) if server_pids else None
    if env is not None:
        findings += judge_env(env, f"environment of pid {server_pids[0]}")
    elif props is not None:
        env = unit_environ(props)
        findings += judge_env(env, f"{config.ollama.unit} Environment=")
    else:
        findings.append(Finding("env", Level.SKIP, "neither the process nor the unit readable"))

    texts: dict[str, list[str]] = {}
    for path in modelfiles:
        try:
            texts[str(path)] = ollama_env.modelfile_parameter_names(path.read_text())
        except OSError as exc:
            findings.append(
                Finding("parameters", Level.FAIL, f"cannot read {path}: {exc.strerror}")
            )
    findings += judge_parameters(stored_parameters(store, scan) if scan else {}, texts)

    findings += judge_exposure(
        port,
        found,
        (env or {}).get("OLLAMA_HOST"),
        firewall_rules(),
        config.exporter.listen,
        config.exporter.web_config,
    )
    findings.append(judge_log_errors(lines, log_why))
    findings += check_placement(config, names, compute)
    findings += check_watchdog(config)
    return findings


def render(findings: Sequence[Finding]) -> str:
    tags = {Level.SKIP: "SKIP", Level.OK: " OK ", Level.WARN: "WARN", Level.FAIL: "FAIL"}
    width = max(len(f.item) for f in findings)
    out: list[str] = []
    for f in findings:
        out.append(f"[{tags[f.level]}] {f.item:<{width}}  {f.text}")
        if f.fix and f.level >= Level.WARN:
            out.append(f"       {'':<{width}}  fix: {f.fix}")
    counts = {level: sum(1 for f in findings if f.level is level) for level in Level}
    out.append(
        f"{counts[Level.OK]} OK, {counts[Level.WARN]} WARN, {counts[Level.FAIL]} FAIL, "
        f"{counts[Level.SKIP]} skipped"
    )
    return "\n".join(out)


def render_json(findings: Sequence[Finding]) -> str:
    """The findings as one JSON document: every item, its level, what was found, the fix."""
    counts = {level.name: sum(1 for f in findings if f.level is level) for level in Level}
    code = exit_code(findings)
    doc = {
        "status": Level(code).name,
        "exit_code": code,
        "counts": counts,
        "findings": [
            {"item": f.item, "level": f.level.name, "text": f.text, "fix": f.fix} for f in findings
        ],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False)


def exit_code(findings: Sequence[Finding]) -> int:
    return max(0, max((int(f.level) for f in findings), default=0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ollama-watchdog doctor``."""
    parser.add_argument(
        "--modelfile",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="also check this Modelfile's PARAMETER lines (repeatable)",
    )
    parser.add_argument(
        "--log-lines",
        type=int,
        default=2000,
        metavar="N",
        help="how many of Ollama's last log lines to read (default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as a JSON document")


def main(args: argparse.Namespace, config: Config) -> int:
    """Run the checklist; exit 0 all OK, 1 some WARN, 2 some FAIL."""
    findings = run_doctor(config, args.modelfile, args.log_lines)
    print(render_json(findings) if args.json else render(findings), file=sys.stdout)
    return exit_code(findings)


__all__ = [
    "Finding",
    "Level",
    "Listener",
    "add_arguments",
    "exit_code",
    "inference_compute",
    "judge_blobs",
    "judge_env",
    "judge_exposure",
    "judge_gpu",
    "judge_log_errors",
    "judge_models_dir",
    "judge_parameters",
    "judge_placement",
    "judge_port",
    "judge_service",
    "judge_version",
    "judge_watchdog",
    "main",
    "render",
    "render_json",
    "run_doctor",
    "unit_environ",
]
