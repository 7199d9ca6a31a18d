"""Real filesystems with a property for a test: read-only, or small. Root only (they mount).

``read_only(dir)`` bind-mounts a directory read-only over itself (every write is a real EROFS);
``small_filesystem(dir, size)`` mounts a tmpfs of that size (free space really runs out). Each
is undone on exit. Without root, or where mounting is not allowed, the test is skipped: that
is a property of the machine, not a missing tool CI could install.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _mount(*argv: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem for the test needs root and mount(8)")
    done = subprocess.run(["mount", *argv], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mount is not allowed here: {done.stderr.strip()}")


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` made read-only by a read-only bind mount over itself."""
    _mount("--bind", str(directory), str(directory))
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


@contextlib.contextmanager
def small_filesystem(directory: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` (``64m``) mounted on ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory))
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)
