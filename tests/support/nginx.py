"""A real nginx in the foreground for a test: the config checked first (``nginx -t``), then
run in its own process group until the test is done."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from ollama_watchdog.procgroup import stop_process_group
from support.wait import wait_until

#: seconds nginx has to check its config, and to listen
TIMEOUT = 60.0


@contextmanager
def running_nginx(nginx: str, prefix: Path, main: Path, port: int, ca: Path) -> Iterator[None]:
    """``nginx -p prefix -c main``, its output in ``prefix/nginx.out``; entered once
    ``https://127.0.0.1:port/`` answers (verified against ``ca``). An nginx that exits
    meanwhile fails with its ``error.log``."""
    argv = [nginx, "-p", str(prefix), "-c", str(main)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=TIMEOUT)
    assert check.returncode == 0, check.stderr
    with (prefix / "nginx.out").open("ab") as out:
        process = subprocess.Popen(
            [*argv, "-g", f"daemon off; pid {prefix / 'nginx.pid'};"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:

        def listening() -> bool:
            assert process.poll() is None, (prefix / "error.log").read_text()
            try:
                requests.get(f"https://127.0.0.1:{port}/", verify=str(ca), timeout=2)
            except requests.ConnectionError:
                return False
            return True

        wait_until(listening, "nginx listening", timeout=TIMEOUT, interval=0.1)
        yield
    finally:
        stop_process_group(process, 10.0)
