"""Fixtures shared by every test layer."""

from __future__ import annotations

import pytest
from support.tools import free_port

# the simulator fixtures (`simulator`, `simulator_factory`): the one test double of Ollama
pytest_plugins = ["support.sim"]


@pytest.fixture
def port() -> int:
    return free_port()
