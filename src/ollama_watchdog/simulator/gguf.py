"""Just enough of the GGUF format for what ``POST /api/create`` does with a weights blob.

Ollama's create handler ("parsing GGUF") reads the file's header, key/value metadata and tensor
infos, and fills the model config from them: ``general.architecture`` becomes the family,
``general.file_type`` the quantization level, and the element count of all tensors the
parameter size (``format.HumanNumber``). Tensor data is never read. A file whose first four
bytes are not ``GGUF`` fails with ``invalid file magic`` (``fs/ggml`` Decode), a short one with
``unexpected EOF`` (Go's ``io.ErrUnexpectedEOF``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"GGUF"

#: llama.cpp ``llama_ftype`` values by the names Ollama shows (``fs/ggml`` FileType.String).
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}

# GGUF value types: fixed-size ones by struct format; 8 = string, 9 = array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Bounds that keep a hostile or corrupt header from making us allocate or loop for ever.
_MAX_STRING = 1 << 20
_MAX_COUNT = 1 << 24
_MAX_DIMS = 8


class GgufError(ValueError):
    """The blob is not a readable GGUF file; the message is what Ollama reports."""


@dataclass(frozen=True)
class GgufInfo:
    """What create takes from a GGUF header for the model config."""

    version: int
    architecture: str  # "" when the file has no general.architecture
    file_type: str  # "unknown" without general.file_type
    parameter_count: int  # elements of all tensors


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise GgufError("unexpected EOF")
    return data


def _unpack(stream: BinaryIO, fmt: str) -> int | float | bool:
    value: int | float | bool = struct.unpack(fmt, _read(stream, struct.calcsize(fmt)))[0]
    return value


def _count(stream: BinaryIO, limit: int) -> int:
    value = int(_unpack(stream, "<Q"))
    if value > limit:
        raise GgufError(f"gguf: count {value} exceeds limit {limit}")
    return value


def _string(stream: BinaryIO) -> str:
    return _read(stream, _count(stream, _MAX_STRING)).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int) -> object:
    if kind in _SCALARS:
        return _unpack(stream, _SCALARS[kind])
    if kind == _STRING:
        return _string(stream)
    if kind == _ARRAY:
        item_kind = int(_unpack(stream, "<I"))
        count = _count(stream, _MAX_COUNT)
        if item_kind in _SCALARS:
            # Arrays (token lists, scores) are skipped, not decoded: create needs none of them.
            _read(stream, count * struct.calcsize(_SCALARS[item_kind]))
            return None
        for _ in range(count):
            _value(stream, item_kind)
        return None
    raise GgufError(f"invalid type {kind}")


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse header, metadata and tensor infos of ``path``; raise ``GgufError`` or ``OSError``."""
    with open(path, "rb") as stream:
        if stream.read(4) != MAGIC:
            raise GgufError("invalid file magic")
        version = int(_unpack(stream, "<I"))
        if version not in (2, 3):
            raise GgufError(f"unsupported gguf version {version}")
        tensors = _count(stream, _MAX_COUNT)
        pairs = _count(stream, _MAX_COUNT)
        metadata: dict[str, object] = {}
        for _ in range(pairs):
            key = _string(stream)
            metadata[key] = _value(stream, int(_unpack(stream, "<I")))
        parameters = 0
        for _ in range(tensors):
            _string(stream)  # tensor name
            dims = int(_unpack(stream, "<I"))
            if dims > _MAX_DIMS:
                raise GgufError(f"gguf: tensor has {dims} dimensions")
            elements = 1
            for _ in range(dims):
                elements *= int(_unpack(stream, "<Q"))
            _read(stream, 4 + 8)  # ggml type, data offset
            parameters += elements
    architecture = metadata.get("general.architecture")
    file_type = metadata.get("general.file_type")
    return GgufInfo(
        version=version,
        architecture=architecture if isinstance(architecture, str) else "",
        file_type=(FILE_TYPES.get(file_type, "unknown")
                   if isinstance(file_type, int) and not isinstance(file_type, bool)
                   else "unknown"),
        parameter_count=parameters,
    )


def human_number(value: int) -> str:
    """Ollama's ``format.HumanNumber``: 3.2B, 494.03M, 137M, 22K, 512."""
    for scale, suffix, digits in ((1_000_000_000, "B", 1), (1_000_000, "M", 2),
                                  (1_000, "K", 0)):
        if value >= scale:
            number = value / scale
            if number == int(number):
                return f"{int(number)}{suffix}"
            return f"{number:.{digits}f}{suffix}"
    return str(value)


def gguf_header(architecture: str = "", file_type: int | None = None,
                tensor_shapes: tuple[tuple[int, ...], ...] = ()) -> bytes:
    """A minimal valid GGUF v3 file: header, the given metadata and tensor infos, no data.

    For tests and fixtures: what ``read_gguf_info`` and Ollama's create read, nothing more.
    """
    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = b""
    pairs = 0
    if architecture:
        kv += text("general.architecture") + struct.pack("<I", _STRING) + text(architecture)
        pairs += 1
    if file_type is not None:
        kv += text("general.file_type") + struct.pack("<II", 4, file_type)
        pairs += 1
    infos = b""
    offset = 0
    for index, shape in enumerate(tensor_shapes):
        infos += text(f"blk.{index}.weight") + struct.pack("<I", len(shape))
        infos += b"".join(struct.pack("<Q", dim) for dim in shape)
        infos += struct.pack("<IQ", 0, offset)  # F32 type; data (absent) would follow
        elements = 1
        for dim in shape:
            elements *= dim
        offset += elements * 4
    return MAGIC + struct.pack("<IQQ", 3, len(tensor_shapes), pairs) + kv + infos
