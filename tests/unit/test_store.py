"""``ollama-watchdog models verify|backup|restore`` on a store laid out as Ollama writes it.

The stores here follow FACTS.md §5: manifests four levels deep, a config blob plus model,
template, params and license layers, blobs named ``sha256-<hex>``, a blob shared by two models,
and the download leftovers (``-partial``, ``-partial-N``, create's temp files) that must be
ignored. Everything is driven through the CLI entry point and judged by what an operator sees:
exit code, output lines, and the files in the store.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.mounts import small_filesystem

from ollama_watchdog import store
from ollama_watchdog.commands import models as models_command
from ollama_watchdog.config import Config, OllamaConfig
from ollama_watchdog.ollama.names import ModelName, parse_manifest
from ollama_watchdog.store.archive import INDEX_FORMAT, INDEX_NAME, INDEX_VERSION
from ollama_watchdog.store.restore import restore_store
from ollama_watchdog.store.verify import verify_store

MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
PARAMS = "application/vnd.ollama.image.params"
LICENSE = "application/vnd.ollama.image.license"
CONFIG = "application/vnd.docker.container.image.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_blob(root: Path, data: bytes) -> str:
    digest = digest_of(data)
    path = root / "blobs" / digest.replace(":", "-")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def add_model(
    root: Path, relpath: str, layers: list[tuple[str, bytes]], family: str, size: str = "3.2B"
) -> bytes:
    """Write blobs and a registry-style manifest (compact JSON, as pulled) for one model."""
    config = json.dumps(
        {
            "model_format": "gguf",
            "model_family": family,
            "model_families": [family],
            "model_type": size,
            "file_type": "Q4_K_M",
            "architecture": "amd64",
            "os": "linux",
        }
    ).encode()
    entries = []
    for media_type, data in layers:
        entries.append(
            {"mediaType": media_type, "digest": write_blob(root, data), "size": len(data)}
        )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": CONFIG, "digest": write_blob(root, config), "size": len(config)},
        "layers": entries,
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    path = root / "manifests" / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


@dataclass
class Built:
    root: Path
    llama_weights: str
    shared_license: str
    unreferenced: str


GGUF_HEADER = b"GGUF\x03\x00\x00\x00"


def build_store(root: Path) -> Built:
    """Three models, one shared license blob, one unreferenced blob, download leftovers."""
    license_text = b"LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\n" * 50
    weights = GGUF_HEADER + os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, odd length
    add_model(
        root,
        "registry.ollama.ai/library/llama3.2/latest",
        [
            (MODEL, weights),
            (TEMPLATE, b"<|start_header_id|>{{ .Prompt }}<|eot_id|>"),
            (PARAMS, b'{"stop":["<|eot_id|>"],"temperature":0.7}'),
            (LICENSE, license_text),
        ],
        "llama",
    )
    add_model(
        root,
        "registry.ollama.ai/library/llama3.2/1b",
        [(MODEL, GGUF_HEADER + os.urandom(40_000)), (LICENSE, license_text)],
        "llama",
        "1.2B",
    )
    add_model(
        root,
        "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF/Q4_K_M",
        [(MODEL, GGUF_HEADER + os.urandom(20_000)), (TEMPLATE, b"{{ .System }}{{ .Prompt }}")],
        "qwen2",
        "494M",
    )
    unreferenced = write_blob(root, b"left over from a model deleted while ollama was stopped")
    blobs = root / "blobs"
    # resumable download parts and a temp file of `ollama create`: never digests, never reported
    (blobs / ("sha256-" + "ab" * 32 + "-partial")).write_bytes(b"half a download")
    (blobs / ("sha256-" + "ab" * 32 + "-partial-0")).write_bytes(b"part")
    (blobs / "sha256-2384718923").write_bytes(b"create temp")
    return Built(root, digest_of(weights), digest_of(license_text), unreferenced)


def tree(root: Path) -> dict[str, bytes]:
    """Every file below root, by relative path (the store as a user would diff it)."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], models_dir: Path
) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="ollama-watchdog models")
    models_command.add_arguments(parser)
    args = parser.parse_args(argv)
    config = Config(ollama=OllamaConfig(models_dir=models_dir))
    code = models_command.main(args, config)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def built(tmp_path: Path) -> Built:
    return build_store(tmp_path / "models")


# --------------------------------------------------------------------------------------------
# verify


def test_verify_sound_store_exits_0_and_counts_every_referenced_blob(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["verify"], capsys, built.root)
    assert code == 0
    # 3 configs + 4 + 2 + 2 layers, the license shared: 3 + 7 = 10 distinct digests
    assert out.splitlines()[-1].startswith("OK: 3 models, 10 blobs")
    assert f"unreferenced {built.unreferenced}" in out
    assert "partial" not in out and "2384718923" not in out


def test_verify_uses_default_models_dir_from_config(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["verify", "--jobs", "1"], capsys, built.root)
    assert code == 0 and "OK:" in out


@pytest.mark.parametrize("where", ["after", "before"])
def test_verify_reads_models_dir_from_config_either_side_of_the_subcommand(
    built: Built, tmp_path: Path, where: str
) -> None:
    # `models verify --config F` was refused (the flag belonged to `models` only)
    config = tmp_path / "c.toml"
    config.write_text(f'[ollama]\nmodels_dir = "{built.root}"\n')
    flags = ["--config", str(config)]
    argv = ["verify", *flags] if where == "after" else [*flags, "verify"]
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "models", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("OK: 3 models, 10 blobs")


def test_verify_names_a_flipped_byte_as_corrupt_with_every_model_using_it(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    path = built.root / "blobs" / built.shared_license.replace(":", "-")
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    code, out, _ = run_cli(
        ["verify", "--models-dir", str(built.root)], capsys, Path("/nonexistent")
    )
    assert code == 1
    line = next(x for x in out.splitlines() if x.startswith("corrupt "))
    assert built.shared_license in line
    assert "llama3.2:1b" in line and "llama3.2:latest" in line
    assert f"content is {digest_of(bytes(data))}" in line
    assert out.splitlines()[-1].startswith("PROBLEMS: ")
    assert "1 corrupt" in out.splitlines()[-1]


def test_verify_reports_truncated_and_missing_blobs(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = built.root / "blobs" / built.llama_weights.replace(":", "-")
    with weights.open("r+b") as fh:
        fh.truncate(1024)
    os.unlink(built.root / "blobs" / built.shared_license.replace(":", "-"))
    code, out, _ = run_cli(["verify"], capsys, built.root)
    assert code == 1
    assert f"corrupt {built.llama_weights} (llama3.2:latest): size 1024 bytes" in out
    assert f"missing {built.shared_license} (llama3.2:1b, llama3.2:latest)" in out
    assert "1 missing, 1 corrupt" in out


def test_verify_reports_an_unparseable_manifest(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = built.root / "manifests/registry.ollama.ai/library/broken/latest"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b'{"schemaVersion":2,"layers":[{"digest":"sha256:xyz"')
    code, out, _ = run_cli(["verify"], capsys, built.root)
    assert code == 1
    assert "bad manifest registry.ollama.ai/library/broken/latest: not JSON" in out


def test_verify_without_a_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["verify"], capsys, tmp_path / "nothing")
    assert code == 1
    assert "no manifests directory" in err


# --------------------------------------------------------------------------------------------
# backup and restore round trips


def referenced_tree(built: Built) -> dict[str, bytes]:
    """What a restore must reproduce: manifests and referenced blobs, nothing else."""
    scan = store.ModelStore(built.root).scan()
    keep = {f"blobs/{d.replace(':', '-')}" for d in scan.referenced()}
    return {k: v for k, v in tree(built.root).items() if k.startswith("manifests/") or k in keep}


@pytest.mark.parametrize("archive_name", ["models.tar", "models.tar.zst"])
def test_backup_then_restore_into_an_empty_store_reproduces_it(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str], archive_name: str
) -> None:
    archive = tmp_path / archive_name
    code, out, _ = run_cli(["backup", "--output", str(archive)], capsys, built.root)
    assert code == 0
    assert "backed up 3 models, 10 blobs" in out
    if archive_name.endswith(".zst"):
        assert archive.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    target = tmp_path / "restored"
    code, out, err = run_cli(["restore", str(archive)], capsys, target)
    assert code == 0, err
    assert "restored 3 models: 10 blobs placed" in out
    assert tree(target) == referenced_tree(built)
    blob = next((target / "blobs").iterdir())
    assert blob.stat().st_mode & 0o777 == 0o644
    # no staging directory left behind, and the restored store verifies
    assert sorted(p.name for p in target.iterdir()) == ["blobs", "manifests"]
    code, out, _ = run_cli(["verify"], capsys, target)
    assert code == 0 and "0 unreferenced" in out


def test_backup_of_chosen_models_holds_only_their_blobs(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "one.tar"
    code, _, _ = run_cli(
        ["backup", "-o", str(archive), "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"],
        capsys,
        built.root,
    )
    assert code == 0
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == INDEX_NAME
    assert names[1:2] == ["manifests/hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF/Q4_K_M"]
    assert len([n for n in names if n.startswith("blobs/")]) == 3  # config, model, template
    assert built.llama_weights.replace(":", "-") not in " ".join(names)


def test_backup_of_an_unknown_model_fails_and_writes_nothing(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["backup", "-o", str(tmp_path / "x.tar"), "mistral"], capsys, built.root)
    assert code == 1
    assert "model 'mistral' not found" in err
    assert list(tmp_path.glob("x.tar*")) == [] and list(tmp_path.glob(".x.tar*")) == []


def test_backup_refuses_a_corrupt_blob_and_leaves_no_archive(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = built.root / "blobs" / built.llama_weights.replace(":", "-")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    code, _, err = run_cli(["backup", "-o", str(tmp_path / "b.tar")], capsys, built.root)
    assert code == 1
    assert f"blob {built.llama_weights} does not match its digest" in err
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_restore_keeps_identical_blobs_and_places_the_rest(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "all.tar"
    assert run_cli(["backup", "-o", str(archive)], capsys, built.root)[0] == 0
    target = tmp_path / "partial"
    # a host that already has llama3.2:1b (same bytes) and nothing else
    (target / "blobs").mkdir(parents=True)
    source = store.ModelStore(built.root)
    one = ModelName.parse("llama3.2:1b")
    manifest = parse_manifest(one, source.manifest_path(one).read_bytes())
    for blob in manifest.blobs:
        (target / "blobs" / blob.blob_name).write_bytes(source.blob_path(blob.digest).read_bytes())
    dest = target / "manifests" / one.relpath
    dest.parent.mkdir(parents=True)
    dest.write_bytes(manifest.raw)
    code, out, _ = run_cli(["restore", str(archive)], capsys, target)
    assert code == 0
    assert "7 blobs placed" in out and "3 already present" in out
    assert "2 manifests placed, 1 already present" in out
    assert tree(target) == referenced_tree(built)


def test_restore_never_overwrites_a_differing_blob(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "all.tar"
    assert run_cli(["backup", "-o", str(archive)], capsys, built.root)[0] == 0
    target = tmp_path / "damaged"
    bad = target / "blobs" / built.shared_license.replace(":", "-")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the license")
    before = tree(target)
    code, _, err = run_cli(["restore", str(archive)], capsys, target)
    assert code == 1
    assert f"blob {built.shared_license} exists with different content" in err
    assert "nothing restored" in err
    assert tree(target) == before


def test_restore_refuses_to_replace_a_different_model_of_the_same_name(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "all.tar"
    assert run_cli(["backup", "-o", str(archive)], capsys, built.root)[0] == 0
    target = tmp_path / "other"
    add_model(target, "registry.ollama.ai/library/llama3.2/latest", [(MODEL, b"GGUFother")], "x")
    before = tree(target)
    code, _, err = run_cli(["restore", str(archive)], capsys, target)
    assert code == 1
    assert "model llama3.2:latest exists with a different manifest" in err
    assert tree(target) == before


def test_restore_warns_while_an_ollama_server_runs(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "all.tar"
    assert run_cli(["backup", "-o", str(archive)], capsys, built.root)[0] == 0
    # a stand-in process matched by the team's rule: "<dir>/ollama serve" run by python
    stand_in = tmp_path / "bin" / "ollama"
    stand_in.parent.mkdir()
    stand_in.write_text("import time\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, str(stand_in), "serve"])
    try:
        code, _, err = run_cli(["restore", str(archive)], capsys, tmp_path / "t")
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert code == 0
    assert f"warning: ollama is running (pid {proc.pid})" in err


# --------------------------------------------------------------------------------------------
# hostile and damaged archives: refused, nothing placed


def member(name: str, data: bytes = b"", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def index_for(blobs: dict[str, bytes], manifests: dict[str, bytes]) -> bytes:
    doc = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "models": {"evil:latest": next(iter(manifests))} if manifests else {},
        "manifests": {k: {"digest": digest_of(v), "size": len(v)} for k, v in manifests.items()},
        "blobs": {d: len(b) for d, b in blobs.items()},
    }
    return json.dumps(doc).encode()


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def small_model() -> tuple[dict[str, bytes], dict[str, bytes]]:
    weights = GGUF_HEADER + b"tiny"
    config = b'{"model_format":"gguf"}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"mediaType": CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": [{"mediaType": MODEL, "digest": digest_of(weights), "size": len(weights)}],
        }
    ).encode()
    return (
        {digest_of(weights): weights, digest_of(config): config},
        {"registry.ollama.ai/library/evil/latest": manifest},
    )


def good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    blobs, manifests = small_model()
    out = [member(INDEX_NAME, index_for(blobs, manifests))]
    out += [member(f"manifests/{k}", v) for k, v in manifests.items()]
    out += [member(f"blobs/{d.replace(':', '-')}", b) for d, b in blobs.items()]
    return out


def hostile_archives() -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]], str]]:
    good = good_members()
    blob_name = good[2][0].name
    yield "dotdot", [*good, member("blobs/../../escaped", b"x")], "escapes the store"
    yield (
        "dotdot-manifest",
        [*good, member("manifests/../../../../etc/cron.d/x", b"x")],
        ("escapes the store"),
    )
    yield "absolute", [*good, member("/tmp/ollama-watchdog-absolute-test", b"x")], "escapes"
    yield (
        "symlink",
        [
            *good[:2],
            member(blob_name, type=tarfile.SYMTYPE, linkname="/etc/passwd"),
        ],
        "is a link",
    )
    yield (
        "hardlink",
        [
            *good[:2],
            member(blob_name, type=tarfile.LNKTYPE, linkname="/etc/shadow"),
        ],
        "is a link",
    )
    yield "device", [*good, member("blobs/dev", type=tarfile.CHRTYPE)], "non-file entry"
    yield "directory", [*good, member("blobs", type=tarfile.DIRTYPE)], "non-file entry"
    tampered = bytearray(good[2][1])
    tampered[-1] ^= 0x01
    yield (
        "content-mismatch",
        [*good[:2], member(blob_name, bytes(tampered)), good[3]],
        ("does not match its digest"),
    )
    yield "no-index", good[1:], "not the index"
    yield "index-not-first", [good[1], good[0], *good[2:]], "not the index"
    yield "unindexed-blob", [*good, member("blobs/sha256-" + "0" * 64, b"")], "not in the index"
    yield "duplicate", [*good, good[2]], "appears twice"
    yield "stray-file", [*good, member("README", b"hi")], "neither a blob nor a manifest"
    yield "missing-blob", good[:3], "truncated"


@pytest.mark.parametrize(
    ("members", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in hostile_archives()],
)
def test_hostile_archive_is_refused_and_nothing_is_placed(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    members: list[tuple[tarfile.TarInfo, bytes]],
    expected: str,
) -> None:
    archive = tmp_path / "evil.tar"
    write_tar(archive, members)
    target = tmp_path / "deep" / "models"
    target.mkdir(parents=True)
    code, out, err = run_cli(["restore", str(archive)], capsys, target)
    assert code == 1
    # the last line: a warning about a running "ollama serve" on this host may come first
    last = err.splitlines()[-1]
    assert last.startswith("restore refused: ") and expected in last
    assert out == ""
    assert tree(tmp_path / "deep") == {}
    assert list(target.iterdir()) == []  # not even the staging directory
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/ollama-watchdog-absolute-test").exists()


def test_the_good_members_alone_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the hostile cases above differ from this one only by their defect
    archive = tmp_path / "good.tar"
    write_tar(archive, good_members())
    code, out, _ = run_cli(["restore", str(archive)], capsys, tmp_path / "m")
    assert code == 0 and "restored 1 models: 2 blobs placed" in out


@pytest.mark.parametrize("suffix", [".tar", ".tar.zst"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_archive_is_refused(
    built: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, keep: float
) -> None:
    archive = tmp_path / f"all{suffix}"
    assert run_cli(["backup", "-o", str(archive)], capsys, built.root)[0] == 0
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * keep)])
    target = tmp_path / "t"
    code, _, err = run_cli(["restore", str(archive)], capsys, target)
    assert code == 1
    assert "restore refused" in err
    assert tree(target) == {}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(position=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_a_damaged_byte_anywhere_never_places_wrong_data(
    tmp_path_factory: pytest.TempPathFactory, position: float, xor: int
) -> None:
    """Whatever byte is damaged: refused with the store untouched, or a store that verifies."""
    base = tmp_path_factory.mktemp("fuzz")
    archive = base / "a.tar"
    write_tar(archive, good_members())
    data = bytearray(archive.read_bytes())
    data[int(position * len(data))] ^= xor
    archive.write_bytes(bytes(data))
    target = store.ModelStore(base / "m")
    try:
        restore_store(target, archive)
    except store.RestoreRefused:
        assert tree(target.root) == {}
        return
    # the damage hit padding or a header field that does not matter: content must be exact
    report = verify_store(target, jobs=1)
    assert report.sound and report.blobs_checked == 2


# --------------------------------------------------------------------------------------------
# model names


@pytest.mark.parametrize(
    ("text", "relpath", "shown"),
    [
        ("llama3.2", "registry.ollama.ai/library/llama3.2/latest", "llama3.2:latest"),
        ("llama3.2:1b", "registry.ollama.ai/library/llama3.2/1b", "llama3.2:1b"),
        ("user/model:v2", "registry.ollama.ai/user/model/v2", "user/model:v2"),
        (
            "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
            "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF/Q4_K_M",
            "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M",
        ),
    ],
)
def test_model_names_resolve_like_ollama(text: str, relpath: str, shown: str) -> None:
    name = ModelName.parse(text)
    assert name.relpath == relpath
    assert str(name) == shown


@pytest.mark.parametrize("text", ["", "a/b/c/d", "model:", "/model", "a//b"])
def test_invalid_model_names_are_errors(text: str) -> None:
    with pytest.raises(store.StoreError, match="invalid model name"):
        store.parse_model_name(text)


# --------------------------------------------------------------------------------------------
# hostile sizes: a 1 GB manifest, an archive that claims more than the disk holds


def test_verify_refuses_a_huge_manifest_without_reading_it(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = built.root / "manifests/registry.ollama.ai/library/huge/latest"
    huge.parent.mkdir(parents=True)
    with huge.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB of nothing
    code, out, _ = run_cli(["verify"], capsys, built.root)
    assert code == 1
    assert (
        "bad manifest registry.ollama.ai/library/huge/latest: manifest too large "
        f"(has {1 << 30} bytes, more than {1 << 20}" in out
    )
    assert "3 models" in out  # the others are still verified


def test_restore_of_an_archive_claiming_more_than_the_disk_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 10 KiB sparse tar whose one blob is 1 GiB: refused on the index's word, before
    staging a byte, naming the space needed and the space there is."""
    tar_tool = shutil.which("tar")
    if tar_tool is None:
        pytest.skip("GNU tar is needed to write a sparse archive")
    src = tmp_path / "src"
    blob = src / "blobs" / ("sha256-" + "0" * 64)
    blob.parent.mkdir(parents=True)
    with blob.open("wb") as f:
        f.truncate(1 << 30)
    (src / INDEX_NAME).write_text(json.dumps({
        "format": INDEX_FORMAT, "version": INDEX_VERSION, "models": {}, "manifests": {},
        "blobs": {"sha256:" + "0" * 64: 1 << 30},
    }))  # fmt: skip
    archive = tmp_path / "sparse.tar"
    members = [INDEX_NAME, blob.relative_to(src).as_posix()]  # the files alone, no directory
    tar = [tar_tool, "--sparse", "-cf", str(archive), "-C", str(src), *members]
    subprocess.run(tar, check=True)
    assert archive.stat().st_size < 64 * 1024
    disk = tmp_path / "disk"
    with small_filesystem(disk, "64m"):
        target = disk / "models"
        code, out, err = run_cli(["restore", str(archive)], capsys, target)
        assert code == 1 and out == ""
        last = err.splitlines()[-1]
        assert last.startswith(
            f"restore refused: the archive's index claims 1.0 GiB ({1 << 30} bytes) to stage, "
            "and the models filesystem has 64.0 MiB"
        )
        assert "free space there" in last and last.endswith("nothing restored")
        assert tree(target) == {}
        assert shutil.disk_usage(disk).used == 0  # nothing left behind
