"""The way in: gin's middleware around every request, and the route table (FACTS.md §1.1).

The listener (:class:`ApiServer`) hands each connection to :class:`ApiHandler`, which does
what Ollama's gin engine does before and after a handler: one ``[GIN]`` line per request when
its answer is finished, recovery (a 500 and the panic on stderr), RedirectTrailingSlash, the
text 404/405 bodies, CORS preflight, the allowed-hosts check, and the faults that act before
any handler (``hang``, ``slow``, ``error500``, ``malformed``, ``busy``).

The routes are :data:`ollama_watchdog.ollama.routes.ROUTES`, the same table the log parser
labels requests with: :data:`ENDPOINTS` maps a template of it to the function that answers
it, and every other route of the table answers 501. A template in :data:`ENDPOINTS` that is
not in ``ROUTES`` fails at import.
"""

from __future__ import annotations

import ipaddress
import socket
import time
import traceback
from datetime import datetime
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from ollama_watchdog.ollama.routes import ROUTES, Route
from ollama_watchdog.simulator import about, inference, models
from ollama_watchdog.simulator.instance import Simulator
from ollama_watchdog.simulator.protocol import MSG_BUSY, SCHEDULED_ROUTES, ApiError
from ollama_watchdog.simulator.scheduler import ERA_LLAMA_SERVER
from ollama_watchdog.simulator.wire import JSON_CONTENT_TYPE, Endpoint, Exchange, GoHandler

_BLOBS_ROUTE = "/api/blobs/:digest"

#: route template -> endpoint; a route of ROUTES missing here is answered 501
ENDPOINTS: dict[str, Endpoint] = {
    "/": about.root,
    "/api/version": about.version,
    "/api/status": about.status,
    "/api/tags": models.tags,
    "/api/ps": models.ps,
    "/api/show": models.show,
    "/api/delete": models.delete,
    "/api/pull": models.pull,
    "/api/create": models.create,
    _BLOBS_ROUTE: models.blob,
    "/v1/models": models.openai_models,
    "/api/generate": inference.generate,
    "/api/chat": inference.chat,
    "/api/embed": inference.embed,
    "/api/embeddings": inference.embeddings,
}

_BY_TEMPLATE: dict[str, Route] = {route.template: route for route in ROUTES}
_stray = (set(ENDPOINTS) | SCHEDULED_ROUTES) - set(_BY_TEMPLATE)
if _stray:
    raise RuntimeError(f"simulator routes not in ollama.routes.ROUTES: {sorted(_stray)}")

#: the route table the simulator serves: every route of ROUTES, each with its endpoint
DISPATCH: dict[str, Endpoint] = {
    route.template: ENDPOINTS.get(route.template, about.not_implemented) for route in ROUTES
}

_FIXED: dict[str, Route] = {r.template: r for r in ROUTES if ":" not in r.template}
_PARAMETERISED: tuple[tuple[str, Route], ...] = tuple(
    (r.template.partition(":")[0], r) for r in ROUTES if ":" in r.template
)
_BLOBS_PREFIX = _BLOBS_ROUTE.partition(":")[0]
_MALFORMED_BODY = b"<!DOCTYPE html><html><body>Ollama is running</body></html>"


def match_route(path: str) -> tuple[Route, str] | None:
    """The route a decoded request path hits and its ``:param`` ("" for a fixed route), as
    gin's tree matches it; None for a 404.

    Not ``route_label``: that one cuts a logged path at ``?``, while here the query is gone
    already and a ``?`` (a decoded ``%3F``) is part of the path.
    """
    route = _FIXED.get(path)
    if route is not None:
        return route, ""
    for prefix, route in _PARAMETERISED:
        rest = path[len(prefix):]
        # gin's :param is exactly one non-empty segment
        if path.startswith(prefix) and rest and "/" not in rest:
            return route, rest
    return None


def _client_ip(handler: GoHandler) -> str:
    """gin's ClientIP with every proxy trusted: X-Forwarded-For, X-Real-IP, then the peer."""
    for header in ("X-Forwarded-For", "X-Real-IP"):
        value = handler.headers.get(header)
        if value:
            first = value.split(",")[0].strip()
            try:
                return str(ipaddress.ip_address(first))
            except ValueError:
                continue
    return str(handler.client_address[0])


def _host_allowed(host_header: str | None) -> bool:
    """Ollama's allowedHostsMiddleware, applied only when bound to loopback."""
    if not host_header:
        return True
    host = host_header
    if host.startswith("["):
        host = host[1:].split("]")[0]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower()
        return (
            name in ("localhost", socket.gethostname().lower())
            or name.endswith((".localhost", ".local", ".internal"))
        )
    return addr.is_loopback or addr.is_private or addr.is_unspecified


def _error500_text(sim: Simulator, path: str) -> str:
    if path in SCHEDULED_ROUTES:
        what = "llama-server" if sim.settings.era == ERA_LLAMA_SERVER else "llama runner"
        return f"{what} process has terminated: exit status 2"
    return "model list cache unavailable"


class ApiHandler(GoHandler):
    """One connection to the simulated Ollama API."""

    server: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's own access log: stdout carries gin lines only."""

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_DELETE = do_PUT = do_PATCH = do_OPTIONS = do_GET

    def _handle(self) -> None:
        sim = self.server.sim
        started = time.monotonic()
        self.answer_status = 0
        self.body_done = False
        sim.faults.wait_while_hung(sim.stopping)
        if sim.stopping.is_set():
            self.close_connection = True
            return
        fault = sim.faults.current
        if fault.name == "slow" and sim.stopping.wait(fault.delay):
            self.close_connection = True
            return
        raw_path, _, query = self.path.partition("?")
        path = unquote(raw_path)
        logged_path = path + (f"?{query}" if query else "")
        # A blob upload's body is streamed to disk by its handler, never held in memory.
        streamed = self.command == "POST" and path.startswith(_BLOBS_PREFIX)
        try:
            body = b"" if streamed else self.read_body()
            self._route(sim, path, body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if not self.answer_status:
                return
        except Exception:  # gin's recovery middleware: a 500 and the panic on stderr
            sim.sink.raw("[Recovery] simulator panic recovered:\n" + traceback.format_exc())
            if not self.answer_status:
                try:
                    self.send_json(500, {"error": "internal simulator error"})
                except OSError:
                    self.close_connection = True
        if streamed and not self.body_done:
            # The body was not (fully) read: the connection cannot carry another request.
            self.close_connection = True
        sim.sink.gin(datetime.now(), self.answer_status or 500, time.monotonic() - started,
                     _client_ip(self), self.command, logged_path)

    def _route(self, sim: Simulator, path: str, body: bytes) -> None:
        matched = match_route(path)
        if matched is None and path.endswith("/") and match_route(path.rstrip("/") or "/"):
            # gin's RedirectTrailingSlash: 301 for GET, 307 otherwise.
            target = path.rstrip("/") or "/"
            code = 301 if self.command == "GET" else 307
            page = f'<a href="{target}">Moved Permanently</a>.\n\n'.encode()
            self.send(code, page if code == 301 else b"", "text/html; charset=utf-8",
                      (("Location", target),))
            return
        if self.command == "OPTIONS" and matched is not None:
            self.send(204, b"", None)  # CORS preflight from an allowed origin
            return
        if matched is None:
            self.send(404, b"404 page not found", "text/plain")
            return
        route, param = matched
        if self.command not in route.methods:
            self.send(405, b"405 method not allowed", "text/plain")
            return
        if sim.settings.loopback_only and not _host_allowed(self.headers.get("Host")):
            self.send(403, b"", None)
            return
        fault = sim.faults.current
        if path.startswith("/api/"):
            if fault.name == "error500":
                self.send_error_json(ApiError(500, _error500_text(sim, path)))
                return
            if fault.name == "malformed":
                self.send(200, _MALFORMED_BODY, JSON_CONTENT_TYPE)
                return
        if fault.name == "busy" and path in SCHEDULED_ROUTES:
            self.send_error_json(ApiError(503, MSG_BUSY))
            return
        try:
            DISPATCH[route.template](Exchange(self, sim, path, param, body))
        except ApiError as error:
            self.send_error_json(error)


class ApiServer(ThreadingHTTPServer):
    """The API listener; request threads are daemons so a hung request never blocks exit."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sim: Simulator, family: int) -> None:
        self.address_family = family
        self.sim = sim
        super().__init__(address, ApiHandler)
