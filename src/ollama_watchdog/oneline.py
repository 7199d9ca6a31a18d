"""One bounded line of text for a log event, ``STATUS=`` or a finding: the one place it is cut.

Error texts come from outside (an HTTP body, a command's stderr, a log line): they may span lines
and be any length. Whitespace runs become one space and the text is cut to ``limit`` characters,
the cut marked with an ellipsis, so a line stays one line and a bounded size.
"""

from __future__ import annotations


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


__all__ = ["one_line"]
