"""Model names and the store's manifests: the one reader of Ollama's on-disk layout.

Layout (FACTS.md §5)::

    <models>/manifests/<host>/<namespace>/<model>/<tag>   Docker v2 manifest JSON
    <models>/blobs/sha256-<64 hex>                         one file per layer and config

Everything that turns a name into a manifest path, a manifest into blobs, or a blob back into a
model name (the model store commands, the log collector's blob -> model label, the simulator)
uses this module, so the rules (defaults, the shortest display form, which layer holds the
weights) are written once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ollama_watchdog.boundedread import FileRefused, FileTooLarge, read_bounded

#: digest as manifests and the API write it
DIGEST_RE: Final = re.compile(r"^sha256:([0-9a-f]{64})$")
#: blob file name; anything else in blobs/ (``-partial`` downloads, create's temp files) is ignored
BLOB_NAME_RE: Final = re.compile(r"^sha256-([0-9a-f]{64})$")

#: a manifest is a JSON list of a few layers, about a KiB; a file larger than this is not one
MAX_MANIFEST_BYTES: Final = 1024 * 1024

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"

#: media types of a manifest's layers (FACTS.md §5)
MODEL_MEDIA_TYPE: Final = "application/vnd.ollama.image.model"
CONFIG_MEDIA_TYPE: Final = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA_TYPE: Final = "application/vnd.docker.distribution.manifest.v2+json"

# Ollama's model.Name.IsValid (types/model/name.go): a small alphabet per part, at most 80
# characters (the host 350: it may carry a port)
_HOST_PART: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$")
_NAME_PART: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")


class InvalidName(ValueError):
    """A model name that cannot name a manifest; the message says the accepted form."""


def display_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The shortest form Ollama shows (FACTS.md §1.2): ``llama3.2:latest``, ``user/m:tag``."""
    if host == DEFAULT_HOST:
        return f"{model}:{tag}" if namespace == DEFAULT_NAMESPACE else f"{namespace}/{model}:{tag}"
    return f"{host}/{namespace}/{model}:{tag}"


def normalize_name(name: str) -> str:
    """A request's model name in display form: ``llama3.2`` -> ``llama3.2:latest``."""
    name = name.strip()
    for prefix in (f"{DEFAULT_HOST}/{DEFAULT_NAMESPACE}/", f"{DEFAULT_NAMESPACE}/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":" + DEFAULT_TAG
    return name


@dataclass(frozen=True, slots=True)
class ModelName:
    """``[host/][namespace/]model[:tag]`` with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """Split a name as a user types it; raise :class:`InvalidName` when a part is missing."""
        path, tag = text, DEFAULT_TAG
        if ":" in text.rsplit("/", 1)[-1]:
            path, tag = text.rsplit(":", 1)
        parts = path.split("/")
        if len(parts) == 1:
            parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
        elif len(parts) == 2:
            parts = [DEFAULT_HOST, *parts]
        if len(parts) != 3 or not all(parts) or not tag:
            raise InvalidName(f"invalid model name {text!r} (want [host/][namespace/]model[:tag])")
        return cls(parts[0], parts[1], parts[2], tag)

    @classmethod
    def parse_valid(cls, text: str) -> ModelName | None:
        """Like :meth:`parse` with Ollama's own validity rules (the alphabet and lengths of
        ``model.ParseName`` + ``IsValid``); None when Ollama would refuse the name."""
        try:
            name = cls.parse(text)
        except InvalidName:
            return None
        ok = (
            _HOST_PART.match(name.host)
            and _NAME_PART.match(name.namespace)
            and _NAME_PART.match(name.model)
            and _NAME_PART.match(name.tag)
        )
        return name if ok else None

    @classmethod
    def from_manifest_path(cls, manifests_dir: Path, path: Path) -> ModelName:
        """The name a manifest file stands for (its four path parts below ``manifests/``)."""
        host, namespace, model, tag = path.relative_to(manifests_dir).parts
        return cls(host, namespace, model, tag)

    @property
    def relpath(self) -> str:
        """Path of the manifest below ``manifests/`` (posix)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"

    def __str__(self) -> str:
        # the shortest form, as /api/tags shows it
        return display_name(self.host, self.namespace, self.model, self.tag)


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob a manifest references (its config or a layer)."""

    media_type: str
    digest: str
    size: int

    @property
    def blob_name(self) -> str:
        return self.digest.replace(":", "-", 1)

    @property
    def hex(self) -> str:
        """The digest without its ``sha256:`` prefix (the runner's blob file name suffix)."""
        return self.digest.split(":", 1)[-1]


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

    @property
    def weights(self) -> Layer | None:
        """The layer holding the model's weights (the GGUF a runner loads), if any."""
        return next((b for b in self.layers if b.media_type == MODEL_MEDIA_TYPE), None)


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


def manifest_paths(models_dir: Path) -> Iterator[Path]:
    """Every manifest path, sorted; Ollama lists exactly four levels (manifests/*/*/*/*).

    Whatever is at that depth and is not a directory is yielded, a FIFO or a device too: the
    reader refuses it with a reason (:func:`read_manifest_bytes`) rather than skip it silently.
    """
    for path in sorted((models_dir / "manifests").glob("*/*/*/*")):
        if not path.is_dir():
            yield path


def read_manifest_bytes(path: Path) -> bytes:
    """A manifest file's bytes; ``ValueError`` (a FIFO, a device, too large) or ``OSError``.

    Opened without blocking and read to at most :data:`MAX_MANIFEST_BYTES`, whatever the path
    holds: a symlink to ``/dev/zero`` or a FIFO must not hang or swell the reader.
    """
    try:
        return read_bounded(path, MAX_MANIFEST_BYTES)
    except FileTooLarge as exc:
        raise ValueError(f"manifest too large ({exc}; a manifest is a few KiB)") from None
    except FileRefused as exc:
        raise ValueError(f"manifest {exc}") from None


def read_manifest(models_dir: Path, path: Path) -> Manifest:
    """One manifest file, parsed; raise ``OSError`` or ``ValueError``."""
    name = ModelName.from_manifest_path(models_dir / "manifests", path)
    return parse_manifest(name, read_manifest_bytes(path))


def read_model_blobs(
    models_dir: Path, skipped: Callable[[Path, str], None] | None = None
) -> dict[str, str]:
    """Map each model-weights blob (sha256 hex) to the model name its manifest gives it.

    A blob shared by several names (``ollama cp``) maps to the first name in sorted order, so
    the label is stable. Unreadable manifests are skipped: a name we cannot resolve is
    ``unknown``, never an error. Only the weights layers are read, not the whole manifest
    through :func:`parse_manifest`: Ollama runs a model whose config or other layers lack a
    size, and the runner's log line still names that model's blob. ``skipped`` is told each
    manifest not read and why.
    """
    blobs: dict[str, str] = {}
    manifests_dir = models_dir / "manifests"
    for path in manifest_paths(models_dir):
        try:
            layers = json.loads(read_manifest_bytes(path))["layers"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if skipped is not None:
                skipped(path, str(exc) if isinstance(exc, (OSError, ValueError)) else "no layers")
            continue
        name = str(ModelName.from_manifest_path(manifests_dir, path))
        for layer in layers if isinstance(layers, list) else ():
            if not isinstance(layer, dict) or layer.get("mediaType") != MODEL_MEDIA_TYPE:
                continue
            digest = layer.get("digest")
            if isinstance(digest, str) and (m := DIGEST_RE.match(digest)):
                blobs.setdefault(m.group(1), name)
    return blobs


__all__ = [
    "BLOB_NAME_RE",
    "CONFIG_MEDIA_TYPE",
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "DIGEST_RE",
    "MANIFEST_MEDIA_TYPE",
    "MAX_MANIFEST_BYTES",
    "MODEL_MEDIA_TYPE",
    "BadManifest",
    "InvalidName",
    "Layer",
    "Manifest",
    "ModelName",
    "display_name",
    "manifest_paths",
    "normalize_name",
    "parse_manifest",
    "read_manifest",
    "read_manifest_bytes",
    "read_model_blobs",
]
