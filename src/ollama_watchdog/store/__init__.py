"""Ollama's model store on disk: manifests and blobs; verify, backup and restore.

Layout (FACTS.md §5)::

    <models>/manifests/<host>/<namespace>/<model>/<tag>   Docker v2 manifest JSON
    <models>/blobs/sha256-<64 hex>                         one file per layer and config

Ollama checks a digest only when a blob *arrives* (pull, upload, create); it never re-hashes
on load, so a bit-flipped or truncated blob surfaces later as an obscure llama.cpp load error.
``verify`` hashes every referenced blob itself. ``backup`` writes only what manifests reference
(plus a digest index), and ``restore`` checks every byte against that index in a staging
directory before it places anything, so a damaged or hostile archive changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import IO, TYPE_CHECKING, BinaryIO, Literal

from ollama_watchdog.collectors.process import classify_argv

if TYPE_CHECKING:
    from ollama_watchdog.config import Config

#: digest as manifests and the API write it
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
#: blob file name; anything else in blobs/ (``-partial`` downloads, create's temp files) is ignored
BLOB_NAME_RE = re.compile(r"^sha256-([0-9a-f]{64})$")

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

#: name of the digest index, always the first member of a backup archive
INDEX_NAME = "ollama-watchdog-backup.json"
INDEX_FORMAT = "ollama-watchdog-backup"
INDEX_VERSION = 1
#: manifests are a few KiB; a bigger member is not a manifest (and must not be read into memory)
_MAX_SMALL_MEMBER = 16 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1024 * 1024

ProblemKind = Literal["missing", "corrupt", "unreferenced"]


class StoreError(Exception):
    """A store operation could not be done; the message is one line for the operator."""


class RestoreRefused(StoreError):
    """The archive was refused; nothing was placed in the store."""


@dataclass(frozen=True, slots=True)
class ModelName:
    """``[host/][namespace/]model[:tag]`` with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        path, tag = text, DEFAULT_TAG
        if ":" in text.rsplit("/", 1)[-1]:
            path, tag = text.rsplit(":", 1)
        parts = path.split("/")
        if len(parts) == 1:
            parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
        elif len(parts) == 2:
            parts = [DEFAULT_HOST, *parts]
        if len(parts) != 3 or not all(parts) or not tag:
            raise StoreError(f"invalid model name {text!r} (want [host/][namespace/]model[:tag])")
        return cls(parts[0], parts[1], parts[2], tag)

    @property
    def relpath(self) -> str:
        """Path of the manifest below ``manifests/`` (posix)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"

    def __str__(self) -> str:
        # the shortest form, as /api/tags shows it
        if self.host == DEFAULT_HOST and self.namespace == DEFAULT_NAMESPACE:
            return f"{self.model}:{self.tag}"
        if self.host == DEFAULT_HOST:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob a manifest references (its config or a layer)."""

    media_type: str
    digest: str
    size: int

    @property
    def blob_name(self) -> str:
        return self.digest.replace(":", "-", 1)


@dataclass(frozen=True, slots=True)
class Manifest:
    """One model tag: its manifest file and the blobs it references."""

    name: ModelName
    raw: bytes
    config: Layer
    layers: tuple[Layer, ...]

    @property
    def digest(self) -> str:
        """sha256 of the manifest bytes (the ``digest`` of /api/tags, with prefix)."""
        return "sha256:" + hashlib.sha256(self.raw).hexdigest()

    @property
    def blobs(self) -> tuple[Layer, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class BadManifest:
    """A manifest file that could not be parsed (Ollama then skips pruning, with a WARN)."""

    relpath: str
    error: str


def parse_manifest(name: ModelName, raw: bytes) -> Manifest:
    """Parse manifest bytes; raise ``ValueError`` naming what is wrong."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")

    def layer(item: object, where: str) -> Layer:
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        digest, size = item.get("digest"), item.get("size")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise ValueError(f"{where} has an invalid digest {digest!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"{where} has an invalid size {size!r}")
        return Layer(str(item.get("mediaType", "")), digest, size)

    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise ValueError("no layers list")
    return Manifest(
        name=name,
        raw=raw,
        config=layer(doc.get("config"), "config"),
        layers=tuple(layer(item, f"layer {i}") for i, item in enumerate(layers)),
    )


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
        # Ollama lists exactly four levels (manifests/*/*/*/*); so do we
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            if not path.is_file():
                continue
            rel = path.relative_to(self.manifests_dir).as_posix()
            host, namespace, model, tag = rel.split("/")
            try:
                manifests.append(
                    parse_manifest(ModelName(host, namespace, model, tag), path.read_bytes())
                )
            except (OSError, ValueError) as exc:
                bad.append(BadManifest(rel, str(exc)))
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
            name = ModelName.parse(text)
            manifest = by_path.get(name.relpath)
            if manifest is None:
                raise StoreError(f"model {text!r} not found in {self.manifests_dir}")
            if manifest not in chosen:
                chosen.append(manifest)
        return chosen


def hash_stream(stream: IO[bytes], limit: int | None = None) -> tuple[str, int]:
    """sha256 (``sha256:<hex>``) and length of a stream, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    total = 0
    while limit is None or total < limit:
        want = _CHUNK if limit is None else min(_CHUNK, limit - total)
        chunk = stream.read(want)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return "sha256:" + digest.hexdigest(), total


def hash_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hash_stream(fh)[0]


# --------------------------------------------------------------------------------------------
# progress


class Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal.

    Thread-safe: verify's workers report from several threads. At most ~10 redraws a second,
    so a store of many small blobs does not spend its time writing to the terminal.
    """

    def __init__(self, label: str, total_items: int, total_bytes: int, stream: IO[str]) -> None:
        self._label = label
        self._items = total_items
        self._bytes = max(total_bytes, 1)
        self._stream = stream
        self._enabled = stream.isatty()
        self._done_items = 0
        self._done_bytes = 0
        self._last_draw = 0.0
        self._lock = threading.Lock()

    def advance(self, nbytes: int, item_done: bool = False) -> None:
        if not self._enabled:
            return
        with self._lock:
            self._done_bytes += nbytes
            self._done_items += int(item_done)
            now = time.monotonic()
            if now - self._last_draw < 0.1 and self._done_items < self._items:
                return
            self._last_draw = now
            line = self._render()
        self._stream.write("\r" + line)
        self._stream.flush()

    def _render(self) -> str:
        frac = min(self._done_bytes / self._bytes, 1.0)
        bar = "#" * int(frac * 30)
        return (
            f"{self._label} [{bar:<30}] {frac:6.1%} {self._done_items}/{self._items} blobs "
            f"{human_bytes(self._done_bytes)}/{human_bytes(self._bytes)}"
        )

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


class _ProgressReader:
    """A read-only stream wrapper that reports the bytes read to a :class:`Progress`."""

    def __init__(self, inner: IO[bytes], progress: Progress) -> None:
        self._inner = inner
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._progress.advance(len(data))
        return data


# --------------------------------------------------------------------------------------------
# verify


@dataclass(frozen=True, slots=True)
class BlobProblem:
    """One blob that is missing, does not match its digest, or that nothing references."""

    kind: ProblemKind
    digest: str
    #: models whose manifests reference it (empty for unreferenced)
    models: tuple[str, ...]
    detail: str

    def line(self) -> str:
        used = f" ({', '.join(self.models)})" if self.models else ""
        return f"{self.kind} {self.digest}{used}: {self.detail}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of hashing every referenced blob."""

    models: int
    blobs_checked: int
    bytes_hashed: int
    problems: tuple[BlobProblem, ...]
    bad_manifests: tuple[BadManifest, ...]

    @property
    def sound(self) -> bool:
        """No missing or corrupt blob and no unreadable manifest (unreferenced is only noted)."""
        return not self.bad_manifests and all(p.kind == "unreferenced" for p in self.problems)

    def of_kind(self, kind: ProblemKind) -> list[BlobProblem]:
        return [p for p in self.problems if p.kind == kind]


def default_jobs() -> int:
    # hashing is disk-bound on spinning disks and CPU-bound on NVMe; a few threads cover both
    # (hashlib releases the GIL on large buffers) without thrashing a single HDD head
    return max(1, min(4, os.cpu_count() or 1))


def verify_store(
    store: ModelStore,
    *,
    jobs: int | None = None,
    progress_stream: IO[str] | None = None,
) -> VerifyReport:
    """Hash every blob a manifest references; report missing, corrupt and unreferenced blobs."""
    scan = store.scan()
    refs = scan.referenced()
    problems: list[BlobProblem] = []
    to_hash: list[Layer] = []
    for digest, layer in sorted(refs.items()):
        present_size = scan.present.get(digest)
        if present_size is None:
            problems.append(
                BlobProblem("missing", digest, scan.models_using(digest), "blob file is absent")
            )
        elif present_size != layer.size:
            # a size mismatch is proof enough; hashing a truncated multi-GiB file tells nothing more
            problems.append(
                BlobProblem(
                    "corrupt",
                    digest,
                    scan.models_using(digest),
                    f"size {present_size} bytes, manifest says {layer.size}",
                )
            )
        else:
            to_hash.append(layer)

    progress = Progress(
        "verifying", len(to_hash), sum(b.size for b in to_hash), progress_stream or sys.stderr
    )

    def check(layer: Layer) -> BlobProblem | None:
        path = store.blob_path(layer.digest)
        try:
            with path.open("rb") as fh:
                actual, _ = hash_stream(_ProgressReader(fh, progress))  # type: ignore[arg-type]
        except OSError as exc:
            return BlobProblem(
                "missing", layer.digest, scan.models_using(layer.digest), f"unreadable: {exc}"
            )
        finally:
            progress.advance(0, item_done=True)
        if actual != layer.digest:
            return BlobProblem(
                "corrupt", layer.digest, scan.models_using(layer.digest), f"content is {actual}"
            )
        return None

    with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
        results = list(pool.map(check, to_hash))
    progress.finish()
    problems.extend(p for p in results if p is not None)
    for digest in sorted(set(scan.present) - set(refs)):
        problems.append(
            BlobProblem(
                "unreferenced",
                digest,
                (),
                f"{human_bytes(scan.present[digest])}; Ollama deletes it at its next start",
            )
        )
    order = {"missing": 0, "corrupt": 1, "unreferenced": 2}
    problems.sort(key=lambda p: (order[p.kind], p.digest))
    return VerifyReport(
        models=len(scan.manifests),
        blobs_checked=len(refs),
        bytes_hashed=sum(b.size for b in to_hash),
        problems=tuple(problems),
        bad_manifests=scan.bad_manifests,
    )


# --------------------------------------------------------------------------------------------
# backup


@dataclass(frozen=True, slots=True)
class BackupReport:
    """What went into an archive."""

    output: Path
    models: tuple[str, ...]
    blobs: int
    bytes: int
    compressed: bool


class _HashingReader:
    """Feeds tarfile and hashes the bytes on the way, so a corrupt blob never lands in a backup."""

    def __init__(self, inner: BinaryIO, progress: Progress) -> None:
        self._inner = inner
        self._progress = progress
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.sha.update(data)
        self._progress.advance(len(data))
        return data


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
                        reader = _HashingReader(fh, progress)
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
    zstandard = _zstandard()
    writer = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(raw, closefd=False)
    try:
        yield writer
    finally:
        writer.close()


def _zstandard() -> ModuleType:
    # optional: only zstd archives need it, and plain tar keeps restore possible without it
    try:
        import zstandard
    except ImportError:
        raise StoreError(
            "zstd archives need the 'zstandard' Python package (pip install zstandard)"
        ) from None
    return zstandard


# --------------------------------------------------------------------------------------------
# restore


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


_MANIFEST_MEMBER_RE = re.compile(r"^manifests/([^/]+/[^/]+/[^/]+/[^/]+)$")
_BLOB_MEMBER_RE = re.compile(r"^blobs/(sha256-[0-9a-f]{64})$")


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
        if not _MANIFEST_MEMBER_RE.match(f"manifests/{relpath}") or not isinstance(entry, dict):
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


def _open_archive(fh: BinaryIO) -> IO[bytes]:
    head = fh.read(4)
    fh.seek(0)
    if head == _ZSTD_MAGIC:
        reader: IO[bytes] = _zstandard().ZstdDecompressor().stream_reader(fh)
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
                if name != INDEX_NAME or member.size > _MAX_SMALL_MEMBER:
                    raise RestoreRefused(
                        f"first archive member is {name!r}, not the index {INDEX_NAME}; refused"
                    )
                staged = _read_index(stream.read())
                continue
            if blob_match := _BLOB_MEMBER_RE.match(name):
                _stage_blob(staged, blob_match.group(1), member, stream, staging)
            elif manifest_match := _MANIFEST_MEMBER_RE.match(name):
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
        while chunk := stream.read(_CHUNK):
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
    if member.size > _MAX_SMALL_MEMBER:
        raise RestoreRefused(f"archive manifest {relpath} is too large")
    raw = stream.read()
    if "sha256:" + hashlib.sha256(raw).hexdigest() != entry[0] or len(raw) != entry[1]:
        raise RestoreRefused(f"archive manifest {relpath} does not match its digest; refused")
    host, namespace, model, tag = relpath.split("/")
    try:
        staged.manifests[relpath] = parse_manifest(ModelName(host, namespace, model, tag), raw)
    except ValueError as exc:
        raise RestoreRefused(f"archive manifest {relpath} is invalid: {exc}") from None


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
            elif target.read_bytes() != manifest.raw:
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


# --------------------------------------------------------------------------------------------
# Ollama process detection (restore warns while the server runs)


def running_ollama_servers(proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of running Ollama servers (the team's rule, ``classify_argv``), from ``proc_root``."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for entry in proc_root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile, or not ours to read
            argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
            if classify_argv(argv) == "server":
                pids.append(int(entry.name))
    return sorted(pids)


# --------------------------------------------------------------------------------------------
# CLI: ollama-watchdog models verify|backup|restore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``verify``, ``backup`` and ``restore`` subcommands to the ``models`` parser."""
    sub = parser.add_subparsers(dest="models_command", metavar="{verify,backup,restore}")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--models-dir",
            type=Path,
            default=None,
            help="Ollama's models directory (default: [ollama] models_dir)",
        )

    verify = sub.add_parser(
        "verify",
        help="hash every referenced blob; exit 1 when a blob is missing or corrupt",
        description="Hash every blob referenced by every manifest and report missing, corrupt "
        "and unreferenced blobs. Exit 0 when sound, 1 when problems were found.",
    )
    common(verify)
    verify.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"blobs hashed in parallel (default {default_jobs()})",
    )
    backup = sub.add_parser(
        "backup",
        help="write models and only the blobs they reference to a tar (zstd with .zst)",
        description="Back up the named models (all when none) into a tar archive with a digest "
        "index. A name ending in .zst or .tzst (or --zstd) compresses with zstd.",
    )
    common(backup)
    backup.add_argument("--output", "-o", type=Path, required=True, help="archive to write")
    backup.add_argument(
        "--zstd", action=argparse.BooleanOptionalAction, default=None, help="compress with zstd"
    )
    backup.add_argument("models", nargs="*", metavar="MODEL", help="model[:tag] (default: all)")
    restore = sub.add_parser(
        "restore",
        help="verify an archive, then place its blobs and manifests atomically",
        description="Check every digest in the archive before placing anything; never replaces "
        "an existing differing file. Exit 0 restored, 1 refused.",
    )
    common(restore)
    restore.add_argument("archive", type=Path, metavar="FILE", help="archive from `models backup`")


def main(args: argparse.Namespace, config: Config) -> int:
    """Run ``models verify|backup|restore``; returns the exit code."""
    models_dir: Path = args.models_dir or config.ollama.models_dir
    store = ModelStore(models_dir)
    out, err = sys.stdout, sys.stderr
    try:
        if args.models_command == "verify":
            if not store.manifests_dir.is_dir():
                print(f"no manifests directory in {models_dir}", file=err)
                return 1
            report = verify_store(store, jobs=args.jobs)
            return _print_verify(report, out)
        if args.models_command == "backup":
            result = backup_store(store, args.output, args.models, zstd=args.zstd)
            kind = "tar.zst" if result.compressed else "tar"
            print(
                f"backed up {len(result.models)} models, {result.blobs} blobs "
                f"({human_bytes(result.bytes)}) to {result.output} ({kind})",
                file=out,
            )
            return 0
        if args.models_command == "restore":
            for pid in running_ollama_servers():
                print(
                    f"warning: ollama is running (pid {pid}); restart it after the restore so it "
                    "lists the models, and not during it: at start-up it deletes blobs no "
                    "manifest references yet",
                    file=err,
                )
            restored = restore_store(store, args.archive)
            print(
                f"restored {len(restored.models)} models: {restored.blobs_placed} blobs placed "
                f"({human_bytes(restored.bytes_placed)}), {restored.blobs_present} already "
                f"present; {restored.manifests_placed} manifests placed, "
                f"{restored.manifests_present} already present",
                file=out,
            )
            return 0
    except RestoreRefused as exc:
        print(f"restore refused: {exc}", file=err)
        return 1
    except StoreError as exc:
        print(f"error: {exc}", file=err)
        return 1
    raise AssertionError(f"unknown models command {args.models_command!r}")


def _print_verify(report: VerifyReport, out: IO[str]) -> int:
    for bad in report.bad_manifests:
        print(f"bad manifest {bad.relpath}: {bad.error}", file=out)
    for problem in report.problems:
        print(problem.line(), file=out)
    missing, corrupt = len(report.of_kind("missing")), len(report.of_kind("corrupt"))
    unreferenced = len(report.of_kind("unreferenced"))
    summary = (
        f"{report.models} models, {report.blobs_checked} blobs, "
        f"{human_bytes(report.bytes_hashed)} hashed: {missing} missing, {corrupt} corrupt, "
        f"{unreferenced} unreferenced"
    )
    if report.bad_manifests:
        summary += f", {len(report.bad_manifests)} bad manifests"
    print(("OK: " if report.sound else "PROBLEMS: ") + summary, file=out)
    return 0 if report.sound else 1


def blob_models(store: ModelStore) -> dict[str, tuple[str, ...]]:
    """Blob file name (``sha256-<hex>``) -> model names, to name a runner's ``--model`` blob."""
    scan = store.scan()
    result: dict[str, tuple[str, ...]] = {}
    for digest in scan.referenced():
        result[digest.replace(":", "-", 1)] = scan.models_using(digest)
    return result


__all__ = [
    "BackupReport",
    "BadManifest",
    "BlobProblem",
    "Layer",
    "Manifest",
    "ModelName",
    "ModelStore",
    "RestoreRefused",
    "RestoreReport",
    "StoreError",
    "StoreScan",
    "VerifyReport",
    "add_arguments",
    "backup_store",
    "blob_models",
    "main",
    "parse_manifest",
    "restore_store",
    "running_ollama_servers",
    "verify_store",
]
