"""The offline installer end to end, in a booted bookworm with no network at all.

A bundle is built on the host by installer/make-bundle.sh from a stand-in Ollama release archive
(``.tar.zst`` whose ``bin/ollama`` runs our simulator), the real wheelhouse, a models backup
made by ``ollama-watchdog models backup``, and a GGUF file with its Modelfile (created on the
target by ``ollama create`` against the running server, as the real CLI does it over HTTP); the
container (``--private-network``) gets only the bundle and runs installer/install.sh as root.
The tests run in file order against one container: refusal of a tampered bundle on the
pristine system, the install, the created GGUF model, the no-op second run, then uninstall
and purge.
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
from ollama_watchdog.simulator.gguf import gguf_header

pytestmark = pytest.mark.system

BUNDLE_IN = "/root/bundle"
TAMPERED_IN = "/root/tampered"
INSTALL_LOG = "/var/log/ollama-watchdog-install.log"
MODELS_DIR = "/usr/share/ollama/.ollama/models"
UNITS = ("ollama.service", "ollama-watchdog.service")
GGUF_MODEL = "plant/assistant:v1"
GGUF_MANIFEST = f"{MODELS_DIR}/manifests/registry.ollama.ai/plant/assistant/v1"
# The admin's Modelfile: its FROM is re-pointed at the bundled file by make-bundle.sh.
MODELFILE = (
    "FROM /home/admin/downloads/assistant-q4.gguf\n"
    'TEMPLATE """{{ .System }}\n{{ .Prompt }}"""\n'
    "SYSTEM You are the plant's maintenance assistant.\n"
    "PARAMETER temperature 0.3\n"
    'PARAMETER stop "<|end|>"\n'
)
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
    # A valid GGUF header (llama, Q4_K_M, one 256x256 tensor) is all that create reads.
    gguf = work / "assistant-q4.gguf"
    gguf.write_bytes(gguf_header("llama", 15, ((256, 256),)))
    modelfile = work / "Modelfile"
    modelfile.write_text(MODELFILE)
    out = work / "bundle"
    venv_bin = project_root() / ".venv" / "bin"
    result = subprocess.run(
        [str(project_root() / "installer" / "make-bundle.sh"),
         "--ollama-archive", str(archive), "--ollama-version", "0.32.15",
         "--models-from", str(store), "--gguf", f"{GGUF_MODEL}={gguf}",
         "--modelfile", f"{GGUF_MODEL}={modelfile}", "--output", str(out)],
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
    assert listed == sorted([*model_names[1], GGUF_MODEL])
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
    assert f"change: create model {GGUF_MODEL} (ollama create)" in log
    assert "done:" in log


def test_the_gguf_model_was_created_from_its_modelfile(container: Container) -> None:
    """The GGUF path: the server wrote the model from the bundled file and the Modelfile."""
    rc, raw = sh(container, "cat", GGUF_MANIFEST)
    assert rc == 0, raw
    layers = {layer["mediaType"].rsplit(".", 1)[1]: layer["digest"]
              for layer in json.loads(raw)["layers"]}
    assert set(layers) == {"model", "template", "system", "params"}
    bundled = sh(container, "sha256sum", f"{BUNDLE_IN}/models/gguf/plant_assistant_v1/model.gguf")
    assert layers["model"] == "sha256:" + bundled[1].split()[0]

    def blob(digest: str) -> str:
        return sh(container, "cat", f"{MODELS_DIR}/blobs/{digest.replace(':', '-')}")[1]

    assert blob(layers["system"]) == "You are the plant's maintenance assistant."
    assert json.loads(blob(layers["params"])) == {"stop": ["<|end|>"], "temperature": 0.3}
    # Written by the server, so owned by its user; and the store is sound by our verifier.
    assert sh(container, "stat", "-c", "%U", GGUF_MANIFEST)[1].strip() == "ollama"
    rc, out = sh(container, "/opt/ollama-watchdog/venv/bin/ollama-watchdog", "models", "verify",
                 "--models-dir", MODELS_DIR, timeout=120)
    assert rc == 0, out
    request = {"model": GGUF_MODEL, "prompt": "status of pump 3?", "stream": False}
    status, body = container.http("POST", "http://127.0.0.1:11434/api/generate",
                                  body=json.dumps(request).encode(), timeout=60)
    assert status == 200, body
    assert json.loads(body)["done"] is True


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


def test_the_units_documentation_exists_and_the_runbook_is_served(container: Container) -> None:
    for unit in ("ollama-watchdog.service", "ollama-watchdog@1.service"):
        documentation = container.unit_property(unit, "Documentation").split()
        assert documentation, unit
        for url in documentation:
            assert url.startswith("file://"), url
            assert exists(container, url.removeprefix("file://")), (unit, url)
    assert exists(container, "/usr/share/ollama-watchdog/alertmanager/alertmanager.yml")
    status, body = container.http("GET", "http://127.0.0.1:9778/runbook")
    assert status == 200
    assert '<h3 id="ollamadown">OllamaDown</h3>' in body


def test_the_runbook_base_is_set_once_and_kept(container: Container) -> None:
    rules_file = "/usr/share/ollama-watchdog/prometheus/alerts.yml"
    assert 'runbook_url: "http://{{ $labels.instance }}/runbook#ollamadown"' in sh(
        container, "cat", rules_file
    )[1]
    rc, out = install(container, "--runbook-url", "https://wiki.example/ollama")
    assert rc == 0, out
    rules = sh(container, "cat", rules_file)[1]
    assert 'runbook_url: "https://wiki.example/ollama#ollamadown"' in rules
    assert "/runbook#ollama" not in rules
    # remembered: a later run without the option keeps the base and changes nothing
    rc, out = install(container)
    assert rc == 0, out
    assert "done: 0 changes" in out, out


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
