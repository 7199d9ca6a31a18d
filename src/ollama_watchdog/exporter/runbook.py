"""The operations guide and alerts runbook (docs/operations.md) as one HTML page, for /runbook.

Every alert's ``runbook_url`` points at ``http://INSTANCE/runbook#alertname`` by default, so a
responder without Internet access is one click from the runbook of the host that paged, in
the version of the watchdog running there. The Markdown ships inside the package
(``ollama_watchdog/docs/operations.md``, a link to the repository's docs/operations.md that
the wheel turns into a copy) and is converted here by a small converter for the subset the
guide uses: headings (with GitHub's anchors, ``### OllamaDown`` -> ``#ollamadown``),
paragraphs, lists, fenced code, tables, ``code``, **bold** and links. Everything else is
escaped text: the page never carries markup that was not written as Markdown.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from importlib import resources

_HEADING = re.compile(r"^(#{1,6}) (.+?)\s*$")
_ORDERED = re.compile(r"^\s*\d+\. (.*)$")
_BULLET = re.compile(r"^\s*[-*] (.*)$")
_FENCE = "```"

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ollama-watchdog runbook</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 58rem; margin: 1rem auto;
       padding: 0 1rem; line-height: 1.45; }}
code, pre {{ background: #f3f3f3; border-radius: 3px; }}
code {{ padding: 0 .2em; }} pre {{ padding: .6em; overflow-x: auto; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: .2em .5em; }}
h3 {{ border-top: 1px solid #ddd; padding-top: .6em; }}
:target {{ background: #fff3c4; }}
</style></head><body>
{body}
</body></html>
"""


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _inline(text: str) -> str:
    """Escape, then the inline Markdown the guide uses: `code`, **bold**, [text](url)."""
    parts = re.split(r"(`[^`]+`)", text)
    out: list[str] = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append("<code>" + html.escape(part[1:-1]) + "</code>")
            continue
        piece = html.escape(part)
        piece = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", piece)
        piece = re.sub(
            r"\[([^\]]+)\]\(((?:https?://|#)[^)\s]+)\)", r'<a href="\2">\1</a>', piece
        )
        out.append(piece)
    return "".join(out)


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, body = cells[0], [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
    out = ["<table><thead><tr>"]
    out += [f"<th>{_inline(c)}</th>" for c in head]
    out.append("</tr></thead><tbody>")
    for row in body:
        out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def to_html(markdown: str) -> str:
    """The guide's Markdown as the body of an HTML page."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    list_tag = ""
    lines = markdown.splitlines()

    def flush() -> None:
        nonlocal list_tag
        if para:
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
            para.clear()
        if items:
            out.append(f"<{list_tag}>" + "".join(f"<li>{i}</li>" for i in items) + f"</{list_tag}>")
            items.clear()
            list_tag = ""

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(_FENCE):
            code: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(_FENCE):
                code.append(lines[i])
                i += 1
            block = "<pre><code>" + html.escape("\n".join(code)) + "</code></pre>"
            if items:  # a code block inside a list item
                items[-1] += block
            else:
                flush()
                out.append(block)
        elif m := _HEADING.match(line):
            flush()
            level, text = len(m.group(1)), m.group(2)
            out.append(f'<h{level} id="{anchor(text)}">{_inline(text)}</h{level}>')
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.append(_table(rows))
            continue
        elif item := _ORDERED.match(line) or _BULLET.match(line):
            tag = "ol" if item.re is _ORDERED else "ul"
            if para or (list_tag and list_tag != tag):
                flush()
            list_tag = tag
            items.append(_inline(item.group(1)))
        elif not stripped:
            flush()
        elif items:
            items[-1] += " " + _inline(stripped)  # continuation of a list item
        else:
            para.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


@lru_cache(maxsize=1)
def page() -> bytes | None:
    """The runbook page, or None if the package was installed without its docs."""
    try:
        text = resources.files("ollama_watchdog").joinpath("docs/operations.md").read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _PAGE.format(body=to_html(text)).encode()


__all__ = ["anchor", "page", "to_html"]
