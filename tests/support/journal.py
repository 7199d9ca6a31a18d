"""What journald stores for one line a service wrote to stdout, for fakes and benchmarks.

The fields (``journalctl -o json`` shows them) of an entry of ``ollama.service``'s stdout, as
journald records it: trusted fields (``_PID``, ``_SYSTEMD_UNIT``, ...), the syslog identifier
and priority, the timestamps, and MESSAGE. The cursor is left to the caller (a fake
journalctl makes one up; a real journal file assigns its own).
"""

from __future__ import annotations


def stdout_entry_fields(seq: int, message: str | list[int]) -> dict[str, str | list[int]]:
    """Entry number ``seq`` of ``ollama.service``'s stdout carrying ``message``."""
    return {
        "__REALTIME_TIMESTAMP": str(1768947346000000 + seq),
        "__MONOTONIC_TIMESTAMP": str(5000000 + seq),
        "_BOOT_ID": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "_MACHINE_ID": "5c1d8e9f0a2b3c4d5e6f708192a3b4c5",
        "_HOSTNAME": "jarvis-server",
        "PRIORITY": "6",
        "SYSLOG_FACILITY": "3",
        "SYSLOG_IDENTIFIER": "ollama",
        "_PID": "1232",
        "_UID": "998",
        "_GID": "998",
        "_COMM": "ollama",
        "_EXE": "/usr/local/bin/ollama",
        "_CMDLINE": "/usr/local/bin/ollama serve",
        "_CAP_EFFECTIVE": "0",
        "_SELINUX_CONTEXT": "unconfined",
        "_TRANSPORT": "stdout",
        "_STREAM_ID": "d4b1f2a9c3e84f7e8b6a5c4d3e2f1a0b",
        "_SYSTEMD_CGROUP": "/system.slice/ollama.service",
        "_SYSTEMD_UNIT": "ollama.service",
        "_SYSTEMD_SLICE": "system.slice",
        "_SYSTEMD_INVOCATION_ID": "8a7b6c5d4e3f20119a8b7c6d5e4f3021",
        "MESSAGE": message,
    }


def export_entry(fields: dict[str, str | list[int]]) -> bytes:
    """One entry in journald's export format (a text field per line, a blank line after)."""
    out = []
    for key, value in fields.items():
        data = bytes(value) if isinstance(value, list) else value.encode()
        if b"\n" in data:  # the binary form: name, then the length as 64-bit little endian
            out.append(key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n")
        else:
            out.append(key.encode() + b"=" + data + b"\n")
    return b"".join(out) + b"\n"
