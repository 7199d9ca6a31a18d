"""The endpoints about the server itself: ``/``, ``/api/version``, ``/api/status``, and the
answer for a route Ollama has that the simulator does not implement.
"""

from __future__ import annotations

from typing import NoReturn

from ollama_watchdog.simulator.protocol import ApiError
from ollama_watchdog.simulator.wire import Exchange


def root(ex: Exchange) -> None:
    """``GET /``: the text every Ollama answers, the classic liveness check."""
    ex.http.send(200, b"Ollama is running", "text/plain; charset=utf-8")


def version(ex: Exchange) -> None:
    """``GET /api/version``."""
    ex.http.send_json(200, {"version": ex.sim.settings.version})


def status(ex: Exchange) -> None:
    """``GET /api/status``: from 0.16.2 on; older releases the simulator plays lack it."""
    if ex.sim.settings.version_tuple < (0, 16, 2):
        not_implemented(ex)
    ex.http.send_json(200, {"cloud": {"disabled": False, "source": "none"}})


def not_implemented(ex: Exchange) -> NoReturn:
    """A route of ``ollama.routes.ROUTES`` the simulator does not answer: 501."""
    raise ApiError(501, f"{ex.path} is not implemented by the ollama-watchdog simulator")
