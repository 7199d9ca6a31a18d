"""``models restore``: check a whole backup archive, then place what the store lacks.

Every member is staged and checked (names, types, sizes, digests, the index) before anything
is placed, so a damaged or hostile archive changes nothing. Existing files are never replaced,
and blobs go in before the manifests that reference them. The format is :mod:`.archive`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from ollama_watchdog.ollama.names import (
    DIGEST_RE,
    Manifest,
    ModelName,
    parse_manifest,
    read_manifest_bytes,
)
from ollama_watchdog.store import ModelStore, RestoreRefused, StoreError
from ollama_watchdog.store.archive import (
    BLOB_MEMBER_RE,
    INDEX_FORMAT,
    INDEX_NAME,
    INDEX_VERSION,
    MANIFEST_MEMBER_RE,
    MAX_SMALL_MEMBER,
    ZSTD_MAGIC,
    load_zstandard,
)
from ollama_watchdog.store.hashing import CHUNK, hash_file
from ollama_watchdog.store.progress import human_bytes


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore placed and what was already there, byte for byte."""

    models: tuple[str, ...]
    blobs_placed: int
    blobs_present: int
    manifests_placed: int
    manifests_present: int
    bytes_placed: int


@dataclass
class _Staged:
    index_blobs: dict[str, int] = field(default_factory=dict)
    index_manifests: dict[str, tuple[str, int]] = field(default_factory=dict)
    index_models: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, Path] = field(default_factory=dict)
    manifests: dict[str, Manifest] = field(default_factory=dict)


def _check_member_name(name: str) -> None:
    """Refuse any name that could land outside the store, whatever the later checks say."""
    path = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
        or path.is_absolute()
    ):
        raise RestoreRefused(f"archive member {name!r} escapes the store; refused")


def _read_index(data: bytes) -> _Staged:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RestoreRefused(f"archive index is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
        raise RestoreRefused("archive index is not an ollama-watchdog backup index")
    if doc.get("version") != INDEX_VERSION:
        raise RestoreRefused(f"archive index version {doc.get('version')!r} is not supported")
    staged = _Staged()
    blobs, manifests, models = doc.get("blobs"), doc.get("manifests"), doc.get("models")
    if (
        not isinstance(blobs, dict)
        or not isinstance(manifests, dict)
        or not isinstance(models, dict)
    ):
        raise RestoreRefused("archive index lacks blobs, manifests or models")
    for digest, size in blobs.items():
        if not DIGEST_RE.match(digest) or not isinstance(size, int) or size < 0:
            raise RestoreRefused(f"archive index has an invalid blob entry {digest!r}")
        staged.index_blobs[digest] = size
    for relpath, entry in manifests.items():
        _check_member_name(f"manifests/{relpath}")
        if not MANIFEST_MEMBER_RE.match(f"manifests/{relpath}") or not isinstance(entry, dict):
            raise RestoreRefused(f"archive index has an invalid manifest path {relpath!r}")
        digest, size = entry.get("digest"), entry.get("size")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest) or not isinstance(size, int):
            raise RestoreRefused(f"archive index has an invalid manifest entry {relpath!r}")
        staged.index_manifests[relpath] = (digest, size)
    for model, relpath in models.items():
        if relpath not in staged.index_manifests:
            raise RestoreRefused(f"archive index names model {model!r} without its manifest")
        staged.index_models[str(model)] = relpath
    return staged


def _check_space(staged: _Staged, staging: Path) -> None:
    """Refuse, before a byte is staged, an archive whose index claims more than the disk has.

    Every blob and manifest the index lists is staged (written in full) before anything is
    placed, so that is what the filesystem of the store must hold. A member larger than its
    index entry is refused when it comes, so the index bounds what staging writes. (A sparse
    or compressed archive of a few KiB may claim a blob of any size.)
    """
    needed = sum(staged.index_blobs.values()) + sum(
        size for _, size in staged.index_manifests.values()
    )
    free = shutil.disk_usage(staging).free
    if needed > free:
        raise RestoreRefused(
            f"the archive's index claims {human_bytes(needed)} ({needed} bytes) to stage, "
            f"and the models filesystem has {human_bytes(free)} ({free} bytes) free; free "
            "space there, or check the archive (a small archive that claims this much is not "
            "a backup); nothing restored"
        )


def _open_archive(fh: BinaryIO) -> IO[bytes]:
    head = fh.read(4)
    fh.seek(0)
    if head == ZSTD_MAGIC:
        reader: IO[bytes] = load_zstandard().ZstdDecompressor().stream_reader(fh)
        return reader
    return fh


def _stage_archive(archive: Path, staging: Path) -> _Staged:
    """Read the whole archive into ``staging``, checking every name, size and digest."""
    staged: _Staged | None = None
    seen: set[str] = set()
    (staging / "blobs").mkdir()
    with archive.open("rb") as raw, tarfile.open(fileobj=_open_archive(raw), mode="r|") as tar:
        for member in tar:
            name = member.name
            _check_member_name(name)
            if not member.isreg():
                kind = "link" if member.issym() or member.islnk() else "non-file entry"
                raise RestoreRefused(f"archive member {name!r} is a {kind}; refused")
            if name in seen:
                raise RestoreRefused(f"archive member {name!r} appears twice; refused")
            seen.add(name)
            stream = tar.extractfile(member)
            if stream is None:  # pragma: no cover - isreg() members always have data
                raise RestoreRefused(f"archive member {name!r} has no data")
            if staged is None:
                if name != INDEX_NAME or member.size > MAX_SMALL_MEMBER:
                    raise RestoreRefused(
                        f"first archive member is {name!r}, not the index {INDEX_NAME}; refused"
                    )
                staged = _read_index(stream.read())
                _check_space(staged, staging)
                continue
            if blob_match := BLOB_MEMBER_RE.match(name):
                _stage_blob(staged, blob_match.group(1), member, stream, staging)
            elif manifest_match := MANIFEST_MEMBER_RE.match(name):
                _stage_manifest(staged, manifest_match.group(1), member, stream)
            else:
                raise RestoreRefused(f"archive member {name!r} is neither a blob nor a manifest")
    if staged is None:
        raise RestoreRefused("archive is empty")
    absent = sorted(set(staged.index_blobs) - set(staged.blobs)) + sorted(
        set(staged.index_manifests) - set(staged.manifests)
    )
    if absent:
        raise RestoreRefused(
            f"archive is truncated: {len(absent)} indexed entries missing (first: {absent[0]})"
        )
    for manifest in staged.manifests.values():
        for blob in manifest.blobs:
            if blob.digest not in staged.blobs:
                raise RestoreRefused(
                    f"manifest {manifest.name} references {blob.digest}, not in the archive"
                )
            if staged.index_blobs[blob.digest] != blob.size:
                raise RestoreRefused(
                    f"manifest {manifest.name} disagrees on the size of {blob.digest}"
                )
    return staged


def _stage_blob(
    staged: _Staged, blob_name: str, member: tarfile.TarInfo, stream: IO[bytes], staging: Path
) -> None:
    digest = blob_name.replace("-", ":", 1)
    expected = staged.index_blobs.get(digest)
    if expected is None:
        raise RestoreRefused(f"archive blob {digest} is not in the index")
    if member.size != expected:
        raise RestoreRefused(
            f"archive blob {digest} has {member.size} bytes, index says {expected}"
        )
    sha = hashlib.sha256()
    target = staging / "blobs" / blob_name
    with target.open("xb") as out:
        while chunk := stream.read(CHUNK):
            sha.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if "sha256:" + sha.hexdigest() != digest:
        raise RestoreRefused(f"archive blob {digest} does not match its digest; refused")
    staged.blobs[digest] = target


def _stage_manifest(
    staged: _Staged, relpath: str, member: tarfile.TarInfo, stream: IO[bytes]
) -> None:
    entry = staged.index_manifests.get(relpath)
    if entry is None:
        raise RestoreRefused(f"archive manifest {relpath} is not in the index")
    if member.size > MAX_SMALL_MEMBER:
        raise RestoreRefused(f"archive manifest {relpath} is too large")
    raw = stream.read()
    if "sha256:" + hashlib.sha256(raw).hexdigest() != entry[0] or len(raw) != entry[1]:
        raise RestoreRefused(f"archive manifest {relpath} does not match its digest; refused")
    host, namespace, model, tag = relpath.split("/")
    try:
        staged.manifests[relpath] = parse_manifest(ModelName(host, namespace, model, tag), raw)
    except ValueError as exc:
        raise RestoreRefused(f"archive manifest {relpath} is invalid: {exc}") from None


def _existing_manifest(path: Path) -> bytes | None:
    """The store's manifest at ``path``, read under the manifest cap (None: unreadable)."""
    try:
        return read_manifest_bytes(path)
    except (OSError, ValueError):
        return None


def _owner_of(path: Path) -> tuple[int, int] | None:
    """uid/gid for files we create: the store's owner, when we run as root (usually ollama)."""
    if os.geteuid() != 0:
        return None
    st = path.stat()
    return st.st_uid, st.st_gid


def _make_dirs(path: Path, owner: tuple[int, int] | None) -> None:
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o755, exist_ok=True)
        if owner is not None:
            os.chown(directory, *owner)


def _place(staged_file: Path, target: Path, owner: tuple[int, int] | None) -> bool:
    """Move a staged file into place without ever replacing an existing file.

    ``link`` fails if the target exists, which makes "place unless present" atomic; where the
    filesystem has no hard links we fall back to rename after checking, which has a small race
    that only another writer of the very same digest could lose.
    """
    os.chmod(staged_file, 0o644)
    if owner is not None:
        os.chown(staged_file, *owner)
    try:
        os.link(staged_file, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
            raise
        if target.exists():
            return False
        os.replace(staged_file, target)
        return True
    staged_file.unlink()
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_store(store: ModelStore, archive: Path) -> RestoreReport:
    """Restore a backup archive into the store; refuse it whole if anything is wrong.

    Every member is staged and checked (names, types, sizes, digests, the index) in a
    directory inside the store, so the final renames stay on one filesystem. Existing blobs and
    manifests are never replaced: identical ones are kept, a differing one refuses the restore.
    Blobs are placed before manifests, so Ollama never sees a model whose blobs are not there.
    """
    if not archive.is_file():
        raise StoreError(f"archive {archive} does not exist")
    _make_dirs(store.root, None)
    owner = _owner_of(store.root)
    staging = Path(tempfile.mkdtemp(dir=store.root, prefix=".ollama-watchdog-restore-"))
    try:
        try:
            staged = _stage_archive(archive, staging)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise RestoreRefused(f"archive is truncated or damaged ({exc}); refused") from None
        except Exception as exc:
            # zstandard raises its own ZstdError for a damaged frame
            if type(exc).__name__ == "ZstdError":
                raise RestoreRefused(f"archive is truncated or damaged ({exc}); refused") from None
            raise

        conflicts: list[str] = []
        new_blobs: list[str] = []
        for digest, path in sorted(staged.blobs.items()):
            target = store.blob_path(digest)
            if not target.exists():
                new_blobs.append(digest)
            elif target.stat().st_size != path.stat().st_size or hash_file(target) != digest:
                conflicts.append(
                    f"blob {digest} exists with different content (corrupt?); "
                    "run `ollama-watchdog models verify`, delete it, restore again"
                )
        new_manifests: list[str] = []
        for relpath, manifest in sorted(staged.manifests.items()):
            target = store.manifest_path(manifest.name)
            if not target.exists():
                new_manifests.append(relpath)
            elif _existing_manifest(target) != manifest.raw:
                conflicts.append(
                    f"model {manifest.name} exists with a different manifest; "
                    f"`ollama rm {manifest.name}` first to replace it"
                )
        if conflicts:
            raise RestoreRefused(f"{conflicts[0]} ({len(conflicts)} conflicts); nothing restored")

        _make_dirs(store.blobs_dir, owner)
        placed_bytes = 0
        placed_blobs = 0
        for digest in new_blobs:
            if _place(staged.blobs[digest], store.blob_path(digest), owner):
                placed_blobs += 1
                placed_bytes += staged.index_blobs[digest]
        _fsync_dir(store.blobs_dir)
        for number, relpath in enumerate(new_manifests):
            manifest = staged.manifests[relpath]
            target = store.manifest_path(manifest.name)
            _make_dirs(target.parent, owner)
            staged_manifest = staging / f"manifest-{number}"
            with staged_manifest.open("xb") as out:
                out.write(manifest.raw)
                out.flush()
                os.fsync(out.fileno())
            _place(staged_manifest, target, owner)
            _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreReport(
        models=tuple(sorted(str(m.name) for m in staged.manifests.values())),
        blobs_placed=placed_blobs,
        blobs_present=len(staged.blobs) - len(new_blobs),
        manifests_placed=len(new_manifests),
        manifests_present=len(staged.manifests) - len(new_manifests),
        bytes_placed=placed_bytes,
    )


__all__ = ["RestoreReport", "restore_store"]
