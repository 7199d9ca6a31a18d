"""The simulator's models: a real Ollama store on disk (FACTS.md §5) and the installed set.

Fake models are written as a genuine store (manifests + ``sha256-<hex>`` blobs with correct
digests), so everything that reads a models dir (the runner's ``--model`` blob path, the log
collector's blob→model mapping, ``models verify``) sees the same layout as with real Ollama.
Blobs are tiny; sizes reported by the API are the real sizes of those files. Names, media
types and the manifest layout come from :mod:`ollama_watchdog.ollama.names`.

:class:`Catalog` is the installed set while the simulator runs (what ``/api/tags`` lists,
``/api/create`` adds to and ``/api/delete`` removes from); which of them are *loaded* is the
scheduler's (``scheduler.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ollama_watchdog.ollama.names import (
    BLOB_NAME_RE,
    CONFIG_MEDIA_TYPE,
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    ModelName,
    manifest_paths,
    normalize_name,
    read_manifest_bytes,
)

#: Fixed manifest mtime of fake models, so ``modified_at`` is stable between runs.
_FAKE_MTIME = datetime(2026, 8, 1, 12, 0, 0).timestamp()


@dataclass(frozen=True)
class Model:
    """One model as the API shows it."""

    name: str  # shortest form, e.g. "llama3.2:latest"
    digest: str  # hex sha256 of the manifest bytes, no prefix
    size: int  # sum of layer sizes plus the config blob (manifest.Size())
    modified_at: float  # manifest mtime, seconds since the epoch
    blob_path: Path  # the GGUF weights the runner is started with
    family: str
    parameter_size: str
    quantization_level: str
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    memory_bytes: int  # what the loaded runner claims in /api/ps ``size``

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities and "completion" not in self.capabilities


@dataclass(frozen=True)
class _FakeSpec:
    model: str
    tag: str
    family: str
    parameter_size: str
    quantization: str
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    memory_bytes: int


_FAKE_SPECS = (
    _FakeSpec("llama3.2", "latest", "llama", "3.2B", "Q4_K_M", ("completion", "tools"),
              131072, 3072, 3_012_345_856),
    _FakeSpec("qwen2.5", "0.5b", "qwen2", "494.03M", "Q4_K_M", ("completion", "tools"),
              32768, 896, 736_100_352),
    _FakeSpec("nomic-embed-text", "latest", "nomic-bert", "137M", "F16", ("embedding",),
              2048, 768, 312_852_480),
    _FakeSpec("gemma3", "1b", "gemma3", "999.89M", "Q4_K_M", ("completion",),
              32768, 1152, 1_416_626_176),
    _FakeSpec("phi3", "mini", "phi3", "3.8B", "Q4_0", ("completion",),
              131072, 3072, 3_520_118_784),
    _FakeSpec("mistral", "7b", "llama", "7.2B", "Q4_0", ("completion", "tools"),
              32768, 4096, 5_125_439_488),
)


def _fake_spec(index: int) -> _FakeSpec:
    if index < len(_FAKE_SPECS):
        return _FAKE_SPECS[index]
    return _FakeSpec(f"sim-model-{index:02d}", "latest", "llama", "1.2B", "Q8_0",
                     ("completion",), 8192, 2048, 1_300_000_000 + index * 1_048_576)


class Catalog:
    """The installed models by display name, shared by all request threads."""

    def __init__(self, models: list[Model]) -> None:
        self._models = {m.name: m for m in models}
        self._lock = threading.Lock()

    def models(self) -> list[Model]:
        """All of them, newest first (as ``/api/tags`` sorts them)."""
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.modified_at, reverse=True)

    def find(self, name: str) -> Model | None:
        with self._lock:
            return self._models.get(normalize_name(name))

    def put(self, model: Model) -> None:
        """Add a created model, or replace the one of the same name."""
        with self._lock:
            self._models[model.name] = model

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._models.pop(normalize_name(name), None) is not None


def write_blob(blobs: Path, data: bytes) -> tuple[str, int, bool]:
    """Store ``data`` as ``sha256-<hex>``: (hex digest, size, True if it was not there yet)."""
    hexdigest = hashlib.sha256(data).hexdigest()
    path = blobs / f"sha256-{hexdigest}"
    if path.exists():
        return hexdigest, len(data), False
    # Through a temp name: a reader never sees a half-written blob under its digest.
    tmp = blobs / f"sha256-{os.getpid()}-{threading.get_ident()}"
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return hexdigest, len(data), True


def _write_blob(blobs: Path, data: bytes) -> tuple[str, int]:
    hexdigest, size, _ = write_blob(blobs, data)
    return hexdigest, size


def write_fake_store(models_dir: Path, count: int) -> None:
    """Write ``count`` fake models as a real store layout (idempotent, deterministic)."""
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        spec = _fake_spec(index)
        # A GGUF magic and version followed by bytes that differ per model, so digests differ.
        weights = b"GGUF\x03\x00\x00\x00" + hashlib.sha256(spec.model.encode()).digest() * 64
        model_hex, model_size = _write_blob(blobs, weights)
        params = json.dumps({"stop": ["<|eot_id|>"], "temperature": 0.7}).encode()
        params_hex, params_size = _write_blob(blobs, params)
        template = b"{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"
        template_hex, template_size = _write_blob(blobs, template)
        config = {
            "model_format": "gguf",
            "model_family": spec.family,
            "model_families": [spec.family],
            "model_type": spec.parameter_size,
            "file_type": spec.quantization,
            "architecture": "amd64",
            "os": "linux",
            # Not in real configs: lets the simulator restore its nominal numbers on re-read.
            "simulator": {
                "capabilities": list(spec.capabilities),
                "context_length": spec.context_length,
                "embedding_length": spec.embedding_length,
                "memory_bytes": spec.memory_bytes,
            },
        }
        config_hex, config_size = _write_blob(blobs, json.dumps(config).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{config_hex}",
                       "size": config_size},
            "layers": [
                {"mediaType": MODEL_MEDIA_TYPE, "digest": f"sha256:{model_hex}",
                 "size": model_size},
                {"mediaType": "application/vnd.ollama.image.template",
                 "digest": f"sha256:{template_hex}", "size": template_size},
                {"mediaType": "application/vnd.ollama.image.params",
                 "digest": f"sha256:{params_hex}", "size": params_size},
            ],
        }
        name = ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, spec.model, spec.tag)
        path = models_dir / "manifests" / name.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        # Go's json.Encoder: compact, trailing newline (locally created manifests).
        path.write_bytes(json.dumps(manifest, separators=(",", ":")).encode() + b"\n")
        os.utime(path, (_FAKE_MTIME + index, _FAKE_MTIME + index))


def _guess_memory(weights_size: int, parameter_size: str) -> int:
    """A plausible runner allocation for a model read from a real store."""
    return max(weights_size, 64 << 20) + (256 << 20)


def read_model(models_dir: Path, manifest_path: Path) -> Model | None:
    """The model one manifest describes, or None when the manifest cannot be read."""
    try:
        raw = read_manifest_bytes(manifest_path)  # never a FIFO's open, never a huge read
        manifest = json.loads(raw)
        layers = manifest.get("layers", [])
        config_ref = manifest.get("config", {})
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(layers, list) or not isinstance(config_ref, dict):
        return None
    name = ModelName.from_manifest_path(models_dir / "manifests", manifest_path)
    size = int(config_ref.get("size", 0)) + sum(int(layer.get("size", 0)) for layer in layers)
    weights = next((layer for layer in layers if layer.get("mediaType") == MODEL_MEDIA_TYPE),
                   None)
    weights_hex = str(weights["digest"]).replace("sha256:", "") if weights else "0" * 64
    config: dict[str, object] = {}
    config_digest = str(config_ref.get("digest", "")).replace("sha256:", "")
    try:
        loaded = json.loads((models_dir / "blobs" / f"sha256-{config_digest}").read_bytes())
        if isinstance(loaded, dict):
            config = loaded
    except (OSError, ValueError):
        pass
    extra = config.get("simulator")
    extra = extra if isinstance(extra, dict) else {}
    family = str(config.get("model_family", "") or "")
    parameter_size = str(config.get("model_type", "") or "")
    capabilities = tuple(str(c) for c in extra.get("capabilities", ("completion",)))
    if "bert" in family and "simulator" not in config:
        capabilities = ("embedding",)
    return Model(
        name=str(name),
        digest=hashlib.sha256(raw).hexdigest(),
        size=size,
        modified_at=manifest_path.stat().st_mtime,
        blob_path=models_dir / "blobs" / f"sha256-{weights_hex}",
        family=family,
        parameter_size=parameter_size,
        quantization_level=str(config.get("file_type", "") or ""),
        capabilities=capabilities,
        context_length=int(extra.get("context_length", 4096)),
        embedding_length=int(extra.get("embedding_length", 768)),
        memory_bytes=int(
            extra.get("memory_bytes", _guess_memory(int(weights["size"]) if weights else 0,
                                                    parameter_size))
        ),
    )


def read_store(models_dir: Path) -> list[Model]:
    """All models of a store, newest first (as ``/api/tags`` sorts them)."""
    found = [
        model
        for path in manifest_paths(models_dir)
        if (model := read_model(models_dir, path)) is not None
    ]
    return sorted(found, key=lambda m: m.modified_at, reverse=True)


def count_blobs(models_dir: Path) -> int:
    """What Ollama's start-up ``total blobs: N`` line counts."""
    try:
        return sum(1 for p in (models_dir / "blobs").iterdir() if BLOB_NAME_RE.match(p.name))
    except OSError:
        return 0
