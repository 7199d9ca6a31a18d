"""The random-weight llama generator and its install into a models dir (FACTS.md §5, §8).

The GGUF is read back with llama.cpp's own reader (PyPI ``gguf``); the installed store is judged
by the project's own store code (``ModelStore``, ``verify_store``) and by the blob -> model
mapping the log collector uses, as a user of the store would see it.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFValueType

from ollama_watchdog.ollama.names import (
    BLOB_NAME_RE,
    CONFIG_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    read_model_blobs,
)
from ollama_watchdog.simulator import llamamodel
from ollama_watchdog.simulator.llamamodel import (
    CHAT_TEMPLATE,
    estimate_size,
    install_model,
    params_for_size,
    parse_size,
    vocab_size,
    write_llama_gguf,
)
from ollama_watchdog.store import ModelStore
from ollama_watchdog.store.verify import verify_store

MIB = 1024 * 1024
GIB = 1024 * MIB
TEMPLATE_MEDIA = "application/vnd.ollama.image.template"
PARAMS_MEDIA = "application/vnd.ollama.image.params"


def field(reader: GGUFReader, key: str) -> object:
    value: object = reader.fields[key].contents()
    return value


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    n_embd, n_layer, n_ff = params_for_size(600 * 1024)
    write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=7)
    return path


def test_tiny_model_is_under_one_megabyte(tiny: Path) -> None:
    assert tiny.stat().st_size < MIB
    shape = params_for_size(600 * 1024)
    # the estimate callers size by is the tensor data; the header adds a few KiB only
    assert 0 < tiny.stat().st_size - estimate_size(*shape) < 16 * 1024


def test_gguf_metadata_is_what_was_asked(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, n_embd=128, n_layer=2, n_ff=320, n_head=4, n_vocab_words=20,
                     context_length=2048)
    reader = GGUFReader(path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.file_type") == 0
    assert field(reader, "llama.context_length") == 2048
    assert field(reader, "llama.embedding_length") == 128
    assert field(reader, "llama.block_count") == 2
    assert field(reader, "llama.feed_forward_length") == 320
    assert field(reader, "llama.attention.head_count") == 4
    assert field(reader, "llama.attention.head_count_kv") == 4
    assert field(reader, "llama.rope.dimension_count") == 32
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "tokenizer.chat_template") == CHAT_TEMPLATE


def test_vocabulary_is_spm_with_byte_tokens(tiny: Path) -> None:
    reader = GGUFReader(tiny)
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    scores = field(reader, "tokenizer.ggml.scores")
    assert isinstance(tokens, list) and isinstance(types, list) and isinstance(scores, list)
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert len(tokens) == len(types) == len(scores) == vocab_size()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert types[:3] == [2, 3, 3]  # UNKNOWN, CONTROL, CONTROL
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[3:259]) == {6}  # BYTE
    assert all(t.startswith("▁") for t in tokens[259:]) and set(types[259:]) == {1}
    assert (field(reader, "tokenizer.ggml.bos_token_id"),
            field(reader, "tokenizer.ggml.eos_token_id"),
            field(reader, "tokenizer.ggml.unknown_token_id")) == (1, 2, 0)
    assert reader.fields["tokenizer.ggml.scores"].types == [GGUFValueType.ARRAY,
                                                              GGUFValueType.FLOAT32]


def test_tensors_are_f32_with_out_in_shapes(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_llama_gguf(path, n_embd=64, n_layer=2, n_ff=96, n_vocab_words=10)
    n_vocab = vocab_size(10)
    shapes = {t.name: tuple(int(d) for d in t.data.shape) for t in GGUFReader(path).tensors}
    expected = {"token_embd.weight": (n_vocab, 64), "output_norm.weight": (64,),
                "output.weight": (n_vocab, 64)}
    for i in range(2):
        expected |= {
            f"blk.{i}.attn_norm.weight": (64,), f"blk.{i}.ffn_norm.weight": (64,),
            f"blk.{i}.attn_q.weight": (64, 64), f"blk.{i}.attn_k.weight": (64, 64),
            f"blk.{i}.attn_v.weight": (64, 64), f"blk.{i}.attn_output.weight": (64, 64),
            f"blk.{i}.ffn_gate.weight": (96, 64), f"blk.{i}.ffn_up.weight": (96, 64),
            f"blk.{i}.ffn_down.weight": (64, 96),
        }
    assert shapes == expected
    assert {int(t.tensor_type) for t in GGUFReader(path).tensors} == {0}  # GGML_TYPE_F32


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        write_llama_gguf(path, n_embd=64, n_layer=1, seed=seed)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]


@pytest.mark.parametrize(
    ("target", "low", "high"),
    [(600 * 1024, 400 * 1024, MIB), (100 * MIB, 90 * MIB, 110 * MIB),
     (2 * GIB, 1.9 * GIB, 2.1 * GIB)],
)
def test_params_for_size_lands_near_the_target(target: int, low: float, high: float) -> None:
    n_embd, n_layer, n_ff = params_for_size(target)
    assert low <= estimate_size(n_embd, n_layer, n_ff) <= high
    assert n_embd % 64 == 0 and 1 <= n_layer <= 16 and n_ff == 2 * n_embd


def test_params_for_size_of_the_known_shapes() -> None:
    assert params_for_size(600 * 1024) == (64, 3, 128)
    assert params_for_size(2 * GIB) == (2048, 13, 4096)
    # FACTS.md §8: 2 x 64 is about 0.5 MB, 8 x 2048 is 1.25 GiB
    assert estimate_size(64, 2) == pytest.approx(0.5e6, rel=0.05)
    assert estimate_size(2048, 8) == pytest.approx(1.25 * GIB, rel=0.01)


@pytest.mark.parametrize(("text", "value"), [
    ("600K", 600 * 1024), ("2G", 2 * GIB), ("1.5GiB", int(1.5 * GIB)), ("123", 123),
    ("10m", 10 * MIB), ("64KB", 64 * 1024),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "2X", "-1G", "1 2"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_installed_store_verifies_clean_and_names_the_blob(tiny: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    installed = install_model(models, "tiny:latest", tiny)

    assert str(installed.name) == "tiny:latest"
    assert installed.manifest == models / "manifests/registry.ollama.ai/library/tiny/latest"
    assert installed.size == tiny.stat().st_size
    assert BLOB_NAME_RE.match(installed.blob.name)
    assert installed.blob.read_bytes() == tiny.read_bytes()

    scan = ModelStore(models).scan()
    assert [str(m.name) for m in scan.manifests] == ["tiny:latest"] and not scan.bad_manifests
    manifest = scan.manifests[0]
    weights = manifest.weights
    assert weights is not None
    assert (weights.digest, weights.size) == (installed.digest, installed.size)
    assert manifest.config.media_type == CONFIG_MEDIA_TYPE

    report = verify_store(ModelStore(models), progress_stream=io.StringIO())
    assert report.sound and report.problems == ()
    assert report.blobs_checked == 2  # weights + config

    assert read_model_blobs(models) == {installed.digest.removeprefix("sha256:"): "tiny:latest"}


def test_config_blob_is_what_ollama_create_writes(tiny: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    install_model(models, "tiny", tiny)
    manifest = ModelStore(models).scan().manifests[0]
    doc = json.loads((models / "blobs" / manifest.config.blob_name).read_bytes())
    assert doc["model_format"] == "gguf"
    assert doc["model_family"] == "llama" and doc["model_families"] == ["llama"]
    assert doc["file_type"] == "F32"
    assert doc["model_type"].endswith("K")  # ~163K parameters, format.HumanNumber
    assert doc["os"] == "linux"


def test_template_and_params_layers(tiny: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    install_model(models, "someone/tiny:chat", tiny, template="{{ .Prompt }}",
                  params={"temperature": 0.2, "stop": ["</s>"]})
    manifest = ModelStore(models).scan().manifests[0]
    assert manifest.name.relpath == "registry.ollama.ai/someone/tiny/chat"
    media = [layer.media_type for layer in manifest.layers]
    assert media == [MODEL_MEDIA_TYPE, TEMPLATE_MEDIA, PARAMS_MEDIA]
    by_media = {layer.media_type: layer for layer in manifest.layers}
    blobs = models / "blobs"
    assert (blobs / by_media[TEMPLATE_MEDIA].blob_name).read_text() == "{{ .Prompt }}"
    params = json.loads((blobs / by_media[PARAMS_MEDIA].blob_name).read_bytes())
    assert params == {"stop": ["</s>"], "temperature": 0.2}
    assert verify_store(ModelStore(models), progress_stream=io.StringIO()).sound


def test_two_names_share_one_blob(tiny: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    a = install_model(models, "b-model:latest", tiny)
    b = install_model(models, "a-model:latest", tiny)
    assert a.blob == b.blob
    # a shared blob maps to the first name in sorted order (names.read_model_blobs)
    assert read_model_blobs(models) == {a.digest.removeprefix("sha256:"): "a-model:latest"}


def test_blob_is_a_hard_link_on_the_same_file_system(tiny: Path, tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(tiny.read_bytes())
    installed = install_model(tmp_path / "models", "tiny", source)
    assert installed.blob.stat().st_ino == source.stat().st_ino


def test_refuses_a_bad_name_and_a_non_gguf(tiny: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(ValueError, match="invalid model name"):
        install_model(models, "bad name!", tiny)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="invalid file magic"):
        install_model(models, "junk", junk)
    assert list((models / "manifests").glob("*/*/*/*")) == []


def test_cli_writes_and_installs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    rc = llamamodel.main(["--models", str(models), "--name", "tiny:latest", "--size", "600K"])
    assert rc == 0
    name, blob, size = capsys.readouterr().out.rstrip("\n").split("\t")
    assert name == "tiny:latest"
    assert Path(blob).is_file() and int(size) == Path(blob).stat().st_size < MIB
    # no temp file left behind: only sha256-<hex> blobs
    assert all(BLOB_NAME_RE.match(p.name) for p in (models / "blobs").iterdir())
    assert read_model_blobs(models) == {Path(blob).name.removeprefix("sha256-"): "tiny:latest"}
    assert verify_store(ModelStore(models), progress_stream=io.StringIO()).sound


def test_cli_reports_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = llamamodel.main(["--models", str(tmp_path), "--name", "no good", "--size", "100K"])
    assert rc == 1
    assert "invalid model name" in capsys.readouterr().err


def test_missing_gguf_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    with pytest.raises(RuntimeError, match=r"needs the 'gguf' and 'numpy' packages.*\[test\]"):
        write_llama_gguf(tmp_path / "m.gguf", n_embd=64, n_layer=1)
    assert list(tmp_path.iterdir()) == []


def test_installing_a_file_again_trusts_the_blob_that_is_its_hard_link(
    tiny: Path, tmp_path: Path
) -> None:
    """A simulator restarted on the same work dir installs its ``--model`` files again: a blob
    that is the very file (same inode) is not read again. Proof: the file changed in place since
    (which install_model's caveat forbids) keeps the first digest; a copy is hashed anew."""
    source = tmp_path / "model.gguf"
    source.write_bytes(tiny.read_bytes())
    models = tmp_path / "models"
    first = install_model(models, "tiny", source)
    size = source.stat().st_size
    last = source.read_bytes()[-1:]
    with source.open("r+b") as fh:  # same inode, same size, another last byte
        fh.seek(size - 1)
        fh.write(b"\x01" if last != b"\x01" else b"\x02")
    assert source.stat().st_size == size
    again = install_model(models, "tiny", source)
    assert (again.digest, again.blob) == (first.digest, first.blob)

    copy = tmp_path / "copy.gguf"
    copy.write_bytes(source.read_bytes())
    other = install_model(models, "copy", copy)
    assert other.digest != first.digest
