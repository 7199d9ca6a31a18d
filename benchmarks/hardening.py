"""Issue 18, items 1 and 2: what slow and hostile peers cost the daemon, before and after.

Not a test. Run: ``.venv/bin/python benchmarks/hardening.py [--src DIR] [--only NAME ...]``.
``--src`` imports ``ollama_watchdog`` from another tree (e.g. ``git archive`` of the commit before
the fix, extracted) to get the "before" column on the same machine in the same run.

Each scenario runs in a child process (its own RSS, its own descriptors), killed at ``--limit``
seconds; the parent samples the child's RSS every 50 ms and prints one JSON line per scenario:

* ``exporter``: N clients each send a request line, then one header byte every 2 s for 30 s;
  the most descriptors and threads the exporter's side held at once, and whether a scrape
  opened at the end was answered.
* ``trickle``: ``/api/version`` answers one byte every 0.5 s (``ollama.timeout`` 5 s): seconds
  until the probe fails (or succeeds), and its reason.
* ``endless``: ``/api/version`` answers an endless chunked body: seconds until refused, peak RSS.
* ``endless_tags``: the same on ``/api/tags``, whose cap is the largest (8 MiB).
* ``tags_worst``: an /api/tags just under its cap that costs most once parsed (2 M floats).
* ``ps200``: ``/api/ps`` answers 200 MB (Content-Length): peak RSS.
* ``check``: ``ollama-watchdog check`` (``ollama.timeout`` 5 s) against the trickling server:
  wall seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.hostile import Answer, HostileServer, endless, sized  # noqa: E402
from support.tools import free_port  # noqa: E402

VERSION = b'{"version":"0.32.15"}'


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def scenario_exporter(clients: int) -> dict[str, Any]:
    from ollama_watchdog.exporter.http import Exporter, SnapshotBoard

    kwargs: dict[str, Any] = {}
    if "max_connections" in inspect.signature(Exporter).parameters:
        kwargs = {"max_connections": 64, "request_timeout": 10.0}
    port = free_port()
    ex = Exporter(f"127.0.0.1:{port}", SnapshotBoard(), lambda: (True, "ok"), **kwargs)
    ex.start()
    base_fds, base_threads = fds(), threading.active_count()
    socks: list[socket.socket] = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    held_max = threads_max = 0
    end = time.monotonic() + 30
    while time.monotonic() < end:
        for s in list(socks):
            try:
                s.send(b"X")
            except OSError:
                socks.remove(s)
                s.close()
        time.sleep(0.5)
        held = fds() - base_fds - len(socks)
        held_max = max(held_max, held)
        threads_max = max(threads_max, threading.active_count() - base_threads)
        time.sleep(1.5)
    held_end = fds() - base_fds - len(socks)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            status = s.recv(64).split(b"\r\n", 1)[0].decode()
    except OSError as exc:
        status = f"no answer: {exc}"
    return {
        "clients": clients,
        "server_fds_max": held_max,
        "server_fds_at_30s": held_end,
        "server_threads_max": threads_max,
        "clients_still_connected_at_30s": len(socks),
        "scrape_at_30s": status,
    }


PS200 = 200 * 1024 * 1024
#: the hostile server runs in the parent, so the child's RSS is the client's alone
ANSWERS = {
    "trickle": ("/api/version", Answer(body=lambda: [VERSION], trickle_head=0.5)),
    "endless": ("/api/version", Answer(body=lambda: endless(b" " * 65536), chunked=True)),
    "endless_tags": ("/api/tags", Answer(body=lambda: endless(b" " * 65536), chunked=True)),
    # the costliest body under the /api/tags caps once parsed: 2 M floats
    "tags_worst": (
        "/api/tags",
        Answer(body=lambda: [b'{"models":[', b"1.5," * (2 * 1024 * 1024 - 8), b"0]}"]),
    ),
    "ps200": (
        "/api/ps",
        Answer(
            body=lambda: [b'{"models":[', *sized(PS200, b" " * 65536), b"]}"],
            length=PS200 + 13,
        ),
    ),
    "check": ("/api/version", Answer(body=lambda: [VERSION], trickle_head=0.5)),
}


def probe(url: str, path: str, timeout: float) -> dict[str, Any]:
    from ollama_watchdog.ollama.api import OllamaClient, ProbeError

    # a runaway client must not take the shared machine with it
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, resource.RLIM_INFINITY))
    c = OllamaClient(url, timeout)
    call = {"/api/version": c.version, "/api/tags": c.tags, "/api/ps": c.ps}[path]
    start = time.monotonic()
    try:
        call()
        outcome = "ok"
    except ProbeError as exc:
        outcome = f"{exc.reason}: {exc.detail}"[:80]
    except MemoryError:
        outcome = "MemoryError (3 GiB address-space limit of this benchmark)"
    return {"seconds": round(time.monotonic() - start, 2), "outcome": outcome}


def scenario_check(url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.toml"
        config.write_text(f'[ollama]\nurl = "{url}"\ntimeout = "5s"\n')
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "ollama_watchdog", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            env=os.environ,
            check=False,
        )
        return {
            "seconds": round(time.monotonic() - start, 2),
            "exit": proc.returncode,
            "line": proc.stdout.strip()[:90],
        }


def child(name: str, clients: int, url: str) -> dict[str, Any]:
    if name == "exporter":
        return scenario_exporter(clients)
    if name == "check":
        return scenario_check(url)
    return probe(url, ANSWERS[name][0], 30.0 if name == "ps200" else 5.0)


def run(name: str, src: str | None, limit: float, clients: int) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        url = ""
        if name in ANSWERS:
            path, answer = ANSWERS[name]
            url = stack.enter_context(HostileServer({path: answer})).url
        return measure(name, src, limit, clients, url)


def measure(name: str, src: str | None, limit: float, clients: int, url: str) -> dict[str, Any]:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src) / "src"), env.get("PYTHONPATH", "")])
    args = [sys.executable, __file__, "--child", name, "--clients", str(clients), "--url", url]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = 0
    start = time.monotonic()
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            break
        if time.monotonic() - start > limit:
            proc.kill()
            break
        time.sleep(0.05)
    out, _ = proc.communicate()
    result: dict[str, Any] = {"scenario": name, "tree": src or "this one"}
    if proc.returncode == 0 and out.strip():
        result.update(json.loads(out.strip().splitlines()[-1]))
    else:
        result["killed_after_s"] = round(time.monotonic() - start, 1)
    result["peak_rss_mb"] = round(peak / 2**20, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="a tree whose src/ollama_watchdog is measured instead")
    scenarios = ["exporter", "trickle", "endless", "endless_tags", "tags_worst", "ps200", "check"]
    ap.add_argument("--only", nargs="*", default=scenarios)
    ap.add_argument("--limit", type=float, default=60.0, help="kill a scenario after this")
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.clients, args.url)))
        return
    for name in args.only:
        print(json.dumps(run(name, args.src, args.limit, args.clients)), flush=True)


if __name__ == "__main__":
    main()
