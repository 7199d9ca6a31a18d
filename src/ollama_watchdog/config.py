"""Configuration: a TOML file plus ``OLLAMA_WATCHDOG_<SECTION>_<KEY>`` environment overrides.

Every key is optional. The default file missing means all defaults; a file named explicitly
(``--config FILE``, as every shipped unit does) that is missing is an error, so
``ollama-watchdog@1`` never watches the wrong instance on defaults. Anything wrong — an unknown
section or key, a value of the wrong type (``"3"`` for an integer, ``"false"`` for a boolean, a
bare number for a duration), an unreadable file — raises ``ConfigError`` whose message is one
line naming the key, the bad value and the fix. The CLI turns that into exit code 78
(EX_CONFIG) before anything is started, so systemd's ``RestartPreventExitStatus=78`` stops a
restart loop on a broken config.
"""

from __future__ import annotations

import dataclasses
import enum
import grp
import json
import os
import pwd
import re
import shlex
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

DEFAULT_CONFIG_PATH = Path("/etc/ollama-watchdog/config.toml")
ENV_PREFIX = "OLLAMA_WATCHDOG_"
EX_CONFIG = 78


E = TypeVar("E", bound=enum.StrEnum)


class ConfigError(Exception):
    """A configuration problem; ``str(err)`` is the single line shown to the operator."""


@dataclass(frozen=True)
class OllamaConfig:
    url: str = "http://127.0.0.1:11434"
    timeout: float = 5.0
    unit: str = "ollama.service"
    models_dir: Path = Path("/usr/share/ollama/.ollama/models")


@dataclass(frozen=True)
class ExporterConfig:
    listen: str = "127.0.0.1:9778"
    web_config: str = ""
    #: connections served at once; one more is answered 503 and closed at once
    max_connections: int = 64
    #: the whole of one request (headers read, answer written) must fit in this
    request_timeout: float = 10.0


@dataclass(frozen=True)
class ProbeConfig:
    interval: float = 10.0
    deep_model: str = ""
    deep_interval: float = 60.0
    deep_timeout: float = 60.0


@dataclass(frozen=True)
class WatchdogConfig:
    enabled: bool = True
    failure_threshold: int = 3
    startup_grace: float = 30.0
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    max_restarts: int = 5
    restart_window: float = 1800.0
    restart_command: tuple[str, ...] = ("systemctl", "restart", "ollama.service")
    restart_timeout: float = 90.0


class LogSource(enum.StrEnum):
    """``[logs] source``: where Ollama's log lines are read from."""

    JOURNALD = "journald"
    FILE = "file"
    NONE = "none"


class GpuMode(enum.StrEnum):
    """``[gpu] enabled``: ``auto`` exports GPUs when NVML is there; ``true`` requires it."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


@dataclass(frozen=True)
class LogsConfig:
    source: LogSource = LogSource.JOURNALD
    path: str = ""
    state_dir: Path = Path("/var/lib/ollama-watchdog")


@dataclass(frozen=True)
class GpuConfig:
    enabled: GpuMode = GpuMode.AUTO
    #: the GPUs this watchdog exports, by NVML index or UUID; empty: every GPU NVML sees
    devices: tuple[int | str, ...] = ()


@dataclass(frozen=True)
class HealingConfig:
    """``[healing]``: what the watchdog may do besides restarting the server, and when.

    Defaults, and why (config.example.toml says the same to operators):

    * ``ladder``: a wedged runner (deep probe failing, liveness passing, no progress) is mended
      by unloading its model, then killing its runner, and only then restarting the server —
      a restart drops every stream and pays a cold load of every model.
    * ``orphan_runners``: a runner whose parent is not the current server serves nobody and holds
      memory; killed after ``orphan_grace`` (a runner outlives its server by a few seconds at
      most in a clean restart).
    * ``cpu_fallback``: GPUs present but a loaded model on CPU is the classic GPU-discovery
      failure one restart fixes; at most once per ``cause_cooldown`` (a model put on CPU on
      purpose — ``num_gpu 0`` — is then left alone), and only when idle.
    * ``vram_not_released``: GPU memory held by Ollama with no model loaded, past ``vram_grace``,
      is freed by a restart when idle (at most once per ``cause_cooldown``).
    """

    ladder: bool = True
    unload_timeout: float = 30.0
    kill_timeout: float = 10.0
    max_unloads: int = 5
    max_kills: int = 5
    orphan_runners: bool = True
    orphan_grace: float = 120.0
    cpu_fallback: bool = True
    cpu_fallback_grace: float = 120.0
    vram_not_released: bool = True
    vram_grace: float = 300.0
    vram_min_bytes: int = 256 * 1024 * 1024
    cause_cooldown: float = 3600.0
    #: a planned action waits for no request in flight (or this long without request lines)...
    planned_quiet: float = 30.0
    #: ...but no longer than this, then acts and says so
    planned_max_wait: float = 600.0


@dataclass(frozen=True)
class FleetConfig:
    """``[fleet]``: several hosts behind one balancer (issue 17)."""

    #: Prometheus that scrapes every watchdog of the fleet; "" = no fleet budget, act alone
    prometheus_url: str = ""
    prometheus_username: str = ""
    #: a file holding the basic-auth password (never the password itself in the config)
    prometheus_password_file: str = ""
    #: CA bundle for an https prometheus_url with a private CA; "" = the system's
    prometheus_ca_file: str = ""
    #: one fleet query, connect to last byte
    query_timeout: float = 2.0
    #: hosts of the fleet that may be out (draining, remediating, restarting, backoff) at once
    max_unavailable: int = 1
    #: PromQL label matchers that pick this fleet's watchdogs out of Prometheus
    selector: str = 'job="ollama-watchdog"'
    #: this host's own ``instance`` label in Prometheus; "" = derived from [exporter] listen
    instance: str = ""
    #: how long a planned action waits for requests in flight to finish
    drain_timeout: float = 120.0
    #: before asking, a host about to act shows itself out this long (at least the watchdog
    #: job's scrape interval plus a rule evaluation), so that hosts deciding together see
    #: each other; 0 = ask at once
    settle: float = 10.0
    #: HAProxy agent-check responder, host:port; "" = off
    agent_listen: str = ""


@dataclass(frozen=True)
class Config:
    ollama: OllamaConfig = field(default_factory=OllamaConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    healing: HealingConfig = field(default_factory=HealingConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


SECTIONS: dict[str, type[Any]] = {
    "ollama": OllamaConfig,
    "exporter": ExporterConfig,
    "probe": ProbeConfig,
    "watchdog": WatchdogConfig,
    "logs": LogsConfig,
    "gpu": GpuConfig,
    "healing": HealingConfig,
    "fleet": FleetConfig,
}

# ---------------------------------------------------------------------------------------------
# value parsers: each takes the raw value (TOML type, or str from the environment) and returns
# the typed value or raises ValueError with the "accepted" half of the message.

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HELP = 'a duration like "500ms", "10s", "5m", "1h" or "1m30s"'


def parse_duration(raw: object) -> float:
    """Parse ``500ms``/``10s``/``5m``/``1h``/``1m30s`` into seconds (bare numbers are refused)."""
    if not isinstance(raw, str):
        raise ValueError(_DURATION_HELP)
    text = raw.strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            raise ValueError(_DURATION_HELP)
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError(_DURATION_HELP)
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for messages: 1800 -> '30m', 0.5 -> '500ms'."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    parts: list[str] = []
    rest = seconds
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            n = int(rest // size)
            parts.append(f"{n}{unit}")
            rest -= n * size
    if rest or not parts:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def human_duration(seconds: float) -> str:
    """``format_duration`` at a precision a human reads: whole seconds past ten seconds."""
    if seconds >= 10:
        seconds = float(round(seconds))
    elif seconds >= 1:
        seconds = round(seconds, 1)
    return format_duration(max(seconds, 0.0))


def _positive_duration(raw: object) -> float:
    value = parse_duration(raw)
    if value <= 0:
        raise ValueError('a duration greater than zero, like "10s"')
    return value


def _duration_or_zero(raw: object) -> float:
    return parse_duration(raw)


def _string(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("a string")
    return raw


def _bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(raw, str) and raw.strip().lower() in {"false", "0", "no", "off"}:
        return False
    raise ValueError("true or false")


def _int_at_least(minimum: int) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        value: int
        if isinstance(raw, bool):
            raise ValueError(f"an integer >= {minimum}")
        if isinstance(raw, int):
            value = raw
        elif isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
            value = int(raw)
        else:
            raise ValueError(f"an integer >= {minimum}")
        if value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return parse


def _url(raw: object) -> str:
    text = _string(raw).rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError('an http(s) URL like "http://127.0.0.1:11434"')
    return text


def parse_listen(raw: object) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses) -> (host, port)."""
    text = _string(raw).strip()
    help_text = 'host:port like "127.0.0.1:9778", "[::1]:9778" or ":9778"'
    m = re.fullmatch(r"\[([0-9a-fA-F:.%a-zA-Z]+)\]:(\d+)|([^:\[\]]*):(\d+)", text)
    if not m:
        raise ValueError(help_text)
    host = m.group(1) if m.group(1) is not None else (m.group(3) or "")
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(help_text)
    return host, port


def _listen(raw: object) -> str:
    parse_listen(raw)
    return _string(raw).strip()


def _listen_or_off(raw: object) -> str:
    if isinstance(raw, str) and not raw.strip():
        return ""
    try:
        return _listen(raw)
    except ValueError as exc:
        raise ValueError(f'{exc}, or "" (off)') from None


def _url_or_off(raw: object) -> str:
    if isinstance(raw, str) and not raw.strip():
        return ""
    try:
        return _url(raw)
    except ValueError:
        raise ValueError('an http(s) URL like "http://prometheus:9090", or "" (off)') from None


# One PromQL label matcher: name, operator, double-quoted value (escapes allowed).
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(?:=~|!~|!=|=)\s*"(?:[^"\\\n]|\\.)*"\s*'
_SELECTOR_RE = re.compile(rf"(?:{_MATCHER}(?:,{_MATCHER})*)?,?\s*")
_SELECTOR_HELP = (
    "PromQL label matchers without braces, like 'job=\"ollama-watchdog\"' or "
    '\'job="ollama-watchdog",site=~"lab|dc1"\''
)


def _selector(raw: object) -> str:
    text = _string(raw).strip()
    if not _SELECTOR_RE.fullmatch(text):
        raise ValueError(_SELECTOR_HELP)
    names = re.findall(r"(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*[=!]", text)
    if "state" in names:
        raise ValueError(
            _SELECTOR_HELP + ' (without "state": the fleet query matches the states itself)'
        )
    return text.rstrip(", \t")


def _label_value(raw: object) -> str:
    text = _string(raw).strip()
    if any(c in text for c in '"\\\n{}') or len(text) > 256:
        raise ValueError(
            'Prometheus\'s instance label of this host, like "gpu1.example.internal:9778", '
            'or "" (derived from exporter.listen)'
        )
    return text


def _path(raw: object) -> Path:
    text = _string(raw)
    if not text:
        raise ValueError("a non-empty path")
    return Path(text)


def _command(raw: object) -> tuple[str, ...]:
    items: object = raw
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
        raise ValueError(
            'a non-empty list of strings like ["systemctl", "restart", "ollama.service"]'
        )
    return tuple(items)


_GPU_UUID_RE = re.compile(r"GPU-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_GPU_DEVICES_HELP = (
    "a non-empty list of GPU indexes or UUIDs as nvidia-smi -L shows them, like [0] or "
    '["GPU-8a8e2e0c-5cd1-6d5c-0b8a-7a7d0f3c9e21"] (leave it out for every GPU)'
)


def _gpu_selector(item: object) -> int | str:
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return item
    if isinstance(item, str) and _GPU_UUID_RE.fullmatch(item):
        return item
    raise ValueError(_GPU_DEVICES_HELP)


def _gpu_devices(raw: object) -> tuple[int | str, ...]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(_GPU_DEVICES_HELP)
    out = tuple(_gpu_selector(item) for item in raw)
    seen: set[int | str] = set()
    for sel in out:
        key = sel.lower() if isinstance(sel, str) else sel
        if key in seen:
            raise ValueError(f"each GPU named once ({_show(sel)} is named twice)")
        seen.add(key)
    return out


def _env_gpu_devices(text: str) -> object:
    """In the environment: a JSON list, or comma-separated indexes and UUIDs (``0,1``)."""
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [int(x) if x.strip().isdigit() else x.strip() for x in text.split(",")]


def _choice(choices: type[E]) -> Callable[[object], E]:
    def parse(raw: object) -> E:
        value = str(raw).lower() if isinstance(raw, bool) else raw
        if not isinstance(value, str) or value not in {c.value for c in choices}:
            raise ValueError("one of " + ", ".join(f'"{c.value}"' for c in choices))
        return choices(value)

    return parse


_PARSERS: dict[tuple[str, str], Callable[[object], Any]] = {
    ("ollama", "url"): _url,
    ("ollama", "timeout"): _positive_duration,
    ("ollama", "unit"): _string,
    ("ollama", "models_dir"): _path,
    ("exporter", "listen"): _listen,
    ("exporter", "web_config"): _string,
    ("exporter", "max_connections"): _int_at_least(1),
    ("exporter", "request_timeout"): _positive_duration,
    ("probe", "interval"): _positive_duration,
    ("probe", "deep_model"): _string,
    ("probe", "deep_interval"): _positive_duration,
    ("probe", "deep_timeout"): _positive_duration,
    ("watchdog", "enabled"): _bool,
    ("watchdog", "failure_threshold"): _int_at_least(1),
    ("watchdog", "startup_grace"): _duration_or_zero,
    ("watchdog", "backoff_initial"): _duration_or_zero,
    ("watchdog", "backoff_max"): _duration_or_zero,
    ("watchdog", "max_restarts"): _int_at_least(0),
    ("watchdog", "restart_window"): _positive_duration,
    ("watchdog", "restart_command"): _command,
    ("watchdog", "restart_timeout"): _positive_duration,
    ("logs", "source"): _choice(LogSource),
    ("logs", "path"): _string,
    ("logs", "state_dir"): _path,
    ("gpu", "enabled"): _choice(GpuMode),
    ("gpu", "devices"): _gpu_devices,
    ("healing", "ladder"): _bool,
    ("healing", "unload_timeout"): _positive_duration,
    ("healing", "kill_timeout"): _positive_duration,
    ("healing", "max_unloads"): _int_at_least(0),
    ("healing", "max_kills"): _int_at_least(0),
    ("healing", "orphan_runners"): _bool,
    ("healing", "orphan_grace"): _duration_or_zero,
    ("healing", "cpu_fallback"): _bool,
    ("healing", "cpu_fallback_grace"): _duration_or_zero,
    ("healing", "vram_not_released"): _bool,
    ("healing", "vram_grace"): _duration_or_zero,
    ("healing", "vram_min_bytes"): _int_at_least(0),
    ("healing", "cause_cooldown"): _duration_or_zero,
    ("healing", "planned_quiet"): _positive_duration,
    ("healing", "planned_max_wait"): _duration_or_zero,
    ("fleet", "prometheus_url"): _url_or_off,
    ("fleet", "prometheus_username"): _string,
    ("fleet", "prometheus_password_file"): _string,
    ("fleet", "prometheus_ca_file"): _string,
    ("fleet", "query_timeout"): _positive_duration,
    ("fleet", "max_unavailable"): _int_at_least(1),
    ("fleet", "selector"): _selector,
    ("fleet", "instance"): _label_value,
    ("fleet", "drain_timeout"): _duration_or_zero,
    ("fleet", "settle"): _duration_or_zero,
    ("fleet", "agent_listen"): _listen_or_off,
}


def _show(raw: object) -> str:
    if isinstance(raw, str):
        return json.dumps(raw)
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (int, float)):
        return repr(raw)
    return json.dumps(raw, default=str)


def _default_of(section: str, key: str) -> object:
    for f in dataclasses.fields(SECTIONS[section]):
        if f.name == key:
            return f.default
    return dataclasses.MISSING


def _toml_type_error(section: str, key: str, raw: object) -> str | None:
    """The fix when a TOML value has the wrong type, judged by the key's default's type.

    The environment gives every value as a string, so ``"3"`` and ``"true"`` are fine there; in
    a TOML file, ``failure_threshold = "3"`` or ``enabled = "false"`` is a quoting mistake
    (and ``enabled = "false"`` read as truthy is how a watchdog restarts what it should not).
    """
    default = _default_of(section, key)
    shown = f"{section}.{key} = {_show(raw)}"
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            word = str(raw).strip().lower()
            if word in {"false", "0", "no", "off"}:
                return f"{shown} is not a boolean: write {key} = false (no quotes)"
            if word in {"true", "1", "yes", "on"}:
                return f"{shown} is not a boolean: write {key} = true (no quotes)"
            return f"{shown} is not a boolean: write {key} = true or {key} = false (no quotes)"
    elif isinstance(default, int):
        if isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
            return f"{shown} is a string: write {key} = {raw.strip()} (an integer, no quotes)"
        if isinstance(raw, float) and raw.is_integer():
            return f"{shown} is not an integer: write {key} = {int(raw)}"
        if isinstance(raw, bool) or not isinstance(raw, int):
            return (
                f"{shown} is not an integer: write a whole number without quotes, "
                f"like {key} = {default}"
            )
    elif _PARSERS[(section, key)] in (_positive_duration, _duration_or_zero):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return (
                f'{shown} is a bare number: write {key} = "{raw:g}s" (a duration in quotes '
                f"with its unit: {_DURATION_HELP.removeprefix('a duration like ')})"
            )
    elif (
        isinstance(default, (str, Path))
        and not isinstance(default, enum.Enum)
        and not isinstance(raw, str)
    ):
        # enum keys (logs.source, gpu.enabled) parse their own types
        return f'{shown} is not a string: write it in quotes, like {key} = "{default}"'
    return None


def _parse_value(
    section: str, key: str, raw: object, origin: str, *, from_toml: bool = False
) -> Any:
    if from_toml:
        fix = _toml_type_error(section, key, raw)
        if fix is not None:
            raise ConfigError(f"{origin}: {fix}")
    try:
        return _PARSERS[(section, key)](raw)
    except (ValueError, json.JSONDecodeError) as exc:
        accepted = str(exc) if not isinstance(exc, json.JSONDecodeError) else "a JSON list"
        raise ConfigError(
            f"{origin}: invalid value {_show(raw)} for {section}.{key}: expected {accepted}"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def unreadable_message(path: Path) -> str:
    """Who cannot read ``path``, who owns it, its mode, and the fix (one line)."""
    user = _user_name(os.geteuid())
    try:
        st = path.stat()
    except OSError:
        blocked = next(
            (
                d
                for d in reversed(path.absolute().parents)
                if not os.access(d, os.X_OK, effective_ids=os.access in os.supports_effective_ids)
            ),
            path.parent,
        )
        try:
            dst = blocked.stat()
            who = f"{_user_name(dst.st_uid)}:{_group_name(dst.st_gid)} mode "
            who += f"{stat.S_IMODE(dst.st_mode):04o}"
        except OSError:
            who = "not readable"
        return (
            f"{path}: cannot read config: permission denied for user {user}: the directory "
            f"{blocked} ({who}) is not searchable by it: let {user} in (chmod o+x {blocked}, or "
            "a group it is in), or keep the config elsewhere"
        )
    owner, group = _user_name(st.st_uid), _group_name(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    return (
        f"{path}: cannot read config: permission denied for user {user} (the file is "
        f"{owner}:{group} mode {mode:04o}): let {user} read it, e.g. "
        f"chgrp {_group_name(os.getegid())} {path} && chmod 0640 {path}"
    )


def _read_file(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        if not required:
            return {}
        raise ConfigError(
            f"{path}: config file not found: create it (the template is config.example.toml) "
            f"or fix the path given to --config; without --config, {DEFAULT_CONFIG_PATH} is read "
            "and its absence means defaults"
        ) from None
    except PermissionError:
        raise ConfigError(unreadable_message(path)) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory: name the TOML file inside it") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(section, key, value, variable) for every OLLAMA_WATCHDOG_* variable."""
    out: list[tuple[str, str, str, str]] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                if (section, key) in _PARSERS:
                    out.append((section, key, env[var], var))
                    break
        else:
            raise ConfigError(
                f"environment: unknown variable {var}: expected OLLAMA_WATCHDOG_<SECTION>_<KEY> "
                f"for a key of {', '.join(SECTIONS)} (e.g. OLLAMA_WATCHDOG_PROBE_INTERVAL=5s)"
            )
    return out


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path``, apply env overrides, validate everything.

    ``path`` None reads :data:`DEFAULT_CONFIG_PATH`, whose absence means defaults; a ``path``
    given (``--config FILE``) must exist.
    """
    required = path is not None
    path = DEFAULT_CONFIG_PATH if path is None else path
    environ = os.environ if env is None else env
    data = _read_file(path, required)
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}

    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{path}: unknown section [{section}]: expected one of "
                + ", ".join(f"[{s}]" for s in SECTIONS)
            )
        if not isinstance(body, dict):
            raise ConfigError(
                f"{path}: {section} must be a table: write [{section}] on its own line"
            )
        for key, raw in body.items():
            if (section, key) not in _PARSERS:
                known = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
                raise ConfigError(
                    f"{path}: unknown key {section}.{key}: [{section}] accepts {known}"
                )
            values[section][key] = _parse_value(section, key, raw, str(path), from_toml=True)

    for section, key, raw, var in _env_overrides(environ):
        value: object = raw
        if (section, key) == ("watchdog", "restart_command"):
            # in the environment a command is a JSON list or a shell-quoted string
            try:
                text = raw.strip()
                value = json.loads(text) if text.startswith("[") else shlex.split(text)
            except ValueError:
                value = raw
        elif (section, key) == ("gpu", "devices"):
            try:
                value = _env_gpu_devices(raw)
            except ValueError:  # not JSON: reported as the bad value it is
                value = raw
        values[section][key] = _parse_value(section, key, value, f"environment {var}")

    config = Config(**{s: SECTIONS[s](**values[s]) for s in SECTIONS})
    _check_consistency(config, str(path))
    return config


def _check_consistency(config: Config, origin: str) -> None:
    wd = config.watchdog
    if wd.backoff_max < wd.backoff_initial:
        raise ConfigError(
            f"{origin}: watchdog.backoff_max ({format_duration(wd.backoff_max)}) is shorter than "
            f"watchdog.backoff_initial ({format_duration(wd.backoff_initial)}): raise backoff_max"
        )
    fleet = config.fleet
    if bool(fleet.prometheus_username) != bool(fleet.prometheus_password_file):
        raise ConfigError(
            f"{origin}: fleet.prometheus_username and fleet.prometheus_password_file go "
            "together: set both for basic auth to Prometheus, or neither"
        )
    if fleet.agent_listen and parse_listen(fleet.agent_listen) == parse_listen(
        config.exporter.listen
    ):
        raise ConfigError(
            f"{origin}: fleet.agent_listen ({fleet.agent_listen}) is the exporter's own "
            "address: give the HAProxy agent a port of its own"
        )
    if config.logs.source == "file" and not config.logs.path:
        raise ConfigError(
            f'{origin}: logs.source = "file" needs logs.path: set it to Ollama\'s log file, '
            'or use source = "journald"'
        )


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "EX_CONFIG",
    "Config",
    "ConfigError",
    "ExporterConfig",
    "FleetConfig",
    "GpuConfig",
    "GpuMode",
    "HealingConfig",
    "LogSource",
    "LogsConfig",
    "OllamaConfig",
    "ProbeConfig",
    "WatchdogConfig",
    "format_duration",
    "human_duration",
    "load_config",
    "parse_duration",
    "parse_listen",
    "unreadable_message",
]
