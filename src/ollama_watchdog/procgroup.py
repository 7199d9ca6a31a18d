"""Stopping a child that runs in a process group of its own: the one TERM, wait, KILL helper.

Every child the package starts (the restart command, ``journalctl``, the demo's simulator) is
started with ``start_new_session=True``, so it and whatever it forks can be stopped together:
a polite signal first, then ``SIGKILL`` to the whole group once ``grace`` runs out. A process in
uninterruptible sleep outlives ``SIGKILL`` for a while; the wait for the kernel to reap it is
bounded too, so a caller is never held longer than ``grace + reap_timeout``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any


def stop_process_group(
    proc: subprocess.Popen[Any],
    grace: float = 5.0,
    *,
    first: signal.Signals | None = signal.SIGTERM,
    leader_only: bool = False,
    sweep: bool = False,
    reap_timeout: float | None = None,
    before_kill: Callable[[], object] | None = None,
) -> int | None:
    """Stop ``proc`` and its process group; return its exit status (None if not reaped yet).

    ``first`` is sent (to the group, or to the leader alone with ``leader_only``) while the
    leader runs; ``None`` skips straight to ``SIGKILL``. After ``grace`` seconds a surviving
    leader gets the group killed. ``sweep`` kills what is left of the group even when the
    leader exited in time (children it left behind). ``reap_timeout`` bounds the wait after
    ``SIGKILL`` (default: ``grace``). ``before_kill`` is called just before that ``SIGKILL``
    while the leader still runs, for what the group signal cannot reach (a container's PID 1,
    which has a session of its own).
    """
    reap = grace if reap_timeout is None else reap_timeout
    if proc.poll() is None and first is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if leader_only:
                proc.send_signal(first)
            else:
                os.killpg(proc.pid, first)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    if proc.poll() is None and before_kill is not None:
        before_kill()
    if proc.poll() is None or sweep:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(reap)
    return proc.returncode


__all__ = ["stop_process_group"]
