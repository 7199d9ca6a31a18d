"""sha256 over streams and files, as Ollama names blobs (``sha256:<hex>``).

Read in 1 MiB chunks: big enough that hashlib releases the GIL (verify hashes on several
threads), small enough that a multi-GiB blob never sits in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Final

#: bytes read (and written, when copying) at a time
CHUNK: Final = 1024 * 1024


def hash_stream(stream: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    """sha256 (``sha256:<hex>``) and length of a stream, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - total)
        chunk = stream.read(want)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return "sha256:" + digest.hexdigest(), total


def hash_file(path: Path) -> str:
    """sha256 (``sha256:<hex>``) of a whole file."""
    with path.open("rb") as fh:
        return hash_stream(fh)[0]


__all__ = ["CHUNK", "hash_file", "hash_stream"]
