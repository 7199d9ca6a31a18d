"""``python -m ollama_watchdog`` — the same as the ``ollama-watchdog`` command."""

from ollama_watchdog.cli import main

raise SystemExit(main())
