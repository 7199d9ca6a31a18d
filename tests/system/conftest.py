"""Fixtures for the system tests: a booted bookworm systemd with our stack, one per module.

Needs root, systemd-nspawn (systemd-container), debootstrap, nsenter and journalctl; locally a
missing one skips with the reason, under CI=true it fails. A failed test gets the container's
journal (the last lines) as a section of its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nspawn import Container, build_base_rootfs, build_wheelhouse, project_root
from stack import deploy
from support.tools import require_root, require_tool

JOURNAL_LINES_ON_FAILURE = 300


@pytest.fixture(scope="session")
def nspawn_host() -> None:
    """Everything the host needs to boot containers."""
    require_root("booting systemd in systemd-nspawn")
    require_tool("systemd-nspawn", "systemd-container")
    require_tool("debootstrap")
    require_tool("nsenter", "util-linux")
    require_tool("journalctl", "systemd")


@pytest.fixture(scope="session")
def base_rootfs(nspawn_host: None) -> Path:
    """The cached debootstrap tree (built once, about a minute; never booted itself)."""
    return build_base_rootfs()


@pytest.fixture(scope="session")
def wheelhouse(nspawn_host: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our wheel from the working tree as it is now, plus its dependencies."""
    return build_wheelhouse(project_root(), tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def container(
    base_rootfs: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    """A booted container with the stack installed and ollama.service enabled.

    No network at all (--private-network): nothing here may need one. The watchdog unit is
    installed but not started; tests start it.
    """
    c = Container.from_base(base_rootfs, tmp_path_factory.mktemp("nspawn"), private_network=True)
    try:
        deploy(c, wheelhouse)
        c.boot()
        yield c
    finally:
        c.destroy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    c = getattr(item, "funcargs", {}).get("container")
    if isinstance(c, Container):
        try:
            lines = c.journal().splitlines()[-JOURNAL_LINES_ON_FAILURE:]
            report.sections.append(("container journal (last lines)", "\n".join(lines)))
        except Exception as exc:  # the report must not hide the real failure
            report.sections.append(("container journal", f"could not read it: {exc!r}"))
