"""The exporter's HTTP side: /metrics, /healthz, /ready and a landing page, optional TLS + auth.

A scrape never measures anything. Collectors publish complete metric families into a
``SnapshotBoard`` when their run finishes (a dict swapped atomically); ``/metrics`` renders the
latest snapshot. A hung Ollama or a wedged NVML call therefore cannot slow a scrape down.

``/ready`` is for load balancers (issue 17): 200 ``ready`` while the host may take new requests,
503 with one word (``down``, ``draining``, ``maintenance``, ``remediating``, ``restarting``,
``starting``) otherwise, from a readiness provider that only reads a value the daemon's main
loop keeps current. It needs no credentials even when ``/metrics`` does: a balancer's health
check carries none (HAProxy's ``option httpchk`` and most cloud balancers send no
Authorization), and the answer is one word about availability that the balancer publishes by
routing anyway — no metric, no model, no request data. TLS, when configured, still applies.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from ollama_watchdog import __version__
from ollama_watchdog.config import parse_listen

# A client that opens a connection and sends nothing must not hold a server thread for long.
_CONNECTION_TIMEOUT = 10.0

#: what /ready calls: (ready, one-word reason); must return at once and never raise
ReadinessProvider = Callable[[], tuple[bool, str]]


def _starting() -> tuple[bool, str]:
    return False, "starting"


@dataclass(frozen=True)
class CollectorResult:
    """The outcome of one finished collector run."""

    name: str
    families: tuple[Metric, ...]
    success: bool
    duration: float
    finished_at: float


class SnapshotBoard:
    """The latest result of every collector, the healing side's own included.

    Writers copy the dict, change the copy and swap the reference; readers take the reference
    once. The lock serialises writers only and is never held across I/O.
    """

    def __init__(self) -> None:
        self._results: Mapping[str, CollectorResult] = {}
        self._lock = threading.Lock()

    def publish(self, result: CollectorResult) -> None:
        with self._lock:
            new = dict(self._results)
            new[result.name] = result
            self._results = new

    def remove(self, name: str) -> None:
        with self._lock:
            self._results = {k: v for k, v in self._results.items() if k != name}

    def results(self) -> Mapping[str, CollectorResult]:
        return self._results


class SnapshotCollector:
    """A prometheus_client collector that renders a SnapshotBoard."""

    def __init__(self, board: SnapshotBoard) -> None:
        self._board = board

    def describe(self) -> list[Metric]:
        return []  # registering must not collect

    def collect(self) -> Iterator[Metric]:
        results = self._board.results()
        merged: dict[str, Metric] = {}

        def add(fam: Metric) -> None:
            # Two sources may feed one family (api and deep probe both export
            # ollama_probe_success{probe}); the text format allows each family once.
            have = merged.get(fam.name)
            if have is None:
                copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                copy.samples = list(fam.samples)
                merged[fam.name] = copy
            else:
                have.samples.extend(fam.samples)

        build = GaugeMetricFamily(
            "ollama_watchdog_build_info", "ollama-watchdog's version.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        add(build)
        success = GaugeMetricFamily(
            "ollama_watchdog_collector_success",
            "1 if the collector's last run succeeded.",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            "ollama_watchdog_collector_duration_seconds",
            "How long the collector's last run took.",
            labels=["collector"],
        )
        for name in sorted(results):
            r = results[name]
            success.add_metric([name], 1.0 if r.success else 0.0)
            duration.add_metric([name], r.duration)
        add(success)
        add(duration)
        for name in sorted(results):
            for fam in results[name].families:
                add(fam)
        yield from merged.values()


class WebAuth(Protocol):
    """What the exporter needs from a loaded web config (``webconfig.WebConfig``)."""

    def ssl_context(self) -> ssl.SSLContext | None: ...

    def check_basic_auth(self, header_value: str | None) -> bool: ...

    @property
    def auth_required(self) -> bool: ...


_LANDING = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>ollama-watchdog</title></head>
<body>
<h1>ollama-watchdog {version}</h1>
<p>Prometheus exporter and restart watchdog for Ollama.</p>
<ul>
<li><a href="{prefix}metrics">Metrics</a></li>
<li><a href="{prefix}healthz">Health</a></li>
<li><a href="{prefix}ready">Readiness</a> (for load balancers)</li>
</ul>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: _ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ollama-watchdog/" + __version__
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # access logs would flood journald at every scrape; errors are counted, not logged
        return

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(_CONNECTION_TIMEOUT)
        # headers and body leave in two writes; with Nagle on, a keep-alive client's delayed
        # ACK holds the second one back ~40 ms on every scrape
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(
        self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorised(self) -> bool:
        web = self.server.web
        if web is None or not web.auth_required:
            return True
        if web.check_basic_auth(self.headers.get("Authorization")):
            return True
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized\n",
            "text/plain; charset=utf-8",
            {"WWW-Authenticate": 'Basic realm="ollama-watchdog", charset="UTF-8"'},
        )
        return False

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ready":
            self._ready()  # before the auth check: balancers send no credentials
            return
        if not self._authorised():
            return
        if path == "/metrics":
            self._metrics()
        elif path == "/healthz":
            ok, text = self.server.health()
            self._send(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                (text + "\n").encode(),
                "text/plain; charset=utf-8",
            )
        elif path == "/":
            body = _LANDING.format(version=__version__, prefix="/").encode()
            self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"404 page not found\n", "text/plain; charset=utf-8")

    def _ready(self) -> None:
        try:
            ready, reason = self.server.readiness()
        except Exception:  # a provider bug must not read as "ready"
            ready, reason = False, "down"
        self._send(
            HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE,
            (reason + "\n").encode(),
            "text/plain; charset=utf-8",
            {"Cache-Control": "no-store"},
        )

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        headers: dict[str, str] = {}
        if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        self._send(HTTPStatus.OK, body, content_type, headers)


class _ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        registry: CollectorRegistry,
        health: Callable[[], tuple[bool, str]],
        web: WebAuth | None,
        readiness: ReadinessProvider,
    ) -> None:
        host = address[0]
        if ":" in host or host == "":
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.health = health
        self.readiness = readiness
        self.web = web
        self._ssl = web.ssl_context() if web is not None else None
        super().__init__((host or "::", address[1]), _Handler, bind_and_activate=False)
        if host == "" and hasattr(socket, "IPV6_V6ONLY"):
            # ":9778" means every address, IPv4 included
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self._ssl is not None:
            # the handshake runs in the handler thread (on first read), not in the accept loop
            sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up or fails the TLS handshake is not the exporter's problem
        return


class Exporter:
    """Binds at construction (so a busy port fails before READY=1), serves on its own thread.

    ``readiness`` answers ``/ready``; without one the exporter says ``starting`` (not ready).
    """

    def __init__(
        self,
        listen: str,
        board: SnapshotBoard,
        health: Callable[[], tuple[bool, str]],
        web: WebAuth | None = None,
        readiness: ReadinessProvider = _starting,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(board))
        host, port = parse_listen(listen)
        self._server = _ExporterHTTPServer((host, port), self.registry, health, web, readiness)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        return "https" if self._server._ssl is not None else "http"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="exporter",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        deadline = time.monotonic() + timeout
        if self._thread is not None:  # shutdown() waits for a serve_forever that never ran
            self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))


__all__ = [
    "CollectorResult",
    "Exporter",
    "ReadinessProvider",
    "SnapshotBoard",
    "SnapshotCollector",
    "WebAuth",
]
