"""Which process is Ollama's server and which a model runner, told by its command line.

The team's one matching rule, shared by the process collector, ``doctor`` and ``models
restore`` (which warns while a server runs). It is a fact about how Ollama starts its
processes, so it lives here with the other facts about Ollama, not in a consumer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

Role = Literal["server", "runner"]


def classify_argv(argv: Sequence[str]) -> Role | None:
    """Apply the team's process-matching rule to one command line.

    Server: an element with basename ``ollama`` immediately followed by ``serve`` (so both
    ``/usr/local/bin/ollama serve`` and ``python3 /usr/local/bin/ollama serve`` match).
    Model process: argv[0] or argv[1] has basename ``llama-server`` (v0.30+), or an element with
    basename ``ollama`` is followed by ``runner`` (up to 0.24).
    """
    for i in range(len(argv) - 1):
        if os.path.basename(argv[i]) == "ollama":
            if argv[i + 1] == "serve":
                return "server"
            if argv[i + 1] == "runner":
                return "runner"
    if any(os.path.basename(a) == "llama-server" for a in argv[:2]):
        return "runner"
    return None


def runner_model_digest(argv: Sequence[str]) -> str | None:
    """The sha256 hex of the blob a model process serves (its ``--model`` / ``-m`` argument,
    a path ending in ``sha256-<hex>``), or None when the command line names none."""
    path: str | None = None
    for i, arg in enumerate(argv):
        if arg in ("--model", "-m") and i + 1 < len(argv):
            path = argv[i + 1]
        elif arg.startswith("--model="):
            path = arg.split("=", 1)[1]
        if path is not None:
            break
    if not path:
        return None
    name = os.path.basename(path)
    for prefix in ("sha256-", "sha256:"):
        if name.startswith(prefix):
            digest = name[len(prefix) :]
            if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
                return digest
    return None


__all__ = ["Role", "classify_argv", "runner_model_digest"]
