"""A hostile HTTP server: answers a careful client must bound (trickled, endless, huge, odd).

The simulator speaks Ollama's protocol faithfully; this one speaks just enough HTTP/1.1 to send
what a broken or malicious server could: a status line trickled a byte at a time, a chunked body
that never ends, a huge body, JSON with values no real Ollama sends. Each path maps to a
:class:`Answer`; a connection is served on its own thread and closed after one answer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Answer:
    """What to send: the status line and headers, then the body, each in pieces."""

    body: Callable[[], Iterable[bytes]]
    status: str = "200 OK"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json; charset=utf-8"),)
    #: seconds between two bytes of the head (status line and headers); 0: sent at once
    trickle_head: float = 0.0
    #: True: ``Transfer-Encoding: chunked``; False: ``Content-Length`` from the whole body
    chunked: bool = False
    #: ``Content-Length`` to declare, the body then streamed as it comes (not joined first)
    length: int | None = None


def json_answer(raw: bytes) -> Answer:
    return Answer(body=lambda: [raw])


def trickle(data: bytes, every: float) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]
        time.sleep(every)


def endless(piece: bytes) -> Iterator[bytes]:
    while True:
        yield piece


def sized(total: int, piece: bytes) -> Iterator[bytes]:
    """``total`` bytes made of ``piece`` repeated (the last one cut)."""
    sent = 0
    while sent < total:
        chunk = piece[: total - sent]
        sent += len(chunk)
        yield chunk


@dataclass
class HostileServer:
    """``with HostileServer({"/api/version": answer}) as srv: srv.url``."""

    answers: dict[str, Answer]
    port: int = 0
    _sock: socket.socket = field(init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self.port = self._sock.getsockname()[1]
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True, name="hostile").start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(30)
                request = b""
                while b"\r\n\r\n" not in request:
                    data = conn.recv(65536)
                    if not data:
                        return
                    request += data
                path = request.split(b" ", 2)[1].decode().split("?", 1)[0]
                answer = self.answers.get(path)
                if answer is None:
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    return
                self._send(conn, answer)
        except OSError:
            return  # the client hung up: that is what a bounded client does

    def _send(self, conn: socket.socket, answer: Answer) -> None:
        head = f"HTTP/1.1 {answer.status}\r\n"
        for k, v in answer.headers:
            head += f"{k}: {v}\r\n"
        pieces: Iterable[bytes] = answer.body()
        if answer.chunked:
            head += "Transfer-Encoding: chunked\r\n"
        elif answer.length is not None:
            head += f"Content-Length: {answer.length}\r\n"
        else:
            whole = b"".join(pieces)
            pieces = [whole]
            head += f"Content-Length: {len(whole)}\r\n"
        head += "Connection: close\r\n\r\n"
        if answer.trickle_head > 0:
            for b in trickle(head.encode(), answer.trickle_head):
                if self._stop.is_set():
                    return
                conn.sendall(b)
        else:
            conn.sendall(head.encode())
        for piece in pieces:
            if self._stop.is_set():
                return
            if answer.chunked:
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                conn.sendall(piece)
        if answer.chunked:
            conn.sendall(b"0\r\n\r\n")


__all__ = ["Answer", "HostileServer", "endless", "json_answer", "sized", "trickle"]
