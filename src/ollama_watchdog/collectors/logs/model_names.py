"""Blob -> model name for the ``model`` label, through the store's manifests (cached).

A runner's start line names the weights blob it loads, not the model; the manifests say which
model that blob belongs to (:func:`ollama_watchdog.ollama.names.read_model_blobs`). They are
re-read on a miss, at most every ``refresh_s``, on the follower thread and outside the lock
``collect()`` takes (:meth:`ModelNames.name_for`; :meth:`ModelNames.cached` never reads).
A manifest that cannot be read (a FIFO, a device, too large, not JSON) is skipped and logged
once (``manifest_skipped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from ollama_watchdog.ollama.names import read_model_blobs
from ollama_watchdog.oneline import one_line

log = structlog.get_logger(__name__)

#: skipped manifests remembered so each is logged once (bounded: a hostile store may hold many)
_MAX_REMEMBERED: Final = 1024


class ModelNames:
    """Blob → model name through the manifests, re-read on a miss at most every ``refresh_s``."""

    def __init__(
        self,
        models_dir: Path | None,
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = models_dir
        self._refresh_s = refresh_s
        self._clock = clock
        self._blobs: dict[str, str] = {}
        self._read_at: float | None = None
        self._logged: set[tuple[str, str]] = set()

    def cached(self, blob: str) -> str | None:
        """The name as last read, without reading anything."""
        return self._blobs.get(blob)

    def _skipped(self, path: Path, reason: str) -> None:
        key = (str(path), reason)
        if key in self._logged or len(self._logged) >= _MAX_REMEMBERED:
            return
        self._logged.add(key)
        log.warning("manifest_skipped", path=str(path), reason=one_line(reason))

    def name_for(self, blob: str) -> str | None:
        name = self._blobs.get(blob)
        if name is not None or self._dir is None:
            return name
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now
            self._blobs = read_model_blobs(self._dir, self._skipped)
        return self._blobs.get(blob)


__all__ = ["ModelNames"]
