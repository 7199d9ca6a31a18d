"""The stand-in ``ollama`` executable: Modelfile parsing, OLLAMA_HOST, and serve/create for real.

The pure parts (Modelfile, ``OLLAMA_HOST``, ``OLLAMA_MODELS``) are checked against FACTS.md §3
and §6; ``serve`` and ``create`` run as the script ``write_standin`` writes, as a user would run
``ollama``, against the real simulator it starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from support.tools import free_port
from support.wait import wait_until

from ollama_watchdog.procgroup import stop_process_group
from ollama_watchdog.simulator.catalog import read_store, write_fake_store
from ollama_watchdog.simulator.gguf import gguf_header
from ollama_watchdog.simulator.standin import (
    VERSION,
    Instruction,
    ModelfileError,
    OllamaHost,
    models_dir,
    ollama_host,
    parse_modelfile,
    plan_create,
    write_standin,
)

T = 30.0  # generous deadline for waiting on processes and requests; never asserted on
WEIGHTS = gguf_header("llama", 15, ((256, 256),))

# -- Modelfile ---------------------------------------------------------------------------------


def test_modelfile_values_quoted_multiline_and_commented() -> None:
    text = (
        "# the bundle's Modelfile\n"
        "from ./model.gguf\n"
        'TEMPLATE """{{ .System }}\n'
        '  {{ .Prompt }} """\n'
        'SYSTEM "You are the plant\'s maintenance assistant."\n'
        "Parameter Temperature 0.3\n"
        'PARAMETER stop "<|end|>"\n'
        "MESSAGE user Where is pump 3?\n"
        "\n"
        "LICENSE internal use only\n"
    )
    assert parse_modelfile(text) == [
        Instruction("from", "./model.gguf"),
        # TEMPLATE keeps its whitespace: it is part of the prompt.
        Instruction("template", "{{ .System }}\n  {{ .Prompt }} "),
        Instruction("system", "You are the plant's maintenance assistant."),
        Instruction("parameter", "0.3", "temperature"),
        Instruction("parameter", "<|end|>", "stop"),
        Instruction("message", "Where is pump 3?", "user"),
        Instruction("license", "internal use only"),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "FROM x.gguf\nWEIGHTS 3\n",
            'command must be one of "from", "license", "template", "system", "adapter", "draft",'
            ' "renderer", "parser", "parameter", "message", or "requires"',
        ),
        (
            "FROM x.gguf\nMESSAGE tool hello\n",
            'message role must be one of "system", "user", or "assistant"',
        ),
        ("SYSTEM hi\n", "no FROM line"),
        ('FROM x.gguf\nTEMPLATE """never closed\n', 'unterminated """ value'),
    ],
)
def test_modelfiles_the_cli_refuses(text: str, error: str) -> None:
    with pytest.raises(ModelfileError) as exc:
        parse_modelfile(text)
    assert str(exc.value) == error


def test_create_request_types_parameters_as_api_options(tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(WEIGHTS)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        "FROM ./model.gguf\n"
        "PARAMETER num_ctx 8192\n"
        "PARAMETER top_p 0.5\n"
        "PARAMETER use_mmap false\n"
        'PARAMETER stop "<|end|>"\n'
        'PARAMETER stop "<|user|>"\n'
        "PARAMETER mirostat 2\n"
        "LICENSE one\n"
        "LICENSE two\n"
    )
    plan = plan_create("plant/assistant:v2", modelfile)
    assert plan.gguf == tmp_path / "model.gguf"
    assert plan.request == {
        "model": "plant/assistant:v2",
        "parameters": {
            "num_ctx": 8192,
            "top_p": 0.5,
            "use_mmap": False,
            "stop": ["<|end|>", "<|user|>"],
        },
        "license": ["one", "two"],
    }
    # Deprecated since 0.7.0: the CLI warns and drops it (FACTS.md §6).
    assert plan.warnings == ("warning: parameter mirostat is deprecated",)


def test_from_a_missing_path_is_a_model_name(tmp_path: Path) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM llama3.2:1b\nSYSTEM be brief\n")
    plan = plan_create("brief", modelfile)
    assert plan.gguf is None
    assert plan.request == {"model": "brief", "from": "llama3.2:1b", "system": "be brief"}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("PARAMETER tfs_z 1.0", "unknown parameter 'tfs_z'"),
        ("PARAMETER num_ctx lots", "invalid int value 'lots' for parameter 'num_ctx'"),
        ("ADAPTER ./lora.gguf", "the stand-in does not implement ADAPTER"),
    ],
)
def test_parameters_and_instructions_create_refuses(tmp_path: Path, line: str, error: str) -> None:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM base\n{line}\n")
    with pytest.raises(ModelfileError) as exc:
        plan_create("x", modelfile)
    assert str(exc.value) == error


# -- OLLAMA_HOST, OLLAMA_MODELS ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host", "port"),
    [
        (None, "127.0.0.1", 11434),
        ("", "127.0.0.1", 11434),
        ("0.0.0.0", "0.0.0.0", 11434),
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        (":8080", "", 8080),
        ("example.com", "example.com", 11434),
        # an explicit scheme changes the default port (FACTS.md §3)
        ("http://example.com", "example.com", 80),
        ("https://example.com", "example.com", 443),
        ("http://127.0.0.1:11500/", "127.0.0.1", 11500),
        ("[::1]:9000", "::1", 9000),
        ("::1", "::1", 11434),
        ("127.0.0.1:99999", "127.0.0.1", 11434),
    ],
)
def test_ollama_host_as_envconfig_reads_it(value: str | None, host: str, port: int) -> None:
    assert ollama_host(value) == OllamaHost(host, port)


def test_listen_and_client_addresses() -> None:
    assert ollama_host(":8080").listen == ":8080"
    assert ollama_host(":8080").url == "http://127.0.0.1:8080"
    assert ollama_host("[::1]:9000").listen == "[::1]:9000"
    assert ollama_host("[::1]:9000").url == "http://[::1]:9000"
    assert ollama_host("0.0.0.0").url == "http://127.0.0.1:11434"


def test_models_dir_is_ollama_models_else_the_home_store() -> None:
    assert models_dir({"OLLAMA_MODELS": "/srv/models", "HOME": "/h"}) == Path("/srv/models")
    assert models_dir({"OLLAMA_MODELS": "", "HOME": "/usr/share/ollama"}) == Path(
        "/usr/share/ollama/.ollama/models"
    )


# -- the executable, for real -------------------------------------------------------------------


@dataclass(frozen=True)
class Standin:
    """An ``ollama`` script in a temp dir and the environment it runs with."""

    script: Path
    env: dict[str, str]
    store: Path

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.script), *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=T,
            check=False,
        )


@pytest.fixture
def standin(tmp_path: Path) -> Standin:
    script = tmp_path / "bin" / "ollama"
    write_standin(script, sys.executable)
    store = tmp_path / "store"
    write_fake_store(store, 2)
    env = dict(
        os.environ,
        OLLAMA_HOST=f"127.0.0.1:{free_port()}",
        OLLAMA_MODELS=str(store),
        HOME=str(tmp_path / "home"),
    )
    return Standin(script, env, store)


@contextlib.contextmanager
def serving(
    standin: Standin, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, dict[str, Any]]]:
    """``ollama serve ARGS`` run by its shebang; yields (process, base URL, ready-file data)."""
    ready = standin.script.parent / "ready.json"
    ready.unlink(missing_ok=True)
    log = standin.script.parent / "serve.log"
    with log.open("ab") as out:
        # Own session: the finally kills the simulator and its runner children as a group.
        proc = subprocess.Popen(
            [str(standin.script), "serve", "--ready-file", str(ready), *args],
            env=standin.env,
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:

        def is_ready() -> bool:
            if ready.exists():
                return True
            assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
            return False

        wait_until(is_ready, "stand-in serve became ready", timeout=T)
        info = json.loads(ready.read_text())
        yield proc, str(info["url"]), info
    finally:
        stop_process_group(proc, T)


def test_serve_listens_on_ollama_host_over_ollama_models(standin: Standin) -> None:
    with serving(standin) as (proc, url, info):
        assert url == "http://" + standin.env["OLLAMA_HOST"]
        # In-process: the pid a supervisor started is the server's own (the demo's pid file).
        assert info["pid"] == proc.pid
        names = [os.path.basename(a) for a in psutil.Process(proc.pid).cmdline()]
        assert names[names.index("ollama") + 1] == "serve"
        version = requests.get(f"{url}/api/version", timeout=T).json()
        assert version == {"version": VERSION}
        tags = requests.get(f"{url}/api/tags", timeout=T).json()
        listed = sorted(m["name"] for m in tags["models"])
        assert listed == sorted(m.name for m in read_store(standin.store)) and len(listed) == 2
    assert proc.returncode == 0


def test_serve_with_models_n_ignores_the_store_and_takes_baked_in_args(
    standin: Standin, tmp_path: Path
) -> None:
    control = free_port()
    write_standin(standin.script, sys.executable, serve_args=("--control", f"127.0.0.1:{control}"))
    with serving(standin, "--models", "4", "--work-dir", str(tmp_path / "work")) as (_, url, info):
        assert info["control_url"] == f"http://127.0.0.1:{control}"
        tags = requests.get(f"{url}/api/tags", timeout=T).json()
        assert len(tags["models"]) == 4
        assert requests.get(f"{info['control_url']}/fault", timeout=T).json()["fault"] == "none"


def test_create_uploads_the_gguf_once_and_writes_the_model(
    standin: Standin, tmp_path: Path
) -> None:
    """The installer's path: ``ollama create NAME -f Modelfile`` over HTTP (FACTS.md §5)."""
    (tmp_path / "model.gguf").write_bytes(WEIGHTS)
    (tmp_path / "Modelfile").write_text(
        "FROM ./model.gguf\n"
        'TEMPLATE """{{ .System }}\n{{ .Prompt }}"""\n'
        "SYSTEM You are the plant's maintenance assistant.\n"
        "PARAMETER temperature 0.3\n"
        'PARAMETER stop "<|end|>"\n'
        'PARAMETER stop "<|user|>"\n'
        "MESSAGE user Where is pump 3?\n"
        "LICENSE internal use only\n"
    )
    log = standin.script.parent / "serve.log"
    with serving(standin) as (_, url, _info):
        # -f defaults to ./Modelfile, as install.sh relies on with `env -C DIR`.
        first = standin.run("create", "plant/assistant:v2", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert first.stderr.splitlines()[-1] == "success"
        show = requests.post(f"{url}/api/show", json={"model": "plant/assistant:v2"}, timeout=T)
        assert show.status_code == 200
        # A second run uploads nothing new: the server has the blob (HEAD 200).
        again = standin.run("create", "plant/assistant:v2", "-f", str(tmp_path / "Modelfile"))
        assert again.returncode == 0, again.stderr
        assert log.read_text().count('POST     "/api/blobs/') == 1
    manifest_path = standin.store / "manifests/registry.ollama.ai/plant/assistant/v2"
    manifest = json.loads(manifest_path.read_bytes())
    layers = {layer["mediaType"].rsplit(".", 1)[1]: layer for layer in manifest["layers"]}
    blobs = standin.store / "blobs"
    params = (blobs / layers["params"]["digest"].replace(":", "-")).read_bytes()
    assert json.loads(params) == {"stop": ["<|end|>", "<|user|>"], "temperature": 0.3}
    template = blobs / layers["template"]["digest"].replace(":", "-")
    assert template.read_text() == "{{ .System }}\n{{ .Prompt }}"


def test_create_reports_errors_as_the_cli_does(standin: Standin, tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM base\nPARAMETER tfs_z 1.0\n")
    refused = standin.run("create", "x", "-f", str(tmp_path / "Modelfile"))
    assert (refused.returncode, refused.stderr) == (1, "Error: unknown parameter 'tfs_z'\n")
    # Valid, but nobody listens on OLLAMA_HOST: one Error line, no traceback.
    (tmp_path / "Modelfile").write_text("FROM base\n")
    unreachable = standin.run("create", "x", "-f", str(tmp_path / "Modelfile"))
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("Error: ") and "Traceback" not in unreachable.stderr


def test_version_and_unknown_commands(standin: Standin) -> None:
    for flag in ("-v", "--version"):
        shown = standin.run(flag)
        assert (shown.returncode, shown.stdout) == (0, f"ollama version is {VERSION}\n")
    unknown = standin.run("pull", "llama3.2")
    assert unknown.returncode == 2
    assert "not implemented" in unknown.stderr
