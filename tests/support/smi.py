"""``nvidia-smi`` as the GPU tests' reference, and their ``RECORD`` lines (tests/gpu/)."""

from __future__ import annotations

import json
import subprocess

#: nvidia-smi answers in well under a second; a wedged driver must not hang the test run
SMI_TIMEOUT = 30.0


def smi(*query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-…=… --format=csv,noheader,nounits``."""
    out = subprocess.run(
        ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=SMI_TIMEOUT,
        check=True,
    ).stdout
    return [[f.strip() for f in line.split(",")] for line in out.strip().splitlines()]


def used_mib(index: int = 0) -> float:
    """GPU ``index``'s memory used, MiB."""
    return float(smi("--query-gpu=memory.used")[index][0])


def pid_mib(pid: int) -> float | None:
    """The GPU memory nvidia-smi lists for ``pid``, MiB; None when it lists none."""
    for row in smi("--query-compute-apps=pid,used_memory"):
        if row and row[0] == str(pid):
            return float(row[1])
    return None


def record(what: str, **values: object) -> None:
    """A ``RECORD`` line in the test's output: the figures tests/gpu/README.md quotes."""
    print(f"RECORD {what} {json.dumps(values)}", flush=True)
