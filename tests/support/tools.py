"""Finding real tools for tests.

A test that needs a real program (promtool, prometheus, logrotate, nginx, systemd-nspawn) calls
``require_tool``. Locally a missing tool skips the test with a reason that names the package to
install; under ``CI=true`` the same situation fails the test, because CI installs the tools.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"]
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip locally, fail under CI=true: CI must have every real tool."""
    if in_ci():
        pytest.fail(f"CI=true but {reason}; .ci/run must install it", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str | None = None) -> str:
    """Return the absolute path of a real tool, or skip/fail with a clear reason."""
    path = shutil.which(name, path=_SEARCH_PATH)
    if path is None:
        missing(f"{name} not found (apt-get install {package or name})")
        raise AssertionError("unreachable")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
