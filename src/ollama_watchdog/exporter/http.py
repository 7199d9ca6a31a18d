"""The exporter's HTTP side: /metrics, /healthz, /ready, /runbook and a landing page, with
optional TLS + basic auth.

Every path but /ready (below) is behind the same gate: with basic auth configured, /runbook
needs it too. One rule for the whole listener is simpler to audit than exceptions, and a
runbook served without auth from a host that requires it would be the one path a scanner could
reach. Responders who do
not hold the exporter's credentials get their links from a base they can open instead
(install.sh --runbook-url; see docs/operations.md, "Runbook links").

A scrape never measures anything. Collectors publish complete metric families into a
``SnapshotBoard`` when their run finishes (a dict swapped atomically); ``/metrics`` renders the
latest snapshot. A hung Ollama or a wedged NVML call therefore cannot slow a scrape down.

A client cannot hold the daemon's threads or descriptors: at most ``max_connections`` are
served at once (one more is answered ``503`` and closed without a thread), and each request,
from the wait for its first byte to the last byte of the answer, has one deadline
(``request_timeout``). Every socket read and write waits only for what is left of it, so a client
trickling one byte every few seconds is cut off at the deadline, not kept alive by each byte.

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
import io
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
from prometheus_client.samples import Sample

from ollama_watchdog import __version__
from ollama_watchdog.config import parse_listen
from ollama_watchdog.exporter import runbook
from ollama_watchdog.oneline import valid_text

#: a label value longer than this (from any collector) is cut
_LABEL_LIMIT = 1024
#: defaults of ``[exporter] max_connections`` and ``request_timeout``
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_REQUEST_TIMEOUT = 10.0
#: sent, without waiting, to a connection over the cap
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 28\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
    b"too many connections, retry\n"
)

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
            samples = _renderable(fam.samples)
            have = merged.get(fam.name)
            if have is None:
                copy = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                copy.samples = samples
                merged[fam.name] = copy
            else:
                have.samples.extend(samples)

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


def _renderable(samples: list[Sample]) -> list[Sample]:
    """Samples that render whatever a collector let through: label values as valid UTF-8 (a
    lone surrogate would make every scrape an empty reply), values that convert to a float
    (10**400 would not); one sample per label set. The usual case costs one pass and no copy."""
    out: list[Sample] = []
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] | None = None
    for sample in samples:
        labels = sample.labels
        if not all(v.isascii() for v in labels.values()):
            labels = {k: valid_text(v, _LABEL_LIMIT) for k, v in labels.items()}
            seen = set() if seen is None else seen
        try:
            float(sample.value)
        except (OverflowError, TypeError, ValueError):
            continue
        if labels is not sample.labels:
            sample = sample._replace(labels=labels)
        if seen is not None:
            key = (sample.name, tuple(sorted(labels.items())))
            if key in seen:
                continue
            seen.add(key)
        out.append(sample)
    return out


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
<li><a href="{prefix}runbook">Runbook</a> (operations guide and alerts)</li>
<li><a href="{prefix}ready">Readiness</a> (for load balancers)</li>
</ul>
</body></html>
"""


class _Deadline:
    """The deadline of the request being served on one connection (monotonic seconds)."""

    def __init__(self, sock: socket.socket, budget: float) -> None:
        self._sock = sock
        self.budget = budget
        self.at = time.monotonic() + budget

    def restart(self) -> None:
        self.at = time.monotonic() + self.budget

    def arm(self) -> None:
        """Let the next socket operation wait only for what is left of the deadline."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"request not done within {self.budget:g}s")
        self._sock.settimeout(left)


class _DeadlineReader(io.RawIOBase):
    """The socket's read side; each ``recv`` waits only for what is left of the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._deadline.arm()
        return self._sock.recv_into(buffer)


class _DeadlineWriter(io.BufferedIOBase):
    """The socket's write side; ``sendall`` as a whole must finish by the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._deadline.arm()
        # since Python 3.5 the timeout bounds the whole sendall, not each chunk of it
        self._sock.sendall(data)
        with memoryview(data) as view:
            return view.nbytes


class _Handler(BaseHTTPRequestHandler):
    server: _ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "ollama-watchdog/" + __version__
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        # access logs would flood journald at every scrape; errors are counted, not logged
        return

    def setup(self) -> None:
        # StreamRequestHandler.setup, with both sides bound to the request's deadline
        self.connection = self.request
        self._deadline = _Deadline(self.connection, self.server.request_timeout)
        # headers and body leave in two writes; with Nagle on, a keep-alive client's delayed
        # ACK holds the second one back ~40 ms on every scrape
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self._deadline))
        self.wfile = _DeadlineWriter(self.connection, self._deadline)

    def handle_one_request(self) -> None:
        # the deadline runs from the wait for the request's first byte (an idle keep-alive
        # connection is bounded too) to the last byte of the answer
        self._deadline.restart()
        super().handle_one_request()

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
        elif path == "/runbook":
            page = runbook.page()
            if page is None:
                self._send(
                    HTTPStatus.NOT_FOUND,
                    b"runbook not installed: this ollama-watchdog package has no "
                    b"ollama_watchdog/docs/operations.md; reinstall it from a wheel\n",
                    "text/plain; charset=utf-8",
                )
            else:
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
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
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        host = address[0]
        if ":" in host or host == "":
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.health = health
        self.readiness = readiness
        self.web = web
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._active = 0
        self._active_lock = threading.Lock()
        #: connections refused over the cap, since the start
        self.rejected = 0
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

    def process_request(self, request: Any, client_address: Any) -> None:
        # runs on the accept thread: a connection over the cap gets no thread at all
        with self._active_lock:
            admitted = self._active < self.max_connections
            if admitted:
                self._active += 1
            else:
                self.rejected += 1
        if not admitted:
            self._reject(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._active_lock:
            self._active -= 1

    def _reject(self, request: Any) -> None:
        if not isinstance(request, ssl.SSLSocket):
            # a plain connection hears why, if its buffer takes the reply now; TLS would
            # need a handshake, which is the client's time, not ours: that one is just closed
            try:
                request.setblocking(False)
                request.send(_BUSY_REPLY)
            except OSError:
                pass
        self.shutdown_request(request)

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
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        readiness: ReadinessProvider = _starting,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(board))
        host, port = parse_listen(listen)
        self._server = _ExporterHTTPServer(
            (host, port), self.registry, health, web, readiness, max_connections, request_timeout
        )
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
