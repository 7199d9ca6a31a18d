"""Finding a real llama.cpp ``llama-server`` for tests (FACTS.md §8).

``$LLAMA_SERVER`` names one explicitly; otherwise the binary cached by
``scripts/build-llama-server.sh`` is used (its ``--print-path`` says where, building nothing).
A test that needs it calls ``require_llama_server``: locally a missing binary skips the test
with the command that builds it; under ``CI=true`` it fails, because
``scripts/install-test-tools.sh`` builds it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.tools import missing

#: the variable that names a llama-server binary, which then wins over the build cache
ENV_VAR = "LLAMA_SERVER"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llama-server.sh"
BUILD_COMMAND = "scripts/build-llama-server.sh"
#: --print-path only looks in the cache; anything slower than this is a broken script
_PRINT_PATH_TIMEOUT = 30.0


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def llama_server_path() -> Path | None:
    """The llama-server to use: ``$LLAMA_SERVER`` if set, else the build cache's; None if none.

    A ``$LLAMA_SERVER`` that is not an executable file gives None rather than the cached one:
    a path someone named is never silently replaced by another.
    """
    named = os.environ.get(ENV_VAR, "")
    if named:
        path = Path(named)
        return path if _executable(path) else None
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-path"],
            capture_output=True,
            text=True,
            timeout=_PRINT_PATH_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return None
    path = Path(lines[-1])
    return path if _executable(path) else None


def require_llama_server() -> Path:
    """The llama-server path, or skip (locally) / fail (under CI=true) with how to get one."""
    path = llama_server_path()
    if path is None:
        named = os.environ.get(ENV_VAR, "")
        if named:
            missing(f"{ENV_VAR}={named} is not an executable file")
        else:
            missing(f"llama-server not built (run {BUILD_COMMAND}, or set {ENV_VAR})")
        raise AssertionError("unreachable")
    return path
