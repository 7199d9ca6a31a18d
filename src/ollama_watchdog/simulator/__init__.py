"""Ollama simulator: the project's only test double of ``ollama serve``.

It speaks Ollama's real HTTP protocol (FACTS.md §1), writes Ollama's real log formats (gin
request lines on stdout, slog lines on stderr, llama-server timing lines; FACTS.md §2), starts
real runner child processes for loaded models, and switches faults at run time through a
control endpoint. Standard library only, besides this project's ``ollama`` package (routes,
model names and the store layout).

Modules, one job each:

* ``serve``: command line and process life (start-up lines, signals, shutdown); builds the rest.
* ``instance``: one running simulator, its settings and the parts request threads share.
* ``faults``: the fault in force, its parameters and the lock around them.
* ``control``: the fault control endpoint (its own port, so it answers while the API hangs).
* ``router``: the API listener, gin's middleware and the route table, built from
  ``ollama.routes.ROUTES``.
* ``wire``: HTTP/1.1 as Go's net/http speaks it; what an endpoint gets (``Exchange``).
* ``about``: ``/``, ``/api/version``, ``/api/status``, and 501 for routes not implemented.
* ``inference``: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``.
* ``models``: the model management endpoints (tags, ps, show, delete, pull, create, blobs).
* ``protocol``: pure protocol pieces: Go-style JSON, request decoding, keep_alive, messages.
* ``catalog``: the model store on disk (fake or real) and the installed set (``Catalog``).
* ``create``: the server side of ``ollama create`` (blob uploads, manifests, layers).
* ``gguf``: the GGUF header reader and writer.
* ``scheduler``: loaded models and their runner children, keep_alive expiry, crash reaping.
* ``runners``: the runner child processes (llama-server / ``ollama runner`` stand-ins).
* ``logformat``: pure formatters of Ollama's log lines; ``logsink``: where they are written.
* ``standin``: the stand-in ``ollama`` executable (``serve`` runs this simulator).

The pure formatters are exported for the log parser's tests, which check parser against
producer: ``format_gin_line``, ``format_go_duration``, ``format_slog_line``,
``format_timing_lines``.
"""

from __future__ import annotations

from ollama_watchdog.simulator.faults import FAULTS
from ollama_watchdog.simulator.logformat import (
    format_gin_line,
    format_go_duration,
    format_go_duration_ns,
    format_rfc3339_millis,
    format_slog_line,
    format_timing_lines,
    gin_latency,
    go_quote,
    human_bytes2,
)
from ollama_watchdog.simulator.serve import add_arguments, main

__all__ = [
    "FAULTS",
    "add_arguments",
    "format_gin_line",
    "format_go_duration",
    "format_go_duration_ns",
    "format_rfc3339_millis",
    "format_slog_line",
    "format_timing_lines",
    "gin_latency",
    "go_quote",
    "human_bytes2",
    "main",
]
