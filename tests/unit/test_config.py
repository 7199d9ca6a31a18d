"""Config loading: defaults, file + env overrides, and one exact error line per invalid file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "absent.toml", env={}) == Config()


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


def test_gpu_devices_by_index_or_uuid_from_file_and_environment(tmp_path: Path) -> None:
    assert Config().gpu.devices == ()  # every GPU
    p = tmp_path / "c.toml"
    p.write_text(f'[gpu]\ndevices = [1, "{UUID}"]\n')
    assert load_config(p, env={}).gpu.devices == (1, UUID)
    for text in ("0,2", " 0, 2 ", "[0, 2]"):
        c = load_config(tmp_path / "none.toml", env={"OLLAMA_WATCHDOG_GPU_DEVICES": text})
        assert c.gpu.devices == (0, 2), text
    c = load_config(tmp_path / "none.toml", env={"OLLAMA_WATCHDOG_GPU_DEVICES": UUID})
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


def test_gpu_devices_names_each_gpu_once(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    shouted = UUID.upper()  # the same GPU: NVML's hex digits are lower case, either matches
    p.write_text(f'[gpu]\ndevices = [0, "{UUID}", "{shouted}"]\n')
    with pytest.raises(ConfigError) as err:
        load_config(p, env={})
    assert str(err.value).endswith(f'expected each GPU named once ("{shouted}" is named twice)')
    with pytest.raises(ConfigError, match=r"OLLAMA_WATCHDOG_GPU_DEVICES.*expected a non-empty"):
        load_config(tmp_path / "none.toml", env={"OLLAMA_WATCHDOG_GPU_DEVICES": "[0,"})


def test_env_unknown_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "none.toml", env={"OLLAMA_WATCHDOG_PROBE_INTERVALL": "5s"})
    assert "OLLAMA_WATCHDOG_PROBE_INTERVALL" in str(err.value)


def test_env_bad_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "none.toml", env={"OLLAMA_WATCHDOG_OLLAMA_TIMEOUT": "soon"})
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
