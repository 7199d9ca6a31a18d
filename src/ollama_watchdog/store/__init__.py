"""Ollama's model store on disk, and the operations that check, save and bring it back.

Ollama checks a digest only when a blob *arrives* (pull, upload, create); it never re-hashes
on load, so a bit-flipped or truncated blob surfaces later as an obscure llama.cpp load error.

* this module: :class:`ModelStore`, one models directory (names and manifests are read with
  :mod:`ollama_watchdog.ollama.names`, the one reader of the layout), and its errors;
* ``verify``: hash every referenced blob; report missing, corrupt and unreferenced ones;
* ``backup``: write what manifests reference (plus a digest index) to a tar, zstd optional;
* ``restore``: check every byte against that index in a staging directory before placing
  anything, so a damaged or hostile archive changes nothing;
* ``archive``: the archive's format, the one fact ``backup`` writes and ``restore`` reads;
* ``hashing`` and ``progress``: sha256 over streams, and the progress bar on stderr.

The CLI glue (``models verify|backup|restore``) is :mod:`ollama_watchdog.commands.models`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ollama_watchdog.ollama.names import (
    BLOB_NAME_RE,
    DIGEST_RE,
    BadManifest,
    InvalidName,
    Layer,
    Manifest,
    ModelName,
    manifest_paths,
    read_manifest,
)


class StoreError(Exception):
    """A store operation could not be done; the message is one line for the operator."""


class RestoreRefused(StoreError):
    """The archive was refused; nothing was placed in the store."""


def parse_model_name(text: str) -> ModelName:
    """A model name as a user types it; :class:`StoreError` when it cannot name a manifest."""
    try:
        return ModelName.parse(text)
    except InvalidName as exc:
        raise StoreError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class StoreScan:
    """What is on disk right now (no hashing)."""

    manifests: tuple[Manifest, ...]
    bad_manifests: tuple[BadManifest, ...]
    #: digest (``sha256:<hex>``) -> file size, for every valid blob file name
    present: dict[str, int]

    def referenced(self) -> dict[str, Layer]:
        """Every digest some manifest references, with the first layer that names it."""
        refs: dict[str, Layer] = {}
        for manifest in self.manifests:
            for blob in manifest.blobs:
                refs.setdefault(blob.digest, blob)
        return refs

    def models_using(self, digest: str) -> tuple[str, ...]:
        return tuple(
            sorted(str(m.name) for m in self.manifests if any(b.digest == digest for b in m.blobs))
        )


class ModelStore:
    """An Ollama models directory (``OLLAMA_MODELS``); the root is a constructor argument."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifests_dir = root / "manifests"
        self.blobs_dir = root / "blobs"

    def blob_path(self, digest: str) -> Path:
        match = DIGEST_RE.match(digest)
        if match is None:
            raise StoreError(f"invalid digest {digest!r}")
        return self.blobs_dir / f"sha256-{match.group(1)}"

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.relpath.split("/"))

    def scan(self) -> StoreScan:
        manifests: list[Manifest] = []
        bad: list[BadManifest] = []
        for path in manifest_paths(self.root):
            try:
                manifests.append(read_manifest(self.root, path))
            except (OSError, ValueError) as exc:
                bad.append(BadManifest(path.relative_to(self.manifests_dir).as_posix(), str(exc)))
        present: dict[str, int] = {}
        if self.blobs_dir.is_dir():
            for entry in os.scandir(self.blobs_dir):
                match = BLOB_NAME_RE.match(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    present["sha256:" + match.group(1)] = entry.stat(follow_symlinks=False).st_size
        return StoreScan(tuple(manifests), tuple(bad), present)

    def resolve(self, scan: StoreScan, names: Sequence[str]) -> list[Manifest]:
        """The manifests for model names as a user types them; all of them when none given."""
        if not names:
            return list(scan.manifests)
        by_path = {m.name.relpath: m for m in scan.manifests}
        chosen: list[Manifest] = []
        for text in names:
            name = parse_model_name(text)
            manifest = by_path.get(name.relpath)
            if manifest is None:
                raise StoreError(f"model {text!r} not found in {self.manifests_dir}")
            if manifest not in chosen:
                chosen.append(manifest)
        return chosen


__all__ = [
    "ModelStore",
    "RestoreRefused",
    "StoreError",
    "StoreScan",
    "parse_model_name",
]
