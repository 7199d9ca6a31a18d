"""Put our stack into a (not yet booted) nspawn container, as an operator would install it.

What goes in: the project's wheel and its dependencies into ``/opt/ollama-watchdog/venv``
(offline, from a wheelhouse), the shipped units, sysusers file and polkit rule exactly as they
are in ``systemd/``, the ``ollama`` user as Ollama's install.sh makes it, a config with short
intervals, and the stand-in ``ollama`` (``ollama_watchdog.simulator.standin``) at
``ollama.service``'s ExecStart path, which runs our simulator. It is a Python script run by the
venv's python through its shebang, so the server's argv reads
``python /usr/local/bin/ollama serve``: the process collector's matching rule sees an ``ollama``
element followed by ``serve``, as with the real binary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nspawn import Container, project_root

from ollama_watchdog.simulator.standin import standin_script

VENV = "/opt/ollama-watchdog/venv"
WHEELHOUSE = "/opt/ollama-watchdog/wheelhouse"
CONFIG_PATH = "/etc/ollama-watchdog/config.toml"
STATE_DIR = "/var/lib/ollama-watchdog"
OLLAMA_URL = "http://127.0.0.1:11434"
CONTROL_URL = "http://127.0.0.1:11435"
METRICS_URL = "http://127.0.0.1:9778/metrics"
OLLAMA_UNIT = "ollama.service"
WATCHDOG_UNIT = "ollama-watchdog.service"
WATCHDOG_USER = "ollama-watchdog"
MODELS_DIR = "/usr/share/ollama/.ollama/models"

# `ollama serve` runs our simulator (Ollama's API and log lines on stdout/stderr, so journald via
# the unit) over the store in the ollama user's home; the unit cannot pass arguments, so the
# fault-control address is baked into the script.
STAND_IN_OLLAMA = standin_script(f"{VENV}/bin/python", serve_args=("--control", "127.0.0.1:11435"))


@dataclass(frozen=True)
class WatchdogSettings:
    """The knobs the system tests turn; short, so a restart happens within seconds."""

    probe_interval: str = "1s"
    ollama_timeout: str = "2s"
    failure_threshold: int = 2
    startup_grace: str = "3s"
    backoff_initial: str = "1s"
    backoff_max: str = "5s"
    max_restarts: int = 10
    logs_source: str = "journald"


def config_toml(settings: WatchdogSettings = WatchdogSettings(), extra: str = "") -> str:
    """The watchdog's config file text; ``extra`` is appended verbatim (e.g. a bad key)."""
    s = settings
    return f"""\
[ollama]
url = "{OLLAMA_URL}"
timeout = "{s.ollama_timeout}"
unit = "{OLLAMA_UNIT}"
models_dir = "{MODELS_DIR}"

[exporter]
listen = "127.0.0.1:9778"

[probe]
interval = "{s.probe_interval}"

[watchdog]
failure_threshold = {s.failure_threshold}
startup_grace = "{s.startup_grace}"
backoff_initial = "{s.backoff_initial}"
backoff_max = "{s.backoff_max}"
max_restarts = {s.max_restarts}
restart_command = ["systemctl", "restart", "{OLLAMA_UNIT}"]

[logs]
source = "{s.logs_source}"
state_dir = "{STATE_DIR}"

[gpu]
enabled = "false"
{extra}"""


def deploy(
    container: Container,
    wheelhouse: Path,
    *,
    config: str | None = None,
    units: Mapping[str, str] | None = None,
) -> None:
    """Install everything into the container's tree; call before ``boot()``.

    ``units`` maps a shipped file under ``systemd/`` to its install path; by default the two
    services, the sysusers file and the polkit rule.
    """
    repo = project_root() / "systemd"
    container.copy_in(wheelhouse, WHEELHOUSE)
    container.prepare(["python3", "-m", "venv", VENV])
    container.prepare(
        [
            f"{VENV}/bin/pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-index",
            f"--find-links={WHEELHOUSE}",
            "ollama-watchdog",
        ]
    )
    # As Ollama's scripts/install.sh creates its user (home = /usr/share/ollama).
    container.prepare(
        [
            "useradd",
            "--system",
            "--user-group",
            "--create-home",
            "--home-dir=/usr/share/ollama",
            "--shell=/bin/false",
            "ollama",
        ]
    )
    container.prepare(["install", "-d", "-o", "ollama", "-g", "ollama", MODELS_DIR])
    shipped = dict(
        units
        or {
            "ollama.service": "/etc/systemd/system/ollama.service",
            "ollama-watchdog.service": "/etc/systemd/system/ollama-watchdog.service",
            "sysusers.d/ollama-watchdog.conf": "/usr/lib/sysusers.d/ollama-watchdog.conf",
            "polkit/50-ollama-watchdog.rules": "/etc/polkit-1/rules.d/50-ollama-watchdog.rules",
        }
    )
    for src, dst in shipped.items():
        container.copy_in(repo / src, dst, mode=0o644)
    container.prepare(["systemd-sysusers"])
    container.write_file("/usr/local/bin/ollama", STAND_IN_OLLAMA, mode=0o755)
    container.write_file(CONFIG_PATH, config if config is not None else config_toml())
    container.prepare(["systemctl", "enable", OLLAMA_UNIT])
