"""Ollama simulator: the project's only test double of ``ollama serve``.

It speaks Ollama's real HTTP protocol (FACTS.md §1), writes Ollama's real log formats (gin
request lines on stdout, slog lines on stderr, llama-server timing lines; FACTS.md §2), starts
real runner child processes for loaded models, and switches faults at run time through a
control endpoint. Standard library only.

The pure formatters are exported for the log parser's tests, which check parser against
producer: ``format_gin_line``, ``format_go_duration``, ``format_slog_line``,
``format_timing_lines``.
"""

from __future__ import annotations

from ollama_watchdog.simulator.api import FAULTS
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
