"""Where the shared facts about Ollama live for tests: one copy, kept in the repo.

``tests/fixtures/ollama/real-logs.txt`` is a verbatim copy of the team's collection of real
Ollama log excerpts (``shared/ollama/real-logs.txt``), so a fresh clone tests without it.
"""

from pathlib import Path

REAL_LOGS = Path(__file__).resolve().parents[1] / "fixtures" / "ollama" / "real-logs.txt"
