"""Config loading: defaults, file + env overrides, and one exact error line per invalid file."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.tools import require_tool

from ollama_watchdog import config as config_module
from ollama_watchdog.config import (
    Config,
    ConfigError,
    WatchdogConfig,
    format_duration,
    load_config,
    parse_duration,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "config"
INVALID = sorted(FIXTURES.glob("invalid-*.toml"))
REPO = Path(__file__).resolve().parents[2]


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")
    assert load_config(None, env={}) == Config()


def test_missing_explicit_file_is_an_error_naming_it(tmp_path: Path) -> None:
    # ollama-watchdog@1 runs `--config /etc/ollama-watchdog/1.toml`: on defaults it would watch
    # and restart ollama.service instead of ollama@1
    absent = tmp_path / "1.toml"
    with pytest.raises(ConfigError) as err:
        load_config(absent, env={})
    assert str(err.value).startswith(f"{absent}: config file not found: create it ")
    assert "\n" not in str(err.value)


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def test_defaults_match_design() -> None:
    c = Config()
    assert c.ollama.url == "http://127.0.0.1:11434"
    assert c.exporter.listen == "127.0.0.1:9778"
    assert c.probe.interval == 10.0
    assert c.watchdog.failure_threshold == 3
    assert c.watchdog.backoff_max == 300.0
    assert c.watchdog.restart_window == 1800.0
    assert c.watchdog.restart_command == ("systemctl", "restart", "ollama.service")
    assert c.logs.source == "journald"
    assert c.gpu.enabled == "auto"


def test_example_config_is_valid_and_equals_defaults() -> None:
    # every key is commented out in the example, so it must load to the defaults
    assert load_config(REPO / "config.example.toml", env={}) == Config()


def test_example_config_names_every_key() -> None:
    text = (REPO / "config.example.toml").read_text()
    import dataclasses

    for section in dataclasses.fields(Config):
        assert f"[{section.name}]" in text
        for f in dataclasses.fields(getattr(Config(), section.name)):
            assert f"# {f.name} = " in text, f"{section.name}.{f.name} missing from example"


def test_file_values_are_typed(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(
        '[ollama]\nurl = "http://10.0.0.5:11434/"\ntimeout = "1500ms"\n'
        '[watchdog]\nrestart_command = ["sudo", "systemctl", "restart", "ollama"]\n'
        'restart_window = "1h30m"\nenabled = false\n'
        '[logs]\nsource = "file"\npath = "/var/log/ollama.log"\n'
    )
    c = load_config(p, env={})
    assert c.ollama.url == "http://10.0.0.5:11434"
    assert c.ollama.timeout == 1.5
    assert c.watchdog.restart_command == ("sudo", "systemctl", "restart", "ollama")
    assert c.watchdog.restart_window == 5400.0
    assert c.watchdog.enabled is False
    assert c.logs.path == "/var/log/ollama.log"


def test_env_overrides_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[probe]\ninterval = "30s"\n')
    c = load_config(
        p,
        env={
            "OLLAMA_WATCHDOG_PROBE_INTERVAL": "5s",
            "OLLAMA_WATCHDOG_WATCHDOG_MAX_RESTARTS": "2",
            "OLLAMA_WATCHDOG_WATCHDOG_RESTART_COMMAND": "systemctl restart ollama@1.service",
            "OLLAMA_WATCHDOG_GPU_ENABLED": "false",
            "PATH": "/usr/bin",
        },
    )
    assert c.probe.interval == 5.0
    assert c.watchdog.max_restarts == 2
    assert c.watchdog.restart_command == ("systemctl", "restart", "ollama@1.service")
    assert c.gpu.enabled == "false"


UUID = "GPU-8a8e2e0c-5cd1-6d5c-0b8a-7a7d0f3c9e21"


def test_gpu_devices_by_index_or_uuid_from_file_and_environment(
    tmp_path: Path, empty: Path
) -> None:
    assert Config().gpu.devices == ()  # every GPU
    p = tmp_path / "c.toml"
    p.write_text(f'[gpu]\ndevices = [1, "{UUID}"]\n')
    assert load_config(p, env={}).gpu.devices == (1, UUID)
    for text in ("0,2", " 0, 2 ", "[0, 2]"):
        c = load_config(empty, env={"OLLAMA_WATCHDOG_GPU_DEVICES": text})
        assert c.gpu.devices == (0, 2), text
    c = load_config(empty, env={"OLLAMA_WATCHDOG_GPU_DEVICES": UUID})
    assert c.gpu.devices == (UUID,)


@pytest.mark.parametrize(
    "value",
    ["[]", "[-1]", "[true]", '["0"]', '["GPU-1"]', '["MIG-8a8e2e0c-5cd1-6d5c-0b8a-7a7d0f3c9e21"]',
     "0", '"all"', "[1.5]"],
)  # fmt: skip
def test_gpu_devices_refuses_what_names_no_gpu(tmp_path: Path, value: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(f"[gpu]\ndevices = {value}\n")
    with pytest.raises(ConfigError, match=r"for gpu\.devices: expected a non-empty list of GPU"):
        load_config(p, env={})


def test_gpu_devices_names_each_gpu_once(tmp_path: Path, empty: Path) -> None:
    p = tmp_path / "c.toml"
    shouted = UUID.upper()  # the same GPU: NVML's hex digits are lower case, either matches
    p.write_text(f'[gpu]\ndevices = [0, "{UUID}", "{shouted}"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    assert str(err.value).endswith(f'expected each GPU named once ("{shouted}" is named twice)')
    with pytest.raises(ConfigError, match=r"OLLAMA_WATCHDOG_GPU_DEVICES.*expected a non-empty"):
        load_config(empty, env={"OLLAMA_WATCHDOG_GPU_DEVICES": "[0,"})


def test_env_unknown_variable_is_an_error(empty: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(empty, env={"OLLAMA_WATCHDOG_PROBE_INTERVALL": "5s"})
    assert "OLLAMA_WATCHDOG_PROBE_INTERVALL" in str(err.value)


def test_env_bad_value_names_the_variable(empty: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(empty, env={"OLLAMA_WATCHDOG_OLLAMA_TIMEOUT": "soon"})
    assert str(err.value) == (
        'environment OLLAMA_WATCHDOG_OLLAMA_TIMEOUT: invalid value "soon" for ollama.timeout: '
        'expected a duration like "500ms", "10s", "5m", "1h" or "1m30s"'
    )


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config_gives_its_exact_error(path: Path) -> None:
    expected = path.with_suffix(".err").read_text().strip()
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == f"{path}: {expected}"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("path", INVALID[:3], ids=[p.stem for p in INVALID[:3]])
def test_cli_exits_78_before_starting(path: Path, port: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OLLAMA_WATCHDOG_EXPORTER_LISTEN": f"127.0.0.1:{port}"},
    )
    assert proc.returncode == 78
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"ollama-watchdog: config error: {path}: {path.with_suffix('.err').read_text().strip()}"
    ]
    assert proc.stdout == ""


def test_env_values_are_strings_and_still_accepted(empty: Path) -> None:
    # the environment has no types: "3" and "false" there are the integer and the boolean
    c = load_config(
        empty,
        env={
            "OLLAMA_WATCHDOG_WATCHDOG_FAILURE_THRESHOLD": "4",
            "OLLAMA_WATCHDOG_WATCHDOG_ENABLED": "false",
        },
    )
    assert c.watchdog.failure_threshold == 4 and c.watchdog.enabled is False


def test_cli_missing_config_exits_78_naming_the_path(tmp_path: Path, port: int) -> None:
    absent = tmp_path / "etc" / "1.toml"
    for command in (["run"], ["doctor"], ["models", "verify"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ollama_watchdog", *command, "--config", str(absent)],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "OLLAMA_WATCHDOG_EXPORTER_LISTEN": f"127.0.0.1:{port}"},
        )
        assert proc.returncode == 78, (command, proc.stderr)
        assert proc.stderr.startswith(
            f"ollama-watchdog: config error: {absent}: config file not found: "
        ), proc.stderr
        assert proc.stdout == ""


def _as_nobody() -> list[str]:
    """argv prefix that runs a command as an unprivileged user (root reads any file)."""
    if os.geteuid() != 0:
        return []
    setpriv = require_tool("setpriv", "util-linux")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can search (pytest's tmp_path is under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="owd-config-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for sub in path.iterdir():
        sub.chmod(0o755)
    shutil.rmtree(path)


#: root runs the command as nobody, who is not the owner; any other user is the owner, so the
#: owner's own permission bits must be off
FILE_MODE, DIR_MODE = (0o600, 0o700) if os.geteuid() == 0 else (0o000, 0o600)


def _run_as_nobody(path: Path) -> str:
    proc = subprocess.run(
        [*_as_nobody(), sys.executable, "-m", "ollama_watchdog", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 78, proc.stderr
    [line] = proc.stderr.splitlines()
    return line


def _names(path: Path) -> str:
    st = path.stat()
    return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"


def test_unreadable_config_names_the_user_owner_mode_and_fix(open_dir: Path) -> None:
    path = open_dir / "secret.toml"
    path.write_text('[probe]\ninterval = "5s"\n')
    path.chmod(FILE_MODE)
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    owner, group = _names(path).split(":")
    line = _run_as_nobody(path)
    assert line.startswith(
        f"ollama-watchdog: config error: {path}: cannot read config: permission denied for "
        f"user {user} (the file is {owner}:{group} mode {FILE_MODE:04o}): let {user} read it, "
        "e.g. chgrp "
    ), line
    assert line.endswith(f" {path} && chmod 0640 {path}")


def test_config_in_an_unsearchable_directory_names_that_directory(open_dir: Path) -> None:
    locked = open_dir / "locked"
    locked.mkdir()
    path = locked / "config.toml"
    path.write_text("")
    path.chmod(0o644)
    locked.chmod(DIR_MODE)
    user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert _run_as_nobody(path) == (
        f"ollama-watchdog: config error: {path}: cannot read config: permission denied for user "
        f"{user}: the directory {locked} ({_names(locked)} mode {DIR_MODE:04o}) is not "
        "searchable by it: "
        f"let {user} in (chmod o+x {locked}, or a group it is in), or keep the config elsewhere"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("10s", 10), ("5m", 300), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "s", "10 s", "-5s", "5d", "1s1", "m5"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (10, "10s"), (1800, "30m"), (5400, "1h30m"), (90, "1m30s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_sections_have_defaults() -> None:
    assert WatchdogConfig().max_restarts == 5


def test_cli_exits_78_for_a_fleet_password_file_it_cannot_read(tmp_path: Path, port: int) -> None:
    missing = tmp_path / "no-such-password"
    config = tmp_path / "fleet.toml"
    config.write_text(
        "[fleet]\n"
        'prometheus_url = "http://127.0.0.1:9"\n'
        'prometheus_username = "watchdog"\n'
        f'prometheus_password_file = "{missing}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "OLLAMA_WATCHDOG_EXPORTER_LISTEN": f"127.0.0.1:{port}"},
    )
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.startswith("ollama-watchdog: config error: fleet.prometheus_password_file")
    assert str(missing) in proc.stderr
