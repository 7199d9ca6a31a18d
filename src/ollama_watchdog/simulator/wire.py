"""HTTP/1.1 as Go's net/http speaks it, and what an endpoint gets to answer one request.

:class:`GoHandler` is the plumbing under the API handler: TCP_NODELAY, a ``Date`` but no
``Server`` header, Content-Length for plain answers, chunked NDJSON for streams, request bodies
read piece by piece (Content-Length or chunked). It knows nothing of Ollama's routes.
:class:`Exchange` is one request as the router hands it to an endpoint function.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler

from ollama_watchdog.simulator.instance import Simulator
from ollama_watchdog.simulator.protocol import ApiError, go_json

_UPLOAD_CHUNK = 1 << 20
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class GoHandler(BaseHTTPRequestHandler):
    """One connection, answered the way Go's net/http answers."""

    protocol_version = "HTTP/1.1"

    #: status of the answer begun on this request (0: none yet)
    answer_status: int = 0
    #: the request body was read to its end (a streamed upload sets it)
    body_done: bool = False

    def setup(self) -> None:
        super().setup()
        # Go's net/http sets TCP_NODELAY on every connection; without it a keep-alive client's
        # delayed ACK adds ~40 ms to each answer and probe durations would lie.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Go's net/http sends no Server header.
        self.send_response_only(code, message)
        self.send_header("Date", formatdate(usegmt=True))
        self.answer_status = code

    # -- request body ------------------------------------------------------------------------

    def body_chunks(self, chunk_size: int = _UPLOAD_CHUNK) -> Iterator[bytes]:
        """The request body piece by piece (Content-Length or chunked), never all at once."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                while size > 0:
                    data = self.rfile.read(min(size, chunk_size))
                    if not data:
                        raise ConnectionResetError("request body ended early")
                    size -= len(data)
                    yield data
                self.rfile.readline()
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, chunk_size))
            if not data:
                raise ConnectionResetError("request body ended early")
            left -= len(data)
            yield data

    def read_body(self) -> bytes:
        return b"".join(self.body_chunks())

    def consumed_body(self) -> Iterator[bytes]:
        """:meth:`body_chunks`, marking :attr:`body_done` once the last one is taken."""
        yield from self.body_chunks()
        self.body_done = True

    # -- answers -----------------------------------------------------------------------------

    def send(self, status: int, body: bytes, content_type: str | None,
             headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def send_json(self, status: int, value: object) -> None:
        self.send(status, go_json(value), JSON_CONTENT_TYPE)

    def send_error_json(self, error: ApiError) -> None:
        self.send_json(error.status, {"error": error.message})

    def stream_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def stream_write(self, value: object) -> None:
        data = go_json(value) + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def stream_end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def answer_single(self, value: dict[str, object], stream: bool) -> None:
        """One JSON value: a one-line NDJSON stream, or a plain answer when not streaming."""
        if stream:
            self.stream_start()
            self.stream_write(value)
            self.stream_end()
        else:
            self.send_json(200, value)


@dataclass(frozen=True)
class Exchange:
    """One request, routed: the connection to answer on, the simulator, the decoded path."""

    http: GoHandler
    sim: Simulator
    path: str  # unquoted, without the query string
    param: str  # the ``:param`` segment of a parameterised route ("" for a fixed one)
    body: bytes  # b"" for a streamed upload, whose endpoint reads ``http.consumed_body()``


#: An endpoint: answers the exchange, or raises :class:`ApiError` before answering.
Endpoint = Callable[[Exchange], None]
