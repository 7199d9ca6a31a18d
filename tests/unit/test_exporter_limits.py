"""The real exporter under slow and numerous clients (issue 18, item 1).

A local user must not be able to hold the daemon's threads and descriptors: trickling one byte at
a time keeps a connection only until the request's deadline, and connections over the cap are
answered 503 and closed at once, so the probes never run out of descriptors.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import psutil
import pytest
import requests
from support.tools import free_port
from support.wait import wait_until

from ollama_watchdog.exporter.http import Exporter, SnapshotBoard


def serve(request_timeout: float) -> Iterator[Exporter]:
    ex = Exporter(
        f"127.0.0.1:{free_port()}",
        SnapshotBoard(),
        lambda: (True, "ok"),
        max_connections=4,
        request_timeout=request_timeout,
    )
    ex.start()
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    yield from serve(1.0)


@pytest.fixture
def patient_exporter() -> Iterator[Exporter]:
    # the held connections must outlive the test's own steps
    yield from serve(60.0)


def served(port: int) -> int:
    """Descriptors of this process on the server side of ``port``: the exporter's accepted
    connections (the whole fd table also moves with other tests' sockets being collected)."""
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status != psutil.CONN_LISTEN
    )


def closed_by_server(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def start_request(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    return sock


def test_a_client_trickling_bytes_is_cut_off_at_the_request_deadline(exporter: Exporter) -> None:
    sock = start_request(exporter.port)

    def trickle_until_closed() -> bool:
        if closed_by_server(sock):
            return True
        try:
            sock.send(b"X")  # one byte of a header line, every 0.3 s: each read gets data
        except (BrokenPipeError, ConnectionResetError):
            return True
        return False

    try:
        # a per-read timeout (the old 10 s) never fires; the 1 s request deadline does
        wait_until(trickle_until_closed, "the exporter closing a trickling client", 20, 0.3)
    finally:
        sock.close()


def test_an_idle_keep_alive_connection_is_closed_at_the_deadline(exporter: Exporter) -> None:
    sock = socket.create_connection(("127.0.0.1", exporter.port), timeout=5)
    try:
        wait_until(lambda: closed_by_server(sock), "an idle connection closed", 20, 0.1)
    finally:
        sock.close()


def test_connections_over_the_cap_get_503_and_hold_no_descriptor(
    patient_exporter: Exporter,
) -> None:
    exporter = patient_exporter
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    held = [start_request(exporter.port) for _ in range(4)]
    # the four slow ones are served (each holds a server-side descriptor)...
    wait_until(lambda: served(exporter.port) == 4, "four connections accepted")
    extra = [socket.create_connection(("127.0.0.1", exporter.port), timeout=5) for _ in range(20)]
    try:
        replies = []
        for sock in extra:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            replies.append(data.split(b"\r\n", 1)[0])
        # ...every one over the cap is told so and closed without a thread or a descriptor
        assert replies == [b"HTTP/1.1 503 Service Unavailable"] * 20
        assert served(exporter.port) == 4
    finally:
        for sock in extra + held:
            sock.close()
    # the held ones hang up: their threads end, their slots free up, scrapes are served again
    wait_until(
        lambda: requests.get(url, timeout=5).status_code == 200, "a scrape served after the cap"
    )
