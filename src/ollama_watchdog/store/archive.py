"""The backup archive's format: written by :mod:`.backup`, read by :mod:`.restore`.

A tar (optionally one zstd frame around it) whose first member is a JSON digest index,
followed by ``manifests/<host>/<namespace>/<model>/<tag>`` and ``blobs/sha256-<hex>``
members, the same paths as in the store.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Final

from ollama_watchdog.store import StoreError

#: name of the digest index, always the first member of a backup archive
INDEX_NAME: Final = "ollama-watchdog-backup.json"
INDEX_FORMAT: Final = "ollama-watchdog-backup"
INDEX_VERSION: Final = 1
#: manifests are a few KiB; a bigger member is not a manifest (and must not be read into memory)
MAX_SMALL_MEMBER: Final = 16 * 1024 * 1024
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"

MANIFEST_MEMBER_RE: Final = re.compile(r"^manifests/([^/]+/[^/]+/[^/]+/[^/]+)$")
BLOB_MEMBER_RE: Final = re.compile(r"^blobs/(sha256-[0-9a-f]{64})$")


def load_zstandard() -> ModuleType:
    """The optional ``zstandard`` module; :class:`StoreError` when it is not installed."""
    # optional: only zstd archives need it, and plain tar keeps restore possible without it
    try:
        import zstandard
    except ImportError:
        raise StoreError(
            "zstd archives need the 'zstandard' Python package (pip install zstandard)"
        ) from None
    return zstandard


__all__ = [
    "BLOB_MEMBER_RE",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "INDEX_VERSION",
    "MANIFEST_MEMBER_RE",
    "MAX_SMALL_MEMBER",
    "ZSTD_MAGIC",
    "load_zstandard",
]
