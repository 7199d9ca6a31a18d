"""Random-weight llama models that a real ``llama-server`` loads, installed as Ollama would.

The simulator's fake models (``catalog.py``) are GGUF headers and nothing more: enough for the
API, not for a real runner. This module writes a complete llama GGUF (FACTS.md §8: the KV
keys, an SPM vocabulary of byte tokens plus some ``▁word`` pieces, a chat template, f32
tensors) whose output is noise but whose loading, KV cache, slots and timings are real, and
installs it in a models dir the way ``ollama create`` does (FACTS.md §5), through the
simulator's own create code (``create.py``), so the config blob and manifest are written in
one place only.

Writing uses PyPI ``gguf`` (llama.cpp's own writer) and numpy, which are test/dev extras, not
dependencies of the package: they are imported when a model is written, with a clear error
when missing.

``python -m ollama_watchdog.simulator.llamamodel --models DIR --name tiny:latest --size 600K``
writes and installs one model and prints ``name<TAB>blob path<TAB>size``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ollama_watchdog.ollama.names import BLOB_NAME_RE, ModelName
from ollama_watchdog.simulator.create import CreateError, prepare_create, run_create

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: a llama's usual attention head width; ``n_head`` defaults to ``n_embd // HEAD_DIM``
HEAD_DIM: Final = 64
#: ``▁word`` pieces after the specials and the 256 byte tokens (FACTS.md §8 used 50: 309 tokens)
DEFAULT_VOCAB_WORDS: Final = 50
#: GGUF's default tensor data alignment
_ALIGN: Final = 32
#: widths ``params_for_size`` chooses from (multiples of the head width, as real models use)
_WIDTHS: Final = (64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096)
_PREFERRED_LAYERS: Final = 16
_MAX_LAYERS: Final = 64
#: a fixed set of real words, so generated text reads as words (it is still noise)
_WORDS: Final = (
    "the", "of", "and", "to", "in", "is", "that", "it", "for", "was", "on", "are", "as",
    "with", "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word",
    "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up",
    "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if",
    "will",
)
#: Jinja for llama-server's /v1/chat/completions (the vocabulary has no chat specials, so the
#: role markers are plain text)
CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
_SPECIALS: Final = ("<unk>", "<s>", "</s>")
_UNK, _BOS, _EOS = 0, 1, 2
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


class LlamaShape(NamedTuple):
    """The dimensions that set a llama's size."""

    n_embd: int
    n_layer: int
    n_ff: int


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """A model placed in a models dir: its name, manifest and weights blob."""

    name: ModelName
    manifest: Path
    blob: Path
    size: int  # bytes of the weights blob

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the weights blob."""
        match = BLOB_NAME_RE.match(self.blob.name)
        assert match is not None  # install_model names it so
        return "sha256:" + match.group(1)


def vocab_size(n_vocab_words: int = DEFAULT_VOCAB_WORDS) -> int:
    """Tokens in the vocabulary: ``<unk> <s> </s>``, 256 byte tokens, the word pieces."""
    return len(_SPECIALS) + 256 + n_vocab_words


def default_n_ff(n_embd: int) -> int:
    """Feed-forward width when none is given: twice the embedding (FACTS.md §8's sizes)."""
    return 2 * n_embd


def _tensor_shapes(
    n_embd: int, n_layer: int, n_ff: int, n_vocab: int
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor with its numpy shape (out, in), in file order."""
    n_embd_kv = n_embd  # n_head_kv == n_head: no grouped-query attention
    yield "token_embd.weight", (n_vocab, n_embd)
    yield "output_norm.weight", (n_embd,)
    yield "output.weight", (n_vocab, n_embd)
    for i in range(n_layer):
        blk = f"blk.{i}"
        yield f"{blk}.attn_norm.weight", (n_embd,)
        yield f"{blk}.attn_q.weight", (n_embd, n_embd)
        yield f"{blk}.attn_k.weight", (n_embd_kv, n_embd)
        yield f"{blk}.attn_v.weight", (n_embd_kv, n_embd)
        yield f"{blk}.attn_output.weight", (n_embd, n_embd)
        yield f"{blk}.ffn_norm.weight", (n_embd,)
        yield f"{blk}.ffn_gate.weight", (n_ff, n_embd)
        yield f"{blk}.ffn_up.weight", (n_ff, n_embd)
        yield f"{blk}.ffn_down.weight", (n_embd, n_ff)


def estimate_size(
    n_embd: int, n_layer: int, n_ff: int | None = None,
    n_vocab_words: int = DEFAULT_VOCAB_WORDS,
) -> int:
    """Bytes of tensor data :func:`write_llama_gguf` writes (the header adds a few KiB)."""
    ff = default_n_ff(n_embd) if n_ff is None else n_ff
    total = 0
    for _, shape in _tensor_shapes(n_embd, n_layer, ff, vocab_size(n_vocab_words)):
        total += -(-math.prod(shape) * 4 // _ALIGN) * _ALIGN
    return total


def params_for_size(
    target_bytes: int, *, n_vocab_words: int = DEFAULT_VOCAB_WORDS
) -> LlamaShape:
    """A shape whose file comes close to ``target_bytes`` (f32, ``n_ff = 2 * n_embd``).

    The narrowest width (64 to 4096) that reaches the target in at most 16 blocks, as real
    llamas are shaped (a 1 B model is 16 x 2048, not 64 x 1024): 600 KiB gives 3 x 64
    (0.6 MiB), 100 MiB 10 x 512, 2 GiB 13 x 2048 (2.04 GiB).
    Past 16 blocks of 4096 the blocks grow to 64.
    """
    if target_bytes <= 0:
        raise ValueError(f"target size must be positive, not {target_bytes}")
    for n_embd in _WIDTHS:
        base = estimate_size(n_embd, 0, n_vocab_words=n_vocab_words)
        per_block = estimate_size(n_embd, 1, n_vocab_words=n_vocab_words) - base
        n_layer = max(1, round((target_bytes - base) / per_block))
        if n_layer <= _PREFERRED_LAYERS or n_embd == _WIDTHS[-1]:
            return LlamaShape(n_embd, min(n_layer, _MAX_LAYERS), default_n_ff(n_embd))
    raise AssertionError("unreachable: the widest width always returns")


def parse_size(text: str) -> int:
    """``600K``, ``2G``, ``1.5GiB``, ``123`` -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r} (want a number with K, M, G or T)")
    scale = 1024 ** " KMGT".index(match.group(2).upper() or " ")
    return int(float(match.group(1)) * scale)


def _vocabulary(n_vocab_words: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of an SPM (``tokenizer.ggml.model = llama``) vocabulary."""
    from gguf import TokenType

    tokens = list(_SPECIALS)
    types = [int(TokenType.UNKNOWN), int(TokenType.CONTROL), int(TokenType.CONTROL)]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [int(TokenType.BYTE)] * 256
    for i in range(n_vocab_words):
        word = _WORDS[i] if i < len(_WORDS) else f"w{i}"
        tokens.append("▁" + word)
        types.append(int(TokenType.NORMAL))
    # SPM scores are log-probabilities: only the word pieces rank, the rest score 0
    scores = [0.0] * (len(_SPECIALS) + 256) + [-float(i + 1) for i in range(n_vocab_words)]
    return tokens, scores, types


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
        import numpy  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(
            f"writing a llama GGUF needs the 'gguf' and 'numpy' packages ({exc}); they are in"
            " the test extra: pip install -e '.[test]'"
        ) from None


def write_llama_gguf(
    path: Path,
    *,
    n_embd: int,
    n_layer: int,
    n_ff: int | None = None,
    n_head: int | None = None,
    n_vocab_words: int = DEFAULT_VOCAB_WORDS,
    context_length: int = 4096,
    seed: int = 0,
    name: str = "tiny-random-llama",
) -> None:
    """Write a random-weight llama GGUF (f32) that llama.cpp loads and generates from.

    Deterministic for a given shape and ``seed``. Tensors are written one at a time, so a
    multi-GiB model needs memory for its largest tensor only. Written beside ``path`` and
    renamed, so a reader never sees half a file under that name.
    """
    _require_gguf()
    import numpy as np
    from gguf import GGUFWriter, LlamaFileType

    n_ff = default_n_ff(n_embd) if n_ff is None else n_ff
    n_head = max(1, n_embd // HEAD_DIM) if n_head is None else n_head
    if min(n_embd, n_layer, n_ff, n_head, context_length) <= 0 or n_vocab_words < 0:
        raise ValueError("dimensions must be positive")
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    tokens, scores, types = _vocabulary(n_vocab_words)
    shapes = list(_tensor_shapes(n_embd, n_layer, n_ff, len(tokens)))

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    writer = GGUFWriter(tmp_name, "llama")
    try:
        writer.add_name(name)
        writer.add_context_length(context_length)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_file_type(int(LlamaFileType.ALL_F32))
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(_BOS)
        writer.add_eos_token_id(_EOS)
        writer.add_unk_token_id(_UNK)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)
        f32 = np.dtype(np.float32)
        for tensor_name, shape in shapes:
            writer.add_tensor_info(tensor_name, shape, f32, math.prod(shape) * 4)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        rng = np.random.default_rng(seed)
        for tensor_name, shape in shapes:
            writer.write_tensor_data(_weights(rng, tensor_name, shape))
        writer.close()
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    finally:
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)


def _weights(
    rng: np.random.Generator, name: str, shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    import numpy as np

    if name.endswith("norm.weight"):
        # RMS-norm gains of 1: random ones would only scale the noise
        return np.ones(shape, dtype=np.float32)
    # small weights keep activations finite through the blocks (as an untrained init would)
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _linked_blob_digest(blobs: Path, source: Path) -> str | None:
    """The digest of the blob that *is* ``source`` (its hard link, from an earlier install into
    this store), or None. Its content is the file's, so a simulator started again on the same
    work dir does not read every GGUF again: a restart under the demo's supervisor would
    otherwise spend seconds per GiB hashing, which Ollama's own start never does (it reads the
    manifests, not the blobs)."""
    try:
        want = source.stat()
        entries = list(os.scandir(blobs))
    except OSError:
        return None
    for entry in entries:
        match = BLOB_NAME_RE.match(entry.name)
        if match is None:
            continue
        try:
            got = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino):
            return match.group(1)
    return None


def _place_blob(blobs: Path, source: Path, hexdigest: str) -> Path:
    """``blobs/sha256-<hex>`` for ``source``: a hard link where possible, else a copy."""
    final = blobs / f"sha256-{hexdigest}"
    if final.exists():
        return final
    # Through a temp name as Ollama's own (``sha256-<random>``), never seen under the digest
    # before it is whole.
    fd, tmp_name = tempfile.mkstemp(prefix="sha256-", dir=blobs)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, tmp)
            tmp.chmod(0o644)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return final


def install_model(
    models_dir: Path,
    name: str,
    gguf_path: Path,
    *,
    template: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> InstalledModel:
    """Place a GGUF in ``models_dir`` as ``ollama create NAME`` with ``FROM gguf_path`` does.

    The weights become ``blobs/sha256-<hex>`` (hard-linked to ``gguf_path`` when on the same
    file system, so do not change that file afterwards; copied otherwise); the config blob
    (``model_format gguf``, family, parameter size and file type read from the GGUF), the
    optional template and params layers and the manifest are written by the simulator's create
    code, exactly as for ``POST /api/create``. Raises ``ValueError`` for a name Ollama would
    refuse or a file that is not GGUF.
    """
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    hexdigest = _linked_blob_digest(blobs, gguf_path) or _sha256_file(gguf_path)
    blob = _place_blob(blobs, gguf_path, hexdigest)
    request: dict[str, Any] = {"model": name, "files": {"model.gguf": f"sha256:{hexdigest}"}}
    if template is not None:
        request["template"] = template
    if params:
        request["parameters"] = dict(params)
    try:
        plan = prepare_create(request, models_dir)
        manifest = run_create(plan, models_dir, era_go_runner=False, progress=lambda _: None)
    except CreateError as exc:
        raise ValueError(f"cannot install {name!r}: {exc.message}") from None
    return InstalledModel(plan.name, manifest, blob, blob.stat().st_size)


def write_and_install(
    models_dir: Path, name: str, target_bytes: int, *, seed: int = 0,
    template: str | None = None,
) -> InstalledModel:
    """A model of about ``target_bytes`` written straight into ``models_dir`` and installed."""
    if ModelName.parse_valid(name) is None:
        # before the write: a bad name should not cost a multi-GiB model
        raise ValueError(f"cannot install {name!r}: invalid model name")
    shape = params_for_size(target_bytes)
    blobs = models_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    # Written inside blobs/ so that installing is a link on the same file system, not a copy.
    fd, tmp_name = tempfile.mkstemp(prefix="sha256-", suffix=".gguf", dir=blobs)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write_llama_gguf(tmp, n_embd=shape.n_embd, n_layer=shape.n_layer, n_ff=shape.n_ff,
                         seed=seed, name=name)
        return install_model(models_dir, name, tmp, template=template)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_watchdog.simulator.llamamodel",
        description="Write a random-weight llama GGUF that llama-server runs, and install it"
        " in an Ollama models dir. Prints: name, blob path, size (tab-separated).",
    )
    parser.add_argument("--models", type=Path, required=True, help="the models dir")
    parser.add_argument("--name", required=True, help="model name, e.g. tiny:latest")
    parser.add_argument("--size", type=parse_size, required=True,
                        help="about how big: 600K, 2G (powers of 1024)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument("--template", help="an Ollama (Go) template layer to add")
    args = parser.parse_args(argv)
    try:
        model = write_and_install(args.models, args.name, args.size, seed=args.seed,
                                  template=args.template)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"llamamodel: {exc}", file=sys.stderr)
        return 1
    print(f"{model.name}\t{model.blob}\t{model.size}")
    return 0


__all__ = [
    "CHAT_TEMPLATE",
    "DEFAULT_VOCAB_WORDS",
    "InstalledModel",
    "LlamaShape",
    "estimate_size",
    "install_model",
    "params_for_size",
    "parse_size",
    "vocab_size",
    "write_and_install",
    "write_llama_gguf",
]

if __name__ == "__main__":
    sys.exit(main())
