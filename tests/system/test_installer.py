"""The offline installer end to end, in a booted bookworm with no network at all.

A bundle is built on the host by installer/make-bundle.sh from a stand-in Ollama release archive
(``.tar.zst`` whose ``bin/ollama`` runs our simulator), the real wheelhouse and a models backup
made by ``ollama-watchdog models backup``; the container (``--private-network``) gets only the
bundle and runs installer/install.sh as root. The tests run in file order against one
container: refusal of a tampered bundle on the pristine system, the install, the no-op second
run, then uninstall and purge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.installer.standin import LIB_FILE, build_tar_zst
from nspawn import BASE_PACKAGES, Container, HarnessError, build_base_rootfs, project_root
from support.tools import missing, require_tool

from ollama_watchdog.simulator.catalog import read_store, write_fake_store

pytestmark = pytest.mark.system

BUNDLE_IN = "/root/bundle"
TAMPERED_IN = "/root/tampered"
INSTALL_LOG = "/var/log/ollama-watchdog-install.log"
MODELS_DIR = "/usr/share/ollama/.ollama/models"
UNITS = ("ollama.service", "ollama-watchdog.service")
# Everything install.sh creates; none of it may exist after a refused run.
INSTALLED_PATHS = (
    "/usr/local/bin/ollama",
    "/usr/local/lib/ollama",
    "/opt/ollama-watchdog",
    "/etc/systemd/system/ollama.service",
    "/etc/systemd/system/ollama-watchdog.service",
    "/etc/ollama-watchdog",
    "/usr/share/ollama",
    "/usr/share/ollama-watchdog",
)


@pytest.fixture(scope="module")
def model_names(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    store = tmp_path_factory.mktemp("store")
    write_fake_store(store, 2)
    return store, sorted(m.name for m in read_store(store))


@pytest.fixture(scope="module")
def bundle(
    nspawn_host: None,
    model_names: tuple[Path, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    zstd = require_tool("zstd")
    work = tmp_path_factory.mktemp("installer")
    archive = build_tar_zst(work / "ollama-linux-amd64.tar.zst", zstd)
    store, _ = model_names
    out = work / "bundle"
    venv_bin = project_root() / ".venv" / "bin"
    result = subprocess.run(
        [str(project_root() / "installer" / "make-bundle.sh"),
         "--ollama-archive", str(archive), "--ollama-version", "0.32.15",
         "--models-from", str(store), "--output", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
        env=dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}"),
    )  # fmt: skip
    if result.returncode != 0 and "pip download failed" in result.stderr:
        missing(f"the package index is unreachable for pip: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def container(
    nspawn_host: None, bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """A pristine booted bookworm (plus zstd, as install.sh of Ollama needs) and the bundle."""
    base = build_base_rootfs((*BASE_PACKAGES, "zstd"))
    c = Container.from_base(base, tmp_path_factory.mktemp("nspawn"), private_network=True)
    try:
        c.copy_in(bundle, BUNDLE_IN)
        tampered = tmp_path_factory.mktemp("tampered") / "bundle"
        shutil.copytree(bundle, tampered)
        wheel = next((tampered / "wheelhouse").glob("ollama_watchdog-*.whl"))
        data = bytearray(wheel.read_bytes())
        data[-100] ^= 0x01
        wheel.write_bytes(bytes(data))
        c.copy_in(tampered, TAMPERED_IN)
        boot(c)
        yield c
    finally:
        c.destroy()


def boot(c: Container) -> None:
    """``c.boot()``, tolerating its race: systemctl may run before systemd's bus socket exists.

    (Seen here: "Failed to connect to bus" right after PID 1 appears; nspawn.py should retry.)
    """
    try:
        c.boot()
        return
    except HarnessError as exc:
        if "boot ended in state ''" not in str(exc):
            raise
    for _ in range(60):
        state = c.run(["systemctl", "is-system-running", "--wait"], timeout=120, check=False)
        if state.stdout.strip() in {"running", "degraded"}:
            return
        time.sleep(1)
    raise HarnessError(f"container did not finish booting:\n{c.console_text()}")


def sh(c: Container, *cmd: str, timeout: float = 60) -> tuple[int, str]:
    r = c.run(list(cmd), timeout=timeout, check=False)
    return r.returncode, r.stdout + r.stderr


def install(c: Container, *args: str, bundle: str = BUNDLE_IN) -> tuple[int, str]:
    return sh(c, f"{bundle}/install.sh", "--bundle", bundle, *args, timeout=600)


def exists(c: Container, path: str) -> bool:
    return sh(c, "test", "-e", path)[0] == 0


def test_tampered_bundle_is_refused_before_any_change(container: Container) -> None:
    rc, out = install(container, bundle=TAMPERED_IN)
    assert rc != 0, out
    assert "bundle verification failed" in out
    assert "wheelhouse/ollama_watchdog-" in out  # names the file
    for path in INSTALLED_PATHS:
        assert not exists(container, path), path
    for user in ("ollama", "ollama-watchdog"):
        assert sh(container, "getent", "passwd", user)[0] != 0, user
    # The refusal itself is in the install log.
    assert "bundle verification failed" in sh(container, "cat", INSTALL_LOG)[1]


def test_install_starts_both_services_and_lists_the_restored_models(
    container: Container, model_names: tuple[Path, list[str]]
) -> None:
    rc, out = install(container)
    assert rc == 0, out
    assert "ok: ollama-watchdog check" in out or "warning: ollama-watchdog check" in out, out
    for unit in UNITS:
        assert container.unit_property(unit, "ActiveState") == "active", unit
        assert container.unit_property(unit, "UnitFileState") == "enabled", unit
    status, body = container.http("GET", "http://127.0.0.1:11434/api/tags")
    assert status == 200, body
    listed = sorted(m["name"] for m in json.loads(body)["models"])
    assert listed == model_names[1]
    status, metrics = container.http("GET", "http://127.0.0.1:9778/metrics")
    assert status == 200
    assert "ollama_up 1.0" in metrics

    # Ollama's install.sh end state: binary, libraries, user, home.
    assert sh(container, "stat", "-c", "%U:%G %a", "/usr/local/bin/ollama")[1].strip() == (
        "root:root 755"
    )
    assert exists(container, f"/usr/local/{LIB_FILE}")
    passwd = sh(container, "getent", "passwd", "ollama")[1].strip().split(":")
    assert (passwd[5], passwd[6]) == ("/usr/share/ollama", "/bin/false")
    assert "systemd-journal" in sh(container, "id", "-nG", "ollama-watchdog")[1].split()
    owner = sh(container, "stat", "-c", "%U", f"{MODELS_DIR}/manifests")[1].strip()
    assert owner == "ollama"
    log = sh(container, "cat", INSTALL_LOG)[1]
    assert "change: installing Ollama 0.32.15" in log
    assert "done:" in log


def test_second_run_changes_nothing(container: Container) -> None:
    before = {u: container.unit_property(u, "MainPID") for u in UNITS}
    stamp = sh(container, "stat", "-c", "%Y", "/etc/systemd/system/ollama.service")[1]
    rc, out = install(container)
    assert rc == 0, out
    assert "done: 0 changes" in out, out
    assert "change:" not in out
    assert {u: container.unit_property(u, "MainPID") for u in UNITS} == before
    assert sh(container, "stat", "-c", "%Y", "/etc/systemd/system/ollama.service")[1] == stamp


def test_an_edited_config_is_never_overwritten(container: Container) -> None:
    config = "/etc/ollama-watchdog/config.toml"
    edited = sh(container, "cat", config)[1] + "# edited by the admin\n"
    container.write_file(config, edited, mode=0o640)
    rc, out = install(container)
    assert rc == 0, out
    assert sh(container, "cat", config)[1] == edited


def test_uninstall_keeps_models_and_purge_removes_everything(container: Container) -> None:
    # The bundle is not needed any more: the installer keeps a copy of itself.
    rc, out = sh(container, "/usr/share/ollama-watchdog/install.sh", "--uninstall", timeout=300)
    assert rc == 0, out
    for unit in UNITS:
        assert container.unit_property(unit, "ActiveState") != "active", unit
    for path in ("/usr/local/bin/ollama", "/opt/ollama-watchdog",
                 "/etc/systemd/system/ollama.service"):  # fmt: skip
        assert not exists(container, path), path
    assert exists(container, f"{MODELS_DIR}/manifests")
    assert sh(container, "getent", "passwd", "ollama")[0] == 0

    rc, out = install(container, "--uninstall", "--purge")
    assert rc == 0, out
    for path in INSTALLED_PATHS:
        assert not exists(container, path), path
    for user in ("ollama", "ollama-watchdog"):
        assert sh(container, "getent", "passwd", user)[0] != 0, user
