"""Configuration: a TOML file plus ``OLLAMA_WATCHDOG_<SECTION>_<KEY>`` environment overrides.

Every key is optional; a missing file means all defaults. Anything wrong — an unknown section or
key, a value of the wrong type, a duration that does not parse — raises ``ConfigError`` whose
message is one line naming the key, the bad value and what is accepted. The CLI turns that into
exit code 78 (EX_CONFIG) before anything is started, so systemd's ``RestartPreventExitStatus=78``
stops a restart loop on a broken config.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import shlex
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
    fleet: FleetConfig = field(default_factory=FleetConfig)


SECTIONS: dict[str, type[Any]] = {
    "ollama": OllamaConfig,
    "exporter": ExporterConfig,
    "probe": ProbeConfig,
    "watchdog": WatchdogConfig,
    "logs": LogsConfig,
    "gpu": GpuConfig,
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
        raise ValueError("a duration greater than zero, like \"10s\"")
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
    'PromQL label matchers without braces, like \'job="ollama-watchdog"\' or '
    '\'job="ollama-watchdog",site=~"lab|dc1"\''
)


def _selector(raw: object) -> str:
    text = _string(raw).strip()
    if not _SELECTOR_RE.fullmatch(text):
        raise ValueError(_SELECTOR_HELP)
    names = re.findall(r'(?:^|,)\s*([A-Za-z_][A-Za-z0-9_]*)\s*[=!]', text)
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
    if (
        not isinstance(items, list)
        or not items
        or not all(isinstance(x, str) and x for x in items)
    ):
        raise ValueError(
            'a non-empty list of strings like ["systemctl", "restart", "ollama.service"]'
        )
    return tuple(items)


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
    ("fleet", "prometheus_url"): _url_or_off,
    ("fleet", "prometheus_username"): _string,
    ("fleet", "prometheus_password_file"): _string,
    ("fleet", "prometheus_ca_file"): _string,
    ("fleet", "query_timeout"): _positive_duration,
    ("fleet", "max_unavailable"): _int_at_least(1),
    ("fleet", "selector"): _selector,
    ("fleet", "instance"): _label_value,
    ("fleet", "drain_timeout"): _duration_or_zero,
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


def _parse_value(section: str, key: str, raw: object, origin: str) -> Any:
    try:
        return _PARSERS[(section, key)](raw)
    except (ValueError, json.JSONDecodeError) as exc:
        accepted = str(exc) if not isinstance(exc, json.JSONDecodeError) else "a JSON list"
        raise ConfigError(
            f"{origin}: invalid value {_show(raw)} for {section}.{key}: expected {accepted}"
        ) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}; fix the syntax") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str, str]]:
    """(section, key, value, variable) for every OLLAMA_WATCHDOG_* variable."""
    out: list[tuple[str, str, str, str]] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1:]
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
    """Read ``path`` (missing file = defaults), apply env overrides, validate everything."""
    path = DEFAULT_CONFIG_PATH if path is None else path
    environ = os.environ if env is None else env
    data = _read_file(path)
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
            values[section][key] = _parse_value(section, key, raw, str(path))

    for section, key, raw, var in _env_overrides(environ):
        value: object = raw
        if (section, key) == ("watchdog", "restart_command"):
            # in the environment a command is a JSON list or a shell-quoted string
            try:
                text = raw.strip()
                value = json.loads(text) if text.startswith("[") else shlex.split(text)
            except ValueError:
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
]
