"""``models backup``: the chosen models and only the blobs they reference, in one tar.

Each blob is hashed while it is copied, so a corrupt blob aborts the backup instead of being
saved; the archive is written beside its target and renamed at the end, so a failed backup
never leaves a file that looks complete. The format is :mod:`.archive`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from ollama_watchdog.ollama.names import Layer
from ollama_watchdog.store import ModelStore, StoreError
from ollama_watchdog.store.archive import INDEX_FORMAT, INDEX_NAME, INDEX_VERSION, load_zstandard
from ollama_watchdog.store.progress import HashingReader, Progress


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What went into an archive."""

    output: Path
    models: tuple[str, ...]
    blobs: int
    bytes: int
    compressed: bool


def _wants_zstd(output: Path, zstd: bool | None) -> bool:
    if zstd is not None:
        return zstd
    return output.name.endswith((".zst", ".tzst"))


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    # fixed owner and mode: restore sets ownership from the target store, not from the archive
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    info.uname = info.gname = ""
    return info


def backup_store(
    store: ModelStore,
    output: Path,
    models: Sequence[str] = (),
    *,
    zstd: bool | None = None,
    progress_stream: IO[str] | None = None,
) -> BackupReport:
    """Write the chosen models (all when none) and only the blobs they reference to a tar.

    The archive is written to a temporary file beside ``output`` and renamed at the end, so a
    failed backup never leaves a file that looks complete. Each blob is hashed while it is
    copied; a blob that does not match its digest aborts the backup.
    """
    scan = store.scan()
    chosen = store.resolve(scan, models)
    if not chosen:
        raise StoreError(f"no models in {store.manifests_dir}; nothing to back up")
    blobs: dict[str, Layer] = {}
    for manifest in chosen:
        for blob in manifest.blobs:
            blobs.setdefault(blob.digest, blob)
    for digest, layer in sorted(blobs.items()):
        size = scan.present.get(digest)
        if size is None:
            raise StoreError(f"blob {digest} is missing; run `ollama-watchdog models verify`")
        if size != layer.size:
            raise StoreError(
                f"blob {digest} has {size} bytes, manifest says {layer.size}; "
                "run `ollama-watchdog models verify`"
            )

    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "models": {str(m.name): m.name.relpath for m in chosen},
        "manifests": {m.name.relpath: {"digest": m.digest, "size": len(m.raw)} for m in chosen},
        "blobs": {digest: layer.size for digest, layer in sorted(blobs.items())},
    }
    index_bytes = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
    compress = _wants_zstd(output, zstd)
    total = sum(layer.size for layer in blobs.values())
    progress = Progress("backing up", len(blobs), total, progress_stream or sys.stderr)

    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw_out:
            with (
                _compressed_writer(raw_out, compress) as out,
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar,
            ):
                tar.addfile(_tarinfo(INDEX_NAME, len(index_bytes)), io.BytesIO(index_bytes))
                for manifest in chosen:
                    tar.addfile(
                        _tarinfo(f"manifests/{manifest.name.relpath}", len(manifest.raw)),
                        io.BytesIO(manifest.raw),
                    )
                for digest, layer in sorted(blobs.items()):
                    with store.blob_path(digest).open("rb") as fh:
                        reader = HashingReader(fh, progress)
                        info = _tarinfo(f"blobs/{layer.blob_name}", layer.size)
                        tar.addfile(info, reader)
                    progress.advance(0, item_done=True)
                    if "sha256:" + reader.sha.hexdigest() != digest:
                        raise StoreError(
                            f"blob {digest} does not match its digest; backup aborted "
                            "(run `ollama-watchdog models verify`)"
                        )
            raw_out.flush()
            os.fsync(raw_out.fileno())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        progress.finish()
    return BackupReport(output, tuple(str(m.name) for m in chosen), len(blobs), total, compress)


@contextlib.contextmanager
def _compressed_writer(raw: BinaryIO, compress: bool) -> Iterator[IO[bytes]]:
    if not compress:
        yield raw
        return
    zstandard = load_zstandard()
    writer = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw, closefd=False)
    try:
        yield writer
    finally:
        writer.close()


__all__ = ["BackupReport", "backup_store"]
