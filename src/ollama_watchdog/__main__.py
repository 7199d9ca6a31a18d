"""``python -m ollama_watchdog`` — the same as the ``ollama-watchdog`` command."""

from .cli import main

raise SystemExit(main())
