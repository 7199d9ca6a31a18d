"""The server side of ``ollama create``: blob uploads and ``POST /api/create`` (FACTS.md §1.4, §5).

``ollama create NAME -f Modelfile`` with ``FROM ./model.gguf`` hashes the file, uploads it to
``POST /api/blobs/sha256:<hex>`` (the server hashes while writing a temp file in ``blobs/``
and renames it to the digest it computed), then POSTs ``/api/create`` with the Modelfile's
fields. The server parses the GGUF, points the model layer at the uploaded blob, writes one
blob per template/system/params/messages/license, a config blob, and the manifest at
``manifests/<host>/<namespace>/<model>/<tag>``. Everything here writes a real store.

Deliberate simplifications: Go templates are not validated; the 0.30+ re-write of the GGUF
through ``llama-quantize`` (a new model digest) is not done, the uploaded digest is used as
≤0.24 does; replaced manifests' old layers are not pruned; only GGUF imports. Name rules and
media types come from :mod:`ollama_watchdog.ollama.names`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ollama_watchdog.ollama.names import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    ModelName,
)
from ollama_watchdog.simulator.catalog import write_blob
from ollama_watchdog.simulator.gguf import MAGIC, GgufError, human_number, read_gguf_info
from ollama_watchdog.simulator.protocol import go_json, json_kind

#: ``manifest/paths.go``: the API spells a digest with ``:``, file names with ``-``.
DIGEST_PATTERN = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
MSG_INVALID_DIGEST = "invalid digest format"
MSG_INVALID_NAME = "invalid model name"

_MEDIA = "application/vnd.ollama.image."
_TEMPLATE, _SYSTEM, _PARAMS = _MEDIA + "template", _MEDIA + "system", _MEDIA + "params"
_MESSAGES, _LICENSE = _MEDIA + "messages", _MEDIA + "license"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class CreateError(Exception):
    """A create or upload failure: ``{"error": message}`` with ``status`` (when not streamed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- blobs ------------------------------------------------------------------------------------


def blob_path(models_dir: Path, digest: str) -> Path:
    """``manifest.BlobsPath``: the file of a digest; ``CreateError(400)`` for a bad format."""
    match = DIGEST_PATTERN.match(digest)
    if match is None:
        raise CreateError(400, MSG_INVALID_DIGEST)
    return models_dir / "blobs" / f"sha256-{match.group(1).lower()}"


def receive_blob(models_dir: Path, digest: str, chunks: Iterable[bytes]) -> int:
    """``CreateBlobHandler``: 200 when the blob exists (body left unread), 201 once stored.

    Hashes while streaming into ``blobs/sha256-<random>`` and renames the file to the digest
    it *computed*, as Ollama's ``NewLayer`` does, so a mismatched upload still leaves a blob
    (unreferenced, pruned at the next start) and then fails with 400.
    """
    path = blob_path(models_dir, digest)
    if path.exists():
        return 200
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix="sha256-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            for chunk in chunks:
                hasher.update(chunk)
                tmp.write(chunk)
        os.chmod(tmp_name, 0o644)
        got = f"sha256:{hasher.hexdigest()}"
        final = path.parent / f"sha256-{hasher.hexdigest()}"
        if not final.exists():
            os.replace(tmp_name, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    if got != digest:
        raise CreateError(400, f'digest mismatch, expected "{digest}", got "{got}"')
    return 201


# -- create -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One manifest entry (``manifest.Layer``; ``from`` only on model layers)."""

    media_type: str
    digest: str
    size: int
    source: str = ""

    def as_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest,
                                    "size": self.size}
        if self.source:
            entry["from"] = self.source
        return entry


@dataclass(frozen=True)
class CreatePlan:
    """A validated create request: what ``run_create`` does after the stream has started."""

    name: ModelName
    files: tuple[tuple[str, str], ...]  # (file name, digest), sorted by name
    base: ModelName | None  # ``from`` an existing local model
    template: str | None
    system: str | None
    licenses: tuple[str, ...]
    parameters: dict[str, Any]
    messages: tuple[dict[str, Any], ...]
    extra_config: dict[str, str]  # renderer, parser, requires when given


def _string_field(req: dict[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is None or isinstance(value, str):
        return value
    raise CreateError(400, _unmarshal_error(value, key, "string"))


def _unmarshal_error(value: object, field: str, go_type: str) -> str:
    return (f"json: cannot unmarshal {json_kind(value)} into Go struct field"
            f" CreateRequest.{field} of type {go_type}")


def _file_kind(models_dir: Path, file_name: str, digest: str) -> str:
    """``detectModelTypeFromFile``: by extension, else by the blob's magic."""
    if file_name.endswith(".safetensors"):
        return "safetensors"
    if file_name.endswith(".gguf"):
        return "gguf"
    path = blob_path(models_dir, digest)
    try:
        with open(path, "rb") as blob:
            head = blob.read(4)
    except FileNotFoundError:
        raise CreateError(400, f"blob not found for {file_name} (digest {digest}): open {path}:"
                               " no such file or directory") from None
    return "gguf" if head == MAGIC else ""


def prepare_create(req: dict[str, Any], models_dir: Path) -> CreatePlan:
    """Everything Ollama checks before its first progress line; ``CreateError(400)`` if not."""
    files = req.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise CreateError(400, _unmarshal_error(files, "files", "map[string]string"))
    for file_name, digest in files.items():
        posix = PurePosixPath(file_name)
        if (file_name in ("", ".") or posix.is_absolute() or ".." in posix.parts
                or any(c in file_name for c in "\\:")):
            raise CreateError(400, f"file path must be relative: {file_name}")
        if not DIGEST_PATTERN.match(digest):
            raise CreateError(400, f"invalid digest for {file_name}: {MSG_INVALID_DIGEST}")
    if req.get("adapters"):
        raise CreateError(400, "LoRA adapters are no longer supported")
    name = ModelName.parse_valid(str(req.get("model") or req.get("name") or ""))
    if name is None:
        raise CreateError(400, MSG_INVALID_NAME)
    base_name = _string_field(req, "from")
    base = None
    if base_name:
        base = ModelName.parse_valid(base_name)
        if base is None:
            raise CreateError(400, MSG_INVALID_NAME)
    elif not files:
        raise CreateError(400, "neither 'from' or 'files' was specified")
    kinds = {_file_kind(models_dir, f, d) for f, d in sorted(files.items())} - {""}
    if len(kinds) > 1:
        raise CreateError(400, "mixed model file types: found both gguf and safetensors inputs")
    if files and kinds != {"gguf"}:
        # The simulator imports GGUF only (safetensors import needs Ollama's converters).
        raise CreateError(400, "unknown type" if not kinds else
                          "supplied file was not in GGUF format")
    licenses = req.get("license")
    if isinstance(licenses, str):
        licenses = [licenses]
    if licenses is not None and (not isinstance(licenses, list)
                                 or not all(isinstance(x, str) for x in licenses)):
        raise CreateError(400, "license must be a string or an array of strings")
    parameters = req.get("parameters") or {}
    messages = req.get("messages") or []
    if not isinstance(parameters, dict):
        raise CreateError(400, _unmarshal_error(parameters, "parameters",
                                                "map[string]interface {}"))
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise CreateError(400, _unmarshal_error(messages, "messages", "[]api.Message"))
    extra = {key: value for key in ("renderer", "parser", "requires")
             if (value := _string_field(req, key))}
    return CreatePlan(
        name=name, files=tuple(sorted(files.items())), base=base,
        template=_string_field(req, "template"), system=_string_field(req, "system"),
        licenses=tuple(licenses or ()), parameters=dict(sorted(parameters.items())),
        messages=tuple({"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
                       for m in messages),
        extra_config=extra,
    )


def manifest_path(models_dir: Path, name: ModelName) -> Path:
    return models_dir / "manifests" / name.relpath


def _go_encoder(value: object) -> bytes:
    """Go's ``json.NewEncoder(w).Encode``: Marshal output plus a newline."""
    return go_json(value) + b"\n"


def _base_layers(models_dir: Path, base: ModelName) -> tuple[list[Layer], dict[str, Any]]:
    path = manifest_path(models_dir, base)
    try:
        manifest = _load_json(path)
        config = _load_json(blob_path(models_dir, str(manifest["config"]["digest"])))
        layers = [Layer(str(x["mediaType"]), str(x["digest"]), int(x["size"]),
                        str(x.get("from", ""))) for x in manifest["layers"]]
    except FileNotFoundError:
        # Not local: Ollama would pull it, which fails on the offline hosts we simulate.
        raise CreateError(500, f'pull model manifest: Get "https://{base.host}/v2/'
                               f'{base.namespace}/{base.model}/manifests/{base.tag}": dial tcp:'
                               f' lookup {base.host}: no such host') from None
    except (KeyError, TypeError, ValueError) as error:
        raise CreateError(500, f"invalid manifest {path}: {error}") from None
    return layers, config if isinstance(config, dict) else {}


def _load_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _gguf_layers(models_dir: Path, plan: CreatePlan, era_go_runner: bool,
                 progress: Callable[[str], None]) -> tuple[list[Layer], dict[str, Any]]:
    layers: list[Layer] = []
    config: dict[str, Any] = {}
    for file_name, digest in plan.files:
        progress("parsing GGUF")
        path = blob_path(models_dir, digest)
        try:
            info = read_gguf_info(path)
        except FileNotFoundError:
            raise CreateError(500, f"open {path}: no such file or directory") from None
        except GgufError as error:
            raise CreateError(500, str(error)) from None
        # ≤0.24 recorded the full blob path as the layer's source, later versions the file name.
        source = str(path) if era_go_runner else file_name
        layers.append(Layer(MODEL_MEDIA_TYPE, f"sha256:{path.name[7:]}", path.stat().st_size,
                            source))
        if not config:
            config = {"model_format": "gguf", "model_family": info.architecture,
                      "model_families": [info.architecture],
                      "model_type": human_number(info.parameter_count),
                      "file_type": info.file_type}
    return layers, config


def run_create(plan: CreatePlan, models_dir: Path, *, era_go_runner: bool,
               progress: Callable[[str], None]) -> Path:
    """Build the layers, config and manifest; report progress lines; the manifest's path.

    A ``CreateError`` raised here comes after progress has been streamed.
    """
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if plan.base is not None:
        layers, config = _base_layers(models_dir, plan.base)
        config.pop("rootfs", None)
    else:
        layers, config = _gguf_layers(models_dir, plan, era_go_runner, progress)
    statuses = [f"using existing layer {layer.digest}" for layer in layers]

    def replace(media_type: str, payloads: list[bytes]) -> None:
        nonlocal layers
        layers = [layer for layer in layers if layer.media_type != media_type]
        for data in payloads:
            hexdigest, size, created = write_blob(blobs, data)
            digest = f"sha256:{hexdigest}"
            layers.append(Layer(media_type, digest, size))
            statuses.append(f"{'creating new' if created else 'using existing'} layer {digest}")

    if plan.template is not None:
        replace(_TEMPLATE, [plan.template.encode()])
    if plan.system is not None:
        replace(_SYSTEM, [plan.system.encode()])
    if plan.licenses:
        replace(_LICENSE, [text.encode() for text in plan.licenses])
    if plan.parameters:
        replace(_PARAMS, [_go_encoder(plan.parameters)])
    if plan.messages:
        replace(_MESSAGES, [_go_encoder(list(plan.messages))])
    for status in statuses:
        progress(status)
    config.update(plan.extra_config)
    config.update(architecture=_ARCH.get(platform.machine(), platform.machine()), os="linux")
    config_hex, config_size, _ = write_blob(blobs, _go_encoder(config))
    progress("writing manifest")
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": f"sha256:{config_hex}",
                   "size": config_size},
        "layers": [layer.as_json() for layer in layers],
    }
    path = manifest_path(models_dir, plan.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: a listing never sees half a manifest. The temp file lives in
    # blobs/, where Ollama's own temp files go, so it is never mistaken for a tag.
    fd, tmp_name = tempfile.mkstemp(prefix="sha256-", dir=blobs)
    with os.fdopen(fd, "wb") as tmp:
        tmp.write(_go_encoder(manifest))
    os.chmod(tmp_name, 0o644)
    os.replace(tmp_name, path)
    return path
