"""The control endpoint: switch faults at run time (``GET``/``POST /fault``), and see the
runners (``GET /runners``: live runner pids, ports and argv, and per model the sums of what
real llama-server runners returned: ``completions``, ``cache_n``, ``prompt_n``, ``predicted_n``).

It listens on its own port so that it keeps answering while the API port hangs. It writes
nothing to the logs: those carry Ollama's formats only.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ollama_watchdog.simulator.faults import FAULTS, Fault, FaultState


class ControlHandler(BaseHTTPRequestHandler):
    """``GET /fault`` → current fault; ``POST /fault {"fault": NAME, "delay": secs}``."""

    protocol_version = "HTTP/1.1"
    server: ControlServer

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: stdout is reserved for gin lines."""

    def _reply(self, status: int, value: object) -> None:
        body = json.dumps(value).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/runners":
            self._reply(200, self.server.describe())
            return
        if path != "/fault":
            self._reply(404, {"error": "unknown path; use /fault or /runners"})
            return
        self._reply(200, self.server.faults.current.as_json())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?")[0] != "/fault":
            self._reply(404, {"error": "unknown path; use /fault"})
            return
        try:
            request = json.loads(raw or b"{}")
            name = str(request.get("fault") or "none")
            delay = request.get("delay")
            current = self.server.faults.current
            fault = Fault(name, current.delay if delay is None else float(delay))
        except (ValueError, TypeError, AttributeError) as error:
            self._reply(400, {"error": f"bad request: {error}"})
            return
        if name not in FAULTS:
            self._reply(400, {"error": f"unknown fault {name!r}; known: {', '.join(FAULTS)}"})
            return
        if fault.delay < 0:
            self._reply(400, {"error": "delay must be >= 0"})
            return
        self.server.faults.set(fault)
        self._reply(200, fault.as_json())
        # Effects that happen at once, after the caller has its answer.
        self.server.on_fault(fault)


class ControlServer(ThreadingHTTPServer):
    """The control listener."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], faults: FaultState,
                 on_fault: Callable[[Fault], None], family: int,
                 describe: Callable[[], object] = dict) -> None:
        self.address_family = family
        self.faults = faults
        self.describe = describe
        self.on_fault = on_fault
        super().__init__(address, ControlHandler)


def serve_in_thread(server: ThreadingHTTPServer, name: str) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=name, daemon=True)
    thread.start()
    return thread
