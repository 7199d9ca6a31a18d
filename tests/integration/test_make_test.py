"""``make test`` sets itself up: the tools first (the script .ci/run uses), then the venv and the
tests; as a user who cannot install, it names the packages and goes on; under CI it stops.

The missing-tools cases run the real script against a real, empty dpkg database
(``DPKG_ADMINDIR``, which dpkg-query honours), as an unprivileged user: nothing is installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.tools import missing, require_tool

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install-test-tools.sh"


def test_make_test_sets_up_the_tools_before_the_venv_and_the_tests(tmp_path: Path) -> None:
    make = require_tool("make")
    # a venv that does not exist yet, so its creation shows in the dry run
    proc = subprocess.run(
        [make, "-n", "test", f"VENV={tmp_path / 'venv'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    order = [
        "scripts/install-test-tools.sh --auto",
        f"python3 -m venv {tmp_path / 'venv'}",
        f"{tmp_path / 'venv'}/bin/ruff check src tests benchmarks",
        f"{tmp_path / 'venv'}/bin/mypy --strict src",
        f'{tmp_path / "venv"}/bin/python -m pytest -m "not gpu"',
    ]
    at = [lines.index(line) for line in order]
    assert at == sorted(at), proc.stdout


def test_ci_runs_the_same_script_then_make_test() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert text.index("scripts/install-test-tools.sh") < text.index("make test")


def _as_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    return [require_tool("setpriv", "util-linux"), "--reuid=65534", "--regid=65534",
            "--clear-groups"]  # fmt: skip


def _auto_without_packages(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    require_tool("dpkg-query", "dpkg")
    admin = tmp_path / "dpkg"
    admin.mkdir()
    (admin / "status").write_text("")  # a dpkg database where nothing is installed
    tmp_path.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "DPKG_ADMINDIR": str(admin),
        "LLAMA_SERVER": "/bin/true",  # not this test's business
    }
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [*_as_user(), "bash", str(SCRIPT), "--auto"],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )  # fmt: skip


def test_a_user_who_cannot_install_is_told_which_packages_and_the_tests_go_on(
    tmp_path: Path,
) -> None:
    proc = _auto_without_packages(tmp_path, ci=False)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    missing = (
        "prometheus prometheus-alertmanager logrotate nginx-light libnginx-mod-http-js haproxy"
    )
    assert f"install-test-tools: missing Debian packages: {missing}" in err
    assert f"sudo apt-get install -y --no-install-recommends {missing}" in err
    assert f"sudo {SCRIPT}" in err
    assert "running the tests anyway: each test that needs a missing tool is skipped" in err
    assert proc.stdout == ""


def test_under_ci_a_missing_tool_stops_make_test(tmp_path: Path) -> None:
    proc = _auto_without_packages(tmp_path, ci=True)
    assert proc.returncode == 1
    assert "CI=true: every tool must be there" in proc.stderr


def test_with_every_tool_installed_it_is_a_silent_no_op() -> None:
    check = subprocess.run(
        ["bash", str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    if check.returncode != 0:
        missing("not every test tool is installed here: " + " ".join(check.stderr.split()))
    # silent: it neither installs ("installing ...") nor builds ("building llama-server")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--auto"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == ""


def test_unknown_argument_is_refused() -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "unknown argument: --bogus" in proc.stderr
