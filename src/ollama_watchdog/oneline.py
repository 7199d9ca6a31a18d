"""One bounded line of text for a log event, ``STATUS=`` or a finding: the one place it is cut.

Error texts come from outside (an HTTP body, a command's stderr, a log line): they may span lines
and be any length. Whitespace runs become one space and the text is cut to ``limit`` characters,
the cut marked with an ellipsis, so a line stays one line and a bounded size.
"""

from __future__ import annotations

import re

#: a UTF-16 surrogate on its own: JSON's "\\ud800" decodes to one, and no UTF-8 can hold it
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, whitespace collapsed, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def valid_text(text: str, limit: int = 200) -> str:
    """``text`` as valid Unicode (a lone surrogate becomes U+FFFD), at most ``limit`` characters:
    a label value or a field from outside that must encode as UTF-8 wherever it goes."""
    if not text.isascii():
        text = _LONE_SURROGATE.sub("\ufffd", text)
    return text[:limit]


__all__ = ["one_line", "valid_text"]
