"""The shipped systemd units, drop-in, sysusers file and polkit rule, checked by the real tools.

``systemd-analyze verify`` runs against a throw-away root (``--root``) that holds the units, the
stock targets copied from the host, and stub executables at the paths the units name, so the
host's /etc and /opt are never touched and systemd is never booted. ``systemd-analyze security
--offline`` scores the hardening; the score documented in docs/operations.md must be the one the
tool reports. The polkit rule runs in duktape (the engine Debian's polkitd embeds, via dukpy)
together with the ``init.js`` prelude read out of the installed polkitd binary, so the rule sees
exactly the ``polkit``, ``Action`` and ``Subject`` objects it sees in production.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.tools import missing, require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
OPERATIONS_MD = REPO / "docs" / "operations.md"

UNIT_FILES = [
    "ollama.service",
    "ollama@.service",
    "ollama-watchdog.service",
    "ollama-watchdog@.service",
]
# Instances to verify: a template is only checked once instantiated.
UNITS = [
    "ollama.service",
    "ollama@1.service",
    "ollama-watchdog.service",
    "ollama-watchdog@1.service",
]
WATCHDOG_EXEC = "/opt/ollama-watchdog/venv/bin/ollama-watchdog"
OLLAMA_EXEC = "/usr/local/bin/ollama"

# FACTS.md §3: the variables Ollama's envconfig reads (HEAD). OLLAMA_GPU_MEMORY_FRACTION and
# OLLAMA_GPU_PRECISION are deliberately absent: Ollama never had them.
REAL_OLLAMA_VARIABLES = frozenset(
    {
        "OLLAMA_HOST", "OLLAMA_ORIGINS", "OLLAMA_MODELS", "OLLAMA_KEEP_ALIVE",
        "OLLAMA_LOAD_TIMEOUT", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS",
        "OLLAMA_MAX_QUEUE",
        "OLLAMA_FLASH_ATTENTION", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_CONTEXT_LENGTH",
        "OLLAMA_GPU_OVERHEAD", "OLLAMA_SCHED_SPREAD", "OLLAMA_LLM_LIBRARY", "OLLAMA_DEBUG",
        "OLLAMA_NOPRUNE", "OLLAMA_NO_CLOUD", "OLLAMA_IGPU_ENABLE", "OLLAMA_VULKAN",
        "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
        "GGML_VK_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "HSA_OVERRIDE_GFX_VERSION",
    }
)  # fmt: skip


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> every value assigned in the file (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def run_tool(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def analyze(verb: str, root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze on a unit installed under root's /etc/systemd/system."""
    flag = "--man=no" if verb == "verify" else "--offline=true"
    return run_tool(
        ["systemd-analyze", verb, flag, f"--root={root}", f"/etc/systemd/system/{unit}"]
    )


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the shipped units installed where an admin puts them, and stub executables."""
    require_tool("systemd-analyze", "systemd")
    root = tmp_path_factory.mktemp("root")
    for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")):
        (root / link).symlink_to(target)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    # The stock targets (sysinit.target, multi-user.target ...) that every unit's deps pull in.
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name in UNIT_FILES:
        shutil.copy(SYSTEMD_DIR / name, etc / name)
    shutil.copytree(SYSTEMD_DIR / "ollama.service.d", etc / "ollama.service.d")
    for exe in (WATCHDOG_EXEC, OLLAMA_EXEC, "/bin/kill"):
        stub = root / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", UNITS)
def test_unit_verifies_without_a_single_warning(fake_root: Path, unit: str) -> None:
    # verify exits 0 on unknown keys and unparsable values (it only warns), so any output fails.
    result = analyze("verify", fake_root, unit)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_broken_unit(fake_root: Path) -> None:
    """Guards the check above: a typo and a missing binary must both be reported."""
    broken = fake_root / "etc/systemd/system/broken.service"
    text = (SYSTEMD_DIR / "ollama-watchdog.service").read_text()
    text = text.replace("Restart=on-failure", "Restartt=on-failure")
    text = text.replace(WATCHDOG_EXEC, "/opt/nowhere/ollama-watchdog")
    broken.write_text(text)
    try:
        result = analyze("verify", fake_root, broken.name)
    finally:
        broken.unlink()
    assert "Unknown key 'Restartt'" in result.stderr
    assert "/opt/nowhere/ollama-watchdog is not executable" in result.stderr


def exposure(root: Path, unit: str) -> float:
    result = analyze("security", root, unit)
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_documented_exposure_is_what_systemd_reports(fake_root: Path, unit: str) -> None:
    score = exposure(fake_root, unit)
    assert f"| `{unit}` | {score} |" in OPERATIONS_MD.read_text(), (
        f"docs/operations.md must record {unit}'s exposure {score}"
    )


@pytest.mark.parametrize("unit", ["ollama-watchdog.service", "ollama-watchdog@1.service"])
def test_watchdog_exposure_stays_low(fake_root: Path, unit: str) -> None:
    # systemd calls <= 2.0 "OK"; losing a hardening line should fail here, not in an audit.
    assert exposure(fake_root, unit) <= 2.0


@pytest.mark.parametrize("name", ["ollama-watchdog.service", "ollama-watchdog@.service"])
def test_watchdog_unit_keeps_the_contract_the_daemon_and_installer_rely_on(name: str) -> None:
    s = unit_settings(SYSTEMD_DIR / name)
    config = "/etc/ollama-watchdog/%i.toml" if "@" in name else "/etc/ollama-watchdog/config.toml"
    assert s["ExecStart"] == [f"{WATCHDOG_EXEC} run --config {config}"]
    assert (s["Type"], s["NotifyAccess"], s["WatchdogSec"]) == (["notify"], ["main"], ["30s"])
    assert (s["Restart"], s["RestartPreventExitStatus"]) == (["on-failure"], ["78"])
    assert (s["User"], s["SupplementaryGroups"]) == (["ollama-watchdog"], ["systemd-journal"])
    assert s["StateDirectory"][0].startswith("ollama-watchdog")
    # NVML needs /dev/nvidia*.
    assert "PrivateDevices" not in s and "DevicePolicy" not in s
    # issue 18: descriptors and memory bounded, so neither a client flood nor a hostile Ollama
    # turns the watchdog against Ollama's host
    assert s["LimitNOFILE"] == ["4096"]
    assert s["MemoryMax"] == ["512M"]


@pytest.mark.parametrize("name", ["ollama.service", "ollama@.service"])
def test_ollama_unit_is_restartable_and_keeps_gpus(name: str) -> None:
    s = unit_settings(SYSTEMD_DIR / name)
    assert s["Restart"] == ["always"]
    assert s["ExecStart"] == [f"{OLLAMA_EXEC} serve"]
    # logrotate/ollama relies on there being no reload: Ollama cannot reopen its log.
    assert "ExecReload" not in s
    for gpu_breaker in ("PrivateDevices", "DevicePolicy", "MemoryDenyWriteExecute"):
        assert gpu_breaker not in s


def test_tuning_dropin_sets_only_variables_ollama_reads() -> None:
    dropin = SYSTEMD_DIR / "ollama.service.d" / "tuning.conf"
    names = set()
    for raw in dropin.read_text().splitlines():
        line = raw.lstrip("#").strip()
        if line.startswith("Environment="):
            assignment = line.removeprefix("Environment=").strip('"')
            names.add(assignment.partition("=")[0])
    assert names, "the drop-in shows no variable at all"
    assert names <= REAL_OLLAMA_VARIABLES, names - REAL_OLLAMA_VARIABLES
    shown = {
        "OLLAMA_HOST", "OLLAMA_MODELS", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS",
        "OLLAMA_FLASH_ATTENTION", "OLLAMA_KEEP_ALIVE", "OLLAMA_MAX_QUEUE",
    }  # fmt: skip
    assert shown <= names


def test_sysusers_creates_the_user_in_the_journal_group(tmp_path: Path) -> None:
    sysusers = require_tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    conf = SYSTEMD_DIR / "sysusers.d" / "ollama-watchdog.conf"
    result = run_tool([sysusers, f"--root={tmp_path}", str(conf)])
    assert result.returncode == 0, result.stderr
    passwd = {
        line.split(":")[0]: line.split(":")
        for line in (tmp_path / "etc/passwd").read_text().splitlines()
    }
    assert passwd["ollama-watchdog"][6] == "/usr/sbin/nologin"
    groups = {
        line.split(":")[0]: line.split(":")[3].split(",")
        for line in (tmp_path / "etc/group").read_text().splitlines()
    }
    assert "ollama-watchdog" in groups["systemd-journal"]


# --- polkit ---------------------------------------------------------------------------------

POLKITD = Path("/usr/lib/polkit-1/polkitd")


@pytest.fixture(scope="module")
def polkit_prelude() -> str:
    """polkitd's own init.js (defines polkit.addRule/_runRules, Action, Subject, Result)."""
    if not POLKITD.exists():
        missing(f"{POLKITD} not found (apt-get install polkitd)")
    blob = POLKITD.read_bytes()
    start = blob.find(b"function Action()")
    assert start > 0, "init.js not found in polkitd"
    # The prelude is a NUL-terminated C string; its first line is an Emacs modeline comment.
    start = blob.rfind(b"/*", 0, start)
    return blob[start : blob.index(b"\0", start)].decode()


def run_rule(prelude: str, action_id: str, details: dict[str, str], user: str) -> Any:
    try:
        import dukpy  # type: ignore[import-untyped]
    except ImportError:
        missing("dukpy not installed (pip install dukpy: duktape, the engine in polkitd)")
    rule = (SYSTEMD_DIR / "polkit" / "50-ollama-watchdog.rules").read_text()
    # What polkitd's C side does per check: build an Action and a Subject, then _runRules.
    harness = """
        var action = new Action();
        action.id = dukpy.action_id;
        for (var key in dukpy.details) { action["_detail_" + key] = dukpy.details[key]; }
        var subject = new Subject();
        subject.user = dukpy.user; subject.groups = [dukpy.user]; subject.pid = 4242;
        subject.local = false; subject.active = false;
        polkit._runRules(action, subject);
    """
    code = "var polkit = {log: function (m) {}};\n" + prelude + "\n" + rule + "\n" + harness
    return dukpy.evaljs(code, action_id=action_id, details=details, user=user)


MANAGE = "org.freedesktop.systemd1.manage-units"


@pytest.mark.parametrize(
    ("user", "unit", "verb", "allowed"),
    [
        ("ollama-watchdog", "ollama.service", "restart", True),
        ("ollama-watchdog", "ollama.service", "start", True),
        ("ollama-watchdog", "ollama@1.service", "restart", True),
        ("ollama-watchdog", "ollama@gpu-0.service", "start", True),
        ("ollama-watchdog", "ollama.service", "stop", False),
        ("ollama-watchdog", "ollama.service", "reload", False),
        ("ollama-watchdog", "ollama@1.service", "stop", False),
        ("ollama-watchdog", "ollama@.service", "restart", False),
        ("ollama-watchdog", "ollama-watchdog.service", "restart", False),
        ("ollama-watchdog", "sshd.service", "restart", False),
        ("ollama-watchdog", "xollama.service", "restart", False),
        ("ollama-watchdog", "ollama.service.bak", "restart", False),
        ("ollama-watchdog", "ollama@a\\b.service", "restart", False),
        ("ollama-watchdog", "ollama@1.service; x", "restart", False),
        ("ollama", "ollama.service", "restart", False),
        ("nobody", "ollama@1.service", "restart", False),
    ],
)
def test_polkit_rule_allows_exactly_start_and_restart_of_ollama_units(
    polkit_prelude: str, user: str, unit: str, verb: str, allowed: bool
) -> None:
    result = run_rule(polkit_prelude, MANAGE, {"unit": unit, "verb": verb}, user)
    # null (NOT_HANDLED) falls through to polkit's defaults: auth_admin, i.e. denied for a daemon.
    assert result == ("yes" if allowed else None)


@pytest.mark.parametrize(
    "action_id",
    ["org.freedesktop.systemd1.manage-unit-files", "org.freedesktop.login1.reboot",
     "org.freedesktop.systemd1.reload-daemon"],
)  # fmt: skip
def test_polkit_rule_grants_no_other_action(polkit_prelude: str, action_id: str) -> None:
    details = {"unit": "ollama.service", "verb": "restart"}
    assert run_rule(polkit_prelude, action_id, details, "ollama-watchdog") is None
