"""Small HTTP servers that stand in for a peer in a test: another watchdog, a webhook, an
upstream. One handler class, served on 127.0.0.1 from a daemon thread until ``close``."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from ollama_watchdog.healing.policy import State

#: the text format's content type (what a watchdog's /metrics answers with)
TEXT_FORMAT = "text/plain; version=0.0.4"


class QuietHandler(BaseHTTPRequestHandler):
    """A handler that logs nothing to stderr; ``reply`` sends one whole answer."""

    def log_message(self, format: str, *args: object) -> None:
        return

    def reply(self, status: int, body: bytes, content_type: str = TEXT_FORMAT) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class StubServer:
    """``handler`` served on 127.0.0.1 (``port`` 0: a free one) until ``close``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus names a target (its ``instance``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> StubServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def state_family(state: str) -> bytes:
    """``ollama_watchdog_state`` in the text format, 1 for ``state`` and 0 for every other."""
    lines = ["# TYPE ollama_watchdog_state gauge"] + [
        f'ollama_watchdog_state{{state="{s.value}"}} {1 if s.value == state else 0}'
        for s in State
    ]
    return ("\n".join(lines) + "\n").encode()


class FakeWatchdog:
    """Another host's watchdog, its /metrics reduced to the state family, in the state the
    test sets (``state`` may change at any time)."""

    def __init__(self, state: str = "healthy") -> None:
        self.state = state
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self.reply(200, state_family(host.state))

        self._server = StubServer(Handler)

    @property
    def instance(self) -> str:
        return self._server.address

    def close(self) -> None:
        self._server.close()
