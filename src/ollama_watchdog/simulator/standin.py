"""A stand-in ``ollama`` executable: ``serve`` runs the simulator, ``create`` is the real CLI's.

Everything that needs an ``ollama`` binary without Ollama (the test harness, ``ollama-watchdog
demo``, the system-test container, the installer's stand-in release archive) writes the same
small script with ``write_standin``: ``#!<python>`` plus a call of ``main`` here. Run by its
shebang, the server's argv reads ``python /path/ollama serve``, which the process-matching rule
recognises (an element with basename ``ollama`` followed by ``serve``), and the script runs the
simulator in-process, so the pid that started it is the server's pid.

Commands:

* ``ollama serve [simulator options]``: the simulator, with Ollama's defaults from the
  environment (FACTS.md §3): the address from ``OLLAMA_HOST`` and the store from
  ``OLLAMA_MODELS`` (default ``$HOME/.ollama/models``). ``--models N`` serves N fake models
  instead of a store; explicit ``--listen``/``--models-dir`` win over the environment.
* ``ollama create NAME [-f Modelfile]``: what the real CLI sends over HTTP (FACTS.md §5, §6):
  parse the Modelfile, upload the GGUF to ``/api/blobs/sha256:<hex>`` unless the server has
  it, POST ``/api/create`` and print its progress stream.
* ``ollama -v`` / ``--version``: ``ollama version is <version>``.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ollama_watchdog.ollama.env import DEPRECATED_PARAMETERS, MODELFILE_PARAMETERS
from ollama_watchdog.simulator.scheduler import ERA_LLAMA_SERVER
from ollama_watchdog.simulator.serve import DEFAULT_VERSION, add_arguments
from ollama_watchdog.simulator.serve import main as simulator_main

#: What ``ollama --version`` prints: the version the simulator reports in its default era.
VERSION = DEFAULT_VERSION[ERA_LLAMA_SERVER]
DEFAULT_PORT = 11434
#: Per request of ``create``: an upload of a test-sized GGUF, or the server's whole create.
HTTP_TIMEOUT = 60.0

#: The instructions a Modelfile may hold (parser.go); the error names them all.
_COMMANDS = (
    "from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
    "parameter", "message", "requires",
)  # fmt: skip
_COMMAND_ERROR = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft",'
    ' "renderer", "parser", "parameter", "message", or "requires"'
)
_ROLES = ("system", "user", "assistant")
_ROLE_ERROR = 'message role must be one of "system", "user", or "assistant"'
_CHUNK = 1 << 20


class ModelfileError(ValueError):
    """A Modelfile the real CLI refuses (the message is the CLI's error text)."""


# -- OLLAMA_HOST and OLLAMA_MODELS --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OllamaHost:
    """``envconfig.Host()``: where ``serve`` listens and the CLI connects."""

    host: str
    port: int

    @property
    def listen(self) -> str:
        """``host:port`` as the simulator's ``--listen`` takes it (empty host: all addresses)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The client's base URL (an empty or unspecified host is reached on loopback)."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return "http://" + (f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}")


def ollama_host(value: str | None) -> OllamaHost:
    """Parse ``OLLAMA_HOST`` as Ollama does: ``[scheme://]host[:port][/path]`` (FACTS.md §3).

    A missing port is 11434, but 80 after an explicit ``http://`` and 443 after ``https://``;
    unset or empty means ``127.0.0.1:11434``; a port that is not 0..65535 is the default one.
    """
    text = (value or "").strip()
    default_port = DEFAULT_PORT
    scheme, sep, hostport = text.partition("://")
    if not sep:
        hostport = text
    elif scheme == "http":
        default_port = 80
    elif scheme == "https":
        default_port = 443
    hostport = hostport.partition("/")[0]
    host, port_text = "127.0.0.1", ""
    if hostport.startswith("["):
        inner, bracket, rest = hostport[1:].partition("]")
        if bracket and rest.startswith(":"):
            host, port_text = inner, rest[1:]
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    # Go's net.SplitHostPort failed: the whole text is the host (an IP literal or a name).
    if not port_text:
        bare = hostport.strip("[]")
        try:
            host = str(ipaddress.ip_address(bare))
        except ValueError:
            host = bare or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = default_port
    if not 0 <= port <= 65535:
        port = default_port
    return OllamaHost(host, port)


def models_dir(env: Mapping[str, str]) -> Path:
    """``OLLAMA_MODELS``, else ``$HOME/.ollama/models`` (the service user's home on Linux)."""
    configured = env.get("OLLAMA_MODELS", "")
    if configured:
        return Path(configured)
    return Path(env.get("HOME") or Path.home()) / ".ollama" / "models"


# -- serve ----------------------------------------------------------------------------------------


def serve(args: Sequence[str], env: Mapping[str, str]) -> int:
    """``ollama serve [simulator options]`` with Ollama's environment as the defaults."""
    parser = argparse.ArgumentParser(
        prog="ollama serve",
        description="Stand-in for `ollama serve`: the simulator, on $OLLAMA_HOST over the store"
        " in $OLLAMA_MODELS (or N fake models with --models N).",
    )
    add_arguments(parser)
    # models=None tells "not given" apart: only an explicit --models N means a fake store.
    parser.set_defaults(listen=ollama_host(env.get("OLLAMA_HOST")).listen, models=None)
    options = parser.parse_args(list(args))
    if options.models is None:
        if options.models_dir is None:
            options.models_dir = models_dir(env)
        options.models = 0  # unused: the simulator lists the store
    return simulator_main(options)


# -- create ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instruction:
    """One Modelfile instruction: ``command`` lower-case (``parameter``/``message`` carry their
    name or role in ``argument``), ``value`` unquoted."""

    command: str
    value: str
    argument: str = ""


def _unquote(value: str, lines: Iterator[str], keep_space: bool) -> str:
    if value.startswith('"""'):
        value = value[3:]
        while '"""' not in value:
            try:
                value += "\n" + next(lines)
            except StopIteration:
                raise ModelfileError('unterminated """ value') from None
        value = value[: value.index('"""')]
    elif len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    # TEMPLATE text is sent as written: its whitespace is part of the prompt.
    return value if keep_space else value.strip()


def parse_modelfile(text: str) -> list[Instruction]:
    """The instructions of a Modelfile, in order (parser.go): case-insensitive commands,
    ``#`` comments, values ``"quoted"`` or ``\"\"\"multi-line\"\"\"``; raises ModelfileError."""
    found: list[Instruction] = []
    lines = iter(text.splitlines())
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        command, _, value = stripped.partition(" ")
        command, value = command.lower(), value.strip()
        if command not in _COMMANDS:
            raise ModelfileError(_COMMAND_ERROR)
        argument = ""
        if command in ("parameter", "message"):
            argument, _, value = value.partition(" ")
            argument, value = argument.lower(), value.strip()
            if command == "message" and argument not in _ROLES:
                raise ModelfileError(_ROLE_ERROR)
        found.append(Instruction(command, _unquote(value, lines, command == "template"), argument))
    if not any(i.command == "from" for i in found):
        raise ModelfileError("no FROM line")
    return found


def _typed(name: str, value: str) -> object:
    """A PARAMETER value as the CLI sends it: JSON typed by ``api.Options`` (FACTS.md §6)."""
    kind = MODELFILE_PARAMETERS.get(name)
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise ModelfileError(f"invalid {kind} value {value!r} for parameter '{name}'") from None
    if kind == "bool":
        return value.lower() == "true"
    if kind is None:
        raise ModelfileError(f"unknown parameter '{name}'")
    return value


@dataclass(frozen=True)
class CreatePlan:
    """What ``ollama create`` will do: upload ``gguf`` (if any), then POST ``request``."""

    request: dict[str, Any]
    gguf: Path | None = None
    warnings: tuple[str, ...] = field(default=())


def plan_create(name: str, modelfile: Path) -> CreatePlan:
    """Turn a Modelfile into the ``/api/create`` request (cmd/cmd.go CreateHandler)."""
    request: dict[str, Any] = {"model": name}
    parameters: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    licenses: list[str] = []
    warnings: list[str] = []
    gguf: Path | None = None
    for ins in parse_modelfile(modelfile.read_text(encoding="utf-8")):
        if ins.command == "from":
            # A path relative to the Modelfile is resolved; a missing one is a model name.
            path = (modelfile.parent / Path(ins.value).expanduser()).resolve()
            if path.is_file():
                gguf = path
                request.pop("from", None)
            else:
                gguf = None
                request["from"] = ins.value
        elif ins.command in ("template", "system"):
            request[ins.command] = ins.value
        elif ins.command == "license":
            licenses.append(ins.value)
        elif ins.command == "message":
            messages.append({"role": ins.argument, "content": ins.value})
        elif ins.command == "parameter" and ins.argument in DEPRECATED_PARAMETERS:
            warnings.append(f"warning: parameter {ins.argument} is deprecated")
        elif ins.command == "parameter" and ins.argument == "stop":
            parameters.setdefault("stop", []).append(ins.value)
        elif ins.command == "parameter":
            parameters[ins.argument] = _typed(ins.argument, ins.value)
        else:
            # ADAPTER, DRAFT, RENDERER, PARSER, REQUIRES: valid, but no test needs them yet.
            raise ModelfileError(f"the stand-in does not implement {ins.command.upper()}")
    extra = {"parameters": parameters, "messages": messages, "license": licenses}
    request.update((key, value) for key, value in extra.items() if value)
    return CreatePlan(request, gguf, tuple(warnings))


def _request(
    base: str, method: str, path: str, body: bytes | IO[bytes] | None = None, length: int = 0
) -> tuple[int, bytes]:
    headers = {"Content-Length": str(length)} if body is not None and length else {}
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def create(name: str, modelfile: Path, base_url: str) -> int:
    """``ollama create NAME -f Modelfile`` against the server at ``base_url``; exit status."""
    try:
        plan = plan_create(name, modelfile)
    except (ModelfileError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for warning in plan.warnings:
        print(warning, file=sys.stderr)
    request = dict(plan.request)
    try:
        if plan.gguf is not None:
            digest = _sha256(plan.gguf)
            # The server may have the blob already (a second create): then nothing is sent.
            if _request(base_url, "HEAD", f"/api/blobs/{digest}")[0] != 200:
                # Streamed from the file: a real GGUF is gigabytes.
                with plan.gguf.open("rb") as data:
                    size = plan.gguf.stat().st_size
                    status, body = _request(base_url, "POST", f"/api/blobs/{digest}", data, size)
                if status not in (200, 201):
                    print(f"Error: {_error_text(body)}", file=sys.stderr)
                    return 1
            request["files"] = {plan.gguf.name: digest}
        status, body = _request(base_url, "POST", "/api/create", json.dumps(request).encode())
    except OSError as exc:  # refused, timed out, or the GGUF unreadable
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"Error: {_error_text(body)}", file=sys.stderr)
        return 1
    # The progress stream: the last line is `success`, or an error after a 200.
    for line in body.decode().splitlines():
        progress = json.loads(line)
        if "error" in progress:
            print(f"Error: {progress['error']}", file=sys.stderr)
            return 1
        print(progress.get("status", ""), file=sys.stderr)
    return 0


# -- the executable -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, serve_args: Sequence[str] = ()) -> int:
    """The ``ollama`` command line; ``serve_args`` go before those given to ``serve``."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ
    if args[:1] == ["serve"]:
        return serve([*serve_args, *args[1:]], env)
    if args[:1] == ["create"]:
        parser = argparse.ArgumentParser(prog="ollama create")
        parser.add_argument("model")
        parser.add_argument("-f", "--file", type=Path, default=Path("Modelfile"))
        options = parser.parse_args(args[1:])
        return create(options.model, options.file, ollama_host(env.get("OLLAMA_HOST")).url)
    if args[:1] in (["-v"], ["--version"]):
        print(f"ollama version is {VERSION}")
        return 0
    print(f"stand-in ollama: {' '.join(args)!r} is not implemented", file=sys.stderr)
    return 2


_SCRIPT = """\
#!{python}
# Stand-in for the ollama binary, written by ollama_watchdog.simulator.standin.write_standin:
# `ollama serve` runs the simulator in this process, `ollama create` is the real CLI's client.
import sys

from ollama_watchdog.simulator.standin import main

sys.exit(main(serve_args={serve_args!r}))
"""


def standin_script(python: str, *, serve_args: Sequence[str] = ()) -> str:
    """The text of the ``ollama`` script: run by ``python``, which must import this package.

    ``serve_args`` are simulator options baked into ``serve`` (e.g. a fixed ``--control``
    address, where a unit's ``ExecStart=/usr/local/bin/ollama serve`` cannot pass any).
    """
    return _SCRIPT.format(python=python, serve_args=tuple(serve_args))


def write_standin(path: Path, python: str, *, serve_args: Sequence[str] = ()) -> None:
    """Write ``standin_script`` to ``path`` (parents made), executable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(standin_script(python, serve_args=serve_args))
    path.chmod(0o755)


__all__ = [
    "VERSION",
    "CreatePlan",
    "Instruction",
    "ModelfileError",
    "OllamaHost",
    "create",
    "main",
    "models_dir",
    "ollama_host",
    "parse_modelfile",
    "plan_create",
    "serve",
    "standin_script",
    "write_standin",
]


if __name__ == "__main__":
    sys.exit(main())
