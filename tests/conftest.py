"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest
from support.tools import free_port

# the simulator fixtures (`simulator`, `simulator_factory`): the one test double of Ollama
pytest_plugins = ["support.sim"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/fixtures/e2e-output.txt from the live exporter",
    )


@pytest.fixture
def port() -> int:
    return free_port()
