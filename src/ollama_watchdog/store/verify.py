"""``models verify``: hash every blob a manifest references, since Ollama never re-hashes one.

A size mismatch is reported without hashing; the rest are hashed on a few threads. Blobs no
manifest references are noted (Ollama deletes them at its next start) but are not a failure.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Literal

from ollama_watchdog.ollama.names import BadManifest, Layer
from ollama_watchdog.store import ModelStore
from ollama_watchdog.store.hashing import hash_stream
from ollama_watchdog.store.progress import Progress, ProgressReader, human_bytes

ProblemKind = Literal["missing", "corrupt", "unreferenced"]


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
    """Blobs hashed in parallel unless ``--jobs`` says otherwise."""
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
                actual, _ = hash_stream(ProgressReader(fh, progress))  # type: ignore[arg-type]
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


__all__ = ["BlobProblem", "ProblemKind", "VerifyReport", "default_jobs", "verify_store"]
