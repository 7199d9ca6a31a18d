"""Blob -> model name for the ``model`` label, through the store's manifests (cached).

A runner's start line names the weights blob it loads, not the model; the manifests say which
model that blob belongs to (:func:`ollama_watchdog.ollama.names.read_model_blobs`). They are
re-read on a miss, at most every ``refresh_s``, on the follower thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ollama_watchdog.ollama.names import read_model_blobs


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

    def name_for(self, blob: str) -> str | None:
        name = self._blobs.get(blob)
        if name is not None or self._dir is None:
            return name
        now = self._clock()
        if self._read_at is None or now - self._read_at >= self._refresh_s:
            self._read_at = now
            self._blobs = read_model_blobs(self._dir)
        return self._blobs.get(blob)


__all__ = ["ModelNames"]
