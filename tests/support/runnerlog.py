"""Log lines of Ollama's runner side for the logs collector's tests, built in one place.

A runner's start line (the blob it loads), the scheduler's ``loaded runners`` count, a
llama-server timing block (FACTS.md §2.7, per-line form), and a manifest naming a blob, so the
``model`` label can be resolved.
"""

from __future__ import annotations

import json
from pathlib import Path

BLOB_A, BLOB_B = "a" * 64, "b" * 64


def write_manifest(models: Path, host: str, ns: str, model: str, tag: str, blob: str) -> None:
    path = models / "manifests" / host / ns / model / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": "sha256:" + "c" * 64,
            "size": 483,
        },
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + blob,
             "size": 1678447520},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "d" * 64,
             "size": 136},
        ],
    }  # fmt: skip
    path.write_text(json.dumps(doc), encoding="utf-8")


def start_line(blob: str) -> str:
    return (
        "time=2026-08-15T15:45:11.755+12:00 level=INFO source=llama_server.go:433"
        ' msg="starting llama-server" cmd="/usr/local/lib/ollama/llama-server --model'
        f' /usr/share/ollama/.ollama/models/blobs/sha256-{blob} --port 40001"'
    )


def loaded(n: int) -> str:
    return f'time=2026-08-15T15:45:12.000+12:00 level=INFO source=sched.go:1 msg="loaded runners" count={n}'  # noqa: E501


def timing(prompt_ms: float, prompt_n: int, eval_ms: float, eval_n: int) -> list[str]:
    p = "slot print_timing: id  0 | task 1 | "
    return [
        f"{p}prompt eval time = {prompt_ms:10.2f} ms / {prompt_n:5d} tokens (1 ms per token)",
        f"{p}       eval time = {eval_ms:10.2f} ms / {eval_n:5d} tokens (1 ms per token)",
        f"{p}      total time = {prompt_ms + eval_ms:10.2f} ms / {prompt_n + eval_n:5d} tokens",
    ]
