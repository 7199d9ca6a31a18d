"""The HAProxy agent-check responder (``[fleet] agent_listen``; off by default).

HAProxy's ``agent-check`` opens a TCP connection to ``agent-port``, optionally sends the
``agent-send`` string, and reads one line of words. This responder writes one word — ``ready``,
``drain`` or ``maint`` (``healing.readiness.AgentWord``), the same decision ``/ready`` makes —
followed by ``\\n``, half-closes, and closes.

What an SRE would want from it, and why:

* It reads only a value the daemon's main loop keeps current: an answer never waits on Ollama.
* It never reads the request first (the agent protocol does not require one); whatever HAProxy
  sent is drained for a moment after the answer, so the close is a FIN, not a reset that could
  discard the answer in flight.
* Bounded: at most ``max_connections`` connections are served at once (more are closed
  unanswered: HAProxy does not count a failed agent connection against the server, its regular
  health check does that), and each has ``timeout`` seconds in all.
* No authentication: the protocol has none, and the answer is one word. Bind it to loopback or
  to the address the balancer reaches, firewalled to the balancer (as the Ollama port is).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from ollama_watchdog.config import parse_listen

#: one connection's whole exchange (write, drain, close) must end within this many seconds
DEFAULT_TIMEOUT = 2.0
#: connections served at once; HAProxy makes one per server per agent-inter
DEFAULT_MAX_CONNECTIONS = 16
#: bytes of whatever HAProxy sent (agent-send) read and thrown away before closing
_DRAIN_LIMIT = 4096


class HaproxyAgent:
    """Binds at construction (a taken port fails before READY=1), serves on its own thread."""

    def __init__(
        self,
        listen: str,
        word: Callable[[], str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        host, port = parse_listen(listen)
        self._word = word
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        family = socket.AF_INET6 if (":" in host or host == "") else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if host == "" and hasattr(socket, "IPV6_V6ONLY"):
                # ":9878" means every address, IPv4 included
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._sock.bind((host or "::", port))
            self._sock.listen(64)
            # the accept loop wakes up now and then to notice stop()
            self._sock.settimeout(0.2)
        except BaseException:
            self._sock.close()
            raise
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="haproxy-agent", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                # out of descriptors or similar: the watchdog's own trouble; do not spin
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()  # over the cap: HAProxy treats an unanswered agent as no news
                continue
            threading.Thread(
                target=self._answer, args=(conn,), name="haproxy-agent-conn", daemon=True
            ).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            deadline = time.monotonic() + self._timeout
            conn.settimeout(self._timeout)
            try:
                word = self._word()
            except Exception:  # a provider bug must not read as "ready"
                word = "maint"
            conn.sendall(word.encode("ascii") + b"\n")
            conn.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < _DRAIN_LIMIT:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                chunk = conn.recv(_DRAIN_LIMIT)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass  # a peer that hangs up or stalls is not the watchdog's problem
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()


__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_TIMEOUT", "HaproxyAgent"]
