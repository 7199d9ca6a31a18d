"""The offline installer's bundle, without booting anything.

make-bundle.sh runs for real (pip resolves the real wheelhouse from the package index) over
stand-in Ollama archives; install.sh runs only in modes that change nothing (``--verify``,
``--dry-run``), and as an unprivileged user, so even a bug in it could not touch this host.
What a real install does is proven in tests/system/test_installer.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.installer.standin import LIB_FILE, build_tar_zst, build_tgz, gguf_bytes
from support.tools import missing, require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAKE_BUNDLE = REPO / "installer" / "make-bundle.sh"
INSTALL = REPO / "installer" / "install.sh"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
NOBODY = 65534


def make_bundle(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{VENV_PYTHON.parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(MAKE_BUNDLE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def install_sh(bundle: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """install.sh as an unprivileged user: the modes tested here must not need root."""
    cmd = [str(bundle / "install.sh"), "--bundle", str(bundle), *args]
    if os.geteuid() == 0:
        setpriv = require_tool("setpriv", "util-linux")
        cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # World-readable (pytest's tmp dirs are 0700), so the unprivileged install.sh can read it.
    path = Path(tempfile.mkdtemp(prefix="installer-bundle-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(workdir: Path) -> Path:
    zstd = require_tool("zstd")
    src = workdir / "inputs"
    src.mkdir()
    build_tar_zst(src / "ollama-linux-amd64.tar.zst", zstd)
    (src / "tiny.gguf").write_bytes(gguf_bytes(b"\0" * 64))
    (src / "Modelfile").write_text("# a comment\nfrom /somewhere/else.gguf\nPARAMETER top_k 20\n")
    return src


@pytest.fixture(scope="module")
def bundle(workdir: Path, inputs: Path) -> Path:
    """One real bundle: stand-in .tar.zst, the real wheelhouse, a GGUF model."""
    require_tool("sha256sum", "coreutils")
    out = workdir / "bundle"
    result = make_bundle(
        "--ollama-archive", inputs / "ollama-linux-amd64.tar.zst",
        "--ollama-version", "0.32.15",
        "--arch", "amd64",
        "--gguf", f"library/tiny:q4={inputs / 'tiny.gguf'}",
        "--modelfile", f"library/tiny:q4={inputs / 'Modelfile'}",
        "--output", out,
    )  # fmt: skip
    if result.returncode != 0 and "pip download failed" in result.stderr:
        missing(f"the package index is unreachable for pip: {result.stderr[-500:]}")
    assert result.returncode == 0, result.stderr
    return out


def fresh_copy(bundle: Path, workdir: Path, name: str) -> Path:
    dest = workdir / name
    shutil.copytree(bundle, dest)
    return dest


def listed_files(bundle: Path) -> dict[str, str]:
    lines = (bundle / "SHA256SUMS").read_text().splitlines()
    return {line[66:]: line[:64] for line in lines}


def test_sha256sums_covers_every_file_and_checks_with_coreutils(bundle: Path) -> None:
    on_disk = {
        str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()
    } - {"SHA256SUMS"}
    assert set(listed_files(bundle)) == on_disk
    check = subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=bundle, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_bundle_json_describes_the_contents(bundle: Path) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["ollama"] == {
        "version": "0.32.15",
        "arch": "amd64",
        "format": "tar.zst",
        "archive": "ollama/ollama-linux-amd64.tar.zst",
        "extra_archives": [],
    }
    wheels = sorted(p.name for p in (bundle / "wheelhouse").glob("*.whl"))
    assert meta["watchdog"]["wheels"] == wheels
    assert meta["watchdog"]["python_version"] == "3.11"
    assert meta["models"]["gguf"] == ["library/tiny:q4"]


def test_modelfile_is_pointed_at_the_bundled_gguf(bundle: Path, inputs: Path) -> None:
    model = bundle / "models" / "gguf" / "library_tiny_q4"
    assert (model / "name").read_text() == "library/tiny:q4\n"
    assert (model / "model.gguf").read_bytes() == (inputs / "tiny.gguf").read_bytes()
    assert (model / "Modelfile").read_text() == (
        "# a comment\nFROM ./model.gguf\nPARAMETER top_k 20\n"
    )


def test_wheelhouse_installs_offline_into_a_fresh_venv(bundle: Path, workdir: Path) -> None:
    """What install.sh does on the target: a venv without ensurepip, pip from its wheel."""
    venv = workdir / "venv"
    subprocess.run(
        ["python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    wheelhouse = bundle / "wheelhouse"
    pip_wheel = next(wheelhouse.glob("pip-*.whl"))
    version = json.loads((bundle / "bundle.json").read_text())["watchdog"]["version"]
    result = subprocess.run(
        [str(venv / "bin/python"), f"{pip_wheel}/pip", "install", "--no-index",
         "--find-links", str(wheelhouse), "--no-cache-dir", "--disable-pip-version-check",
         f"ollama-watchdog=={version}"],
        capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": os.environ["PATH"], "PIP_CONFIG_FILE": os.devnull},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = subprocess.run(
        [str(venv / "bin/ollama-watchdog"), "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert version in out.stdout + out.stderr


def test_verify_accepts_the_intact_bundle(bundle: Path) -> None:
    result = install_sh(bundle, "--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "bundle verified" in result.stdout


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("modify", "FAILED"),
        ("delete", "FAILED"),
        ("add", "not in SHA256SUMS"),
        ("symlink", "links or special files"),
        ("escape", "outside the bundle"),
    ],
)
def test_tampered_bundle_is_refused(
    bundle: Path, workdir: Path, damage: str, expected: str
) -> None:
    copy = fresh_copy(bundle, workdir, f"tampered-{damage}")
    wheel = next((copy / "wheelhouse").glob("requests-*.whl"))
    if damage == "modify":
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0xFF
        wheel.write_bytes(bytes(data))
    elif damage == "delete":
        wheel.unlink()
    elif damage == "add":
        # A planted wheel that pip --find-links would otherwise happily pick up.
        (copy / "wheelhouse" / "evil-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04")
    elif damage == "symlink":
        (copy / "assets" / "passwd").symlink_to("/etc/passwd")
    else:
        with (copy / "SHA256SUMS").open("a") as sums:
            digest = hashlib.sha256(b"").hexdigest()
            sums.write(f"{digest}  ../outside\n")
    for mode in ("--verify", "--dry-run"):
        result = install_sh(copy, mode)
        assert result.returncode != 0, result.stdout
        assert expected in result.stdout, result.stdout
        assert "ERROR" in result.stdout
        # Refused at the first step: nothing was planned, let alone done.
        assert "would:" not in result.stdout


def test_dry_run_plans_the_install_and_changes_nothing(bundle: Path) -> None:
    result = install_sh(bundle, "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for planned in (
        "would: install Ollama 0.32.15 into /usr/local/bin/ollama and /usr/local/lib/ollama",
        "would: install ollama-watchdog",
        "would: install /etc/systemd/system/ollama.service",
        "would: install /etc/systemd/system/ollama.service.d/tuning.conf",
        "would: create /etc/ollama-watchdog/config.toml from config.example.toml",
        "(dry run: none made)",
    ):
        assert planned in out, out
    # The file-logging drop-in is an opt-in example, never installed.
    assert "file-logging.conf" not in out


def test_bundle_ships_the_docs_and_the_alertmanager_example(bundle: Path) -> None:
    # the runbook for the unit's Documentation= and air-gapped responders
    docs = bundle / "assets" / "docs" / "operations.md"
    assert docs.read_text() == (REPO / "docs" / "operations.md").read_text()
    example = bundle / "assets" / "alertmanager" / "alertmanager.yml"
    assert example.read_text() == (REPO / "alertmanager" / "alertmanager.yml").read_text()
    unit = (bundle / "assets" / "systemd" / "ollama-watchdog.service").read_text()
    assert "Documentation=file:///usr/share/ollama-watchdog/docs/operations.md" in unit


def test_dry_run_plans_the_docs_and_the_runbook_base(bundle: Path) -> None:
    result = install_sh(bundle, "--dry-run", "--runbook-url", "https://wiki.example/ollama/")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "would: install /usr/share/ollama-watchdog/docs/" in out, out
    assert "would: install /usr/share/ollama-watchdog/alertmanager/" in out, out
    # the trailing slash goes: the anchor follows the base directly
    assert (
        "ok: runbook links in /usr/share/ollama-watchdog/prometheus/alerts.yml: "
        "https://wiki.example/ollama#<alertname>"
    ) in out, out
    default = install_sh(bundle, "--dry-run").stdout
    assert "alerts.yml: http://{{ $labels.instance }}/runbook#<alertname>" in default


def test_a_runbook_url_that_is_no_http_url_is_refused(bundle: Path) -> None:
    for bad in ("ftp://wiki.example/x", "https://wiki.example/a b", "https://x/a|b", "wiki"):
        result = install_sh(bundle, "--dry-run", "--runbook-url", bad)
        assert result.returncode == 2, (bad, result.stdout)
        assert "--runbook-url must be an http:// or https:// URL" in result.stderr
        assert "would:" not in result.stdout


def test_gguf_without_magic_is_refused_by_both_sides(
    bundle: Path, workdir: Path, inputs: Path
) -> None:
    bogus = workdir / "bogus.gguf"
    bogus.write_bytes(b"NOTGGUF" + b"\0" * 32)
    result = make_bundle(
        "--ollama-archive", inputs / "ollama-linux-amd64.tar.zst",
        "--gguf", f"bogus={bogus}", "--output", workdir / "never",
    )  # fmt: skip
    assert result.returncode != 0
    assert "is not a GGUF file" in result.stderr
    assert not (workdir / "never").exists()

    # A bundle whose GGUF was swapped and re-summed (SHA256SUMS matches): install.sh still
    # checks the magic before installing anything.
    copy = fresh_copy(bundle, workdir, "bad-gguf")
    model = copy / "models" / "gguf" / "library_tiny_q4" / "model.gguf"
    model.write_bytes(b"NOTGGUF" + b"\0" * 32)
    lines = [
        f"{hashlib.sha256((copy / path).read_bytes()).hexdigest()}  {path}"
        for path in sorted(listed_files(copy))
    ]
    (copy / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    dry = install_sh(copy, "--dry-run")
    assert dry.returncode != 0
    assert "model.gguf is not a GGUF file" in dry.stdout
    assert "would:" not in dry.stdout


def test_tgz_and_bare_binary_formats_are_detected_by_magic(
    bundle: Path, workdir: Path
) -> None:
    tgz = build_tgz(workdir / "ollama-old.bin")  # the name says nothing: magic decides
    elf = workdir / "ollama-linux-amd64"
    shutil.copy(require_tool("true", "coreutils"), elf)
    for archive, fmt, stored in (
        (tgz, "tgz", "ollama/ollama-linux-amd64.tgz"),
        (elf, "binary", "ollama/ollama-linux-amd64"),
    ):
        out = workdir / f"bundle-{fmt}"
        result = make_bundle(
            "--ollama-archive", archive, "--arch", "amd64",
            "--wheelhouse", bundle / "wheelhouse", "--output", out,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        meta = json.loads((out / "bundle.json").read_text())
        assert (meta["ollama"]["format"], meta["ollama"]["archive"]) == (fmt, stored)
        assert (out / stored).read_bytes() == archive.read_bytes()


def test_archive_without_bin_ollama_or_unknown_format_is_refused(workdir: Path) -> None:
    junk = workdir / "junk.tar.zst"
    junk.write_bytes(b"this is no archive at all\n")
    result = make_bundle("--ollama-archive", junk, "--output", workdir / "never-junk")
    assert result.returncode != 0
    assert "magic bytes unknown" in result.stderr

    zstd = require_tool("zstd")
    lib_only = workdir / "lib-only.tar.zst"
    (workdir / "lib-only" / "lib" / "ollama").mkdir(parents=True)
    (workdir / "lib-only" / "lib" / "ollama" / "libggml.so").write_bytes(b"x")
    tar = subprocess.run(
        ["tar", "-C", str(workdir / "lib-only"), "-cf", "-", "lib"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    subprocess.run([zstd, "-q", "-f", "-o", str(lib_only)], input=tar.stdout, timeout=60,
                   check=True)  # fmt: skip
    result = make_bundle("--ollama-archive", lib_only, "--output", workdir / "never-lib")
    assert result.returncode != 0
    assert "no bin/ollama entry" in result.stderr


def test_standin_archive_has_the_release_layout(inputs: Path) -> None:
    listing = subprocess.run(
        ["tar", "--zstd", "-tvf", str(inputs / "ollama-linux-amd64.tar.zst")],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    names = {line.split()[-1] for line in listing.splitlines()}
    assert {"bin/ollama", LIB_FILE} <= names
    assert all(" root/root " in line for line in listing.splitlines())
