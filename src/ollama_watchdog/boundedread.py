"""Read a small file from disk as untrusted input: a regular file only, and only so much of it.

Manifests, state files and parameter blobs are a few KiB, but the path may hold anything: a
FIFO (``open`` waits for a writer forever), a symlink to ``/dev/zero`` (endless), a sparse 1 GB
file. :func:`read_bounded` opens without blocking, checks what it opened, and reads at most
``max_bytes``; :class:`FileRefused` says what was wrong in words for a log line or a finding.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class FileRefused(ValueError):
    """Not read: not a regular file, or too large. The message names the problem."""


class FileTooLarge(FileRefused):
    """A regular file larger than the reader's cap."""


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for a message: ``a FIFO``, ``a directory``..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def open_regular(path: Path, *, follow_symlinks: bool = True) -> int:
    """A read-only descriptor on ``path`` if it is a regular file.

    Raises ``FileNotFoundError`` when it is absent, :class:`FileRefused` when it is something
    else (or, with ``follow_symlinks=False``, a symbolic link), ``OSError`` otherwise.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO must not block
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # a socket (ENXIO), a symlink under O_NOFOLLOW (ELOOP): say what is at the path
        try:
            mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
        except OSError:
            raise exc from None
        if not stat.S_ISREG(mode):
            raise FileRefused(f"is {describe_mode(mode)}, not a regular file") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"is {describe_mode(mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: Path, max_bytes: int, *, follow_symlinks: bool = True) -> bytes:
    """The whole content of a regular file of at most ``max_bytes``.

    Raises :class:`FileRefused` (not a regular file; :class:`FileTooLarge`: larger than
    ``max_bytes``), or ``OSError``.
    At most ``max_bytes + 1`` bytes are read, whatever the file claims or becomes meanwhile.
    """
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise FileTooLarge(f"has {size} bytes, more than {max_bytes}")
        chunks: list[bytes] = []
        got = 0
        while got <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - got)):
            chunks.append(chunk)
            got += len(chunk)
        if got > max_bytes:  # grew since fstat
            raise FileTooLarge(f"has more than {max_bytes} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


__all__ = ["FileRefused", "FileTooLarge", "describe_mode", "open_regular", "read_bounded"]
