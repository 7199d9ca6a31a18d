"""The runbook the exporter serves at /runbook: every alert has its section, under its anchor.

Alerts link to ``http://INSTANCE/runbook#alertname`` (prometheus/alerts.yml); the page is
docs/operations.md as shipped in the package, converted to HTML, served by a real Exporter on
a free port in the last test (the auth rules: tests/integration/test_tls_auth.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import requests
import yaml
from support.tools import free_port

from ollama_watchdog.exporter import runbook
from ollama_watchdog.exporter.http import Exporter, SnapshotBoard

REPO = Path(__file__).resolve().parents[2]
ALERTS = [
    rule
    for group in yaml.safe_load((REPO / "prometheus" / "alerts.yml").read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
]


class Ids(HTMLParser):
    """Element ids of a page, and the text of each heading with an id."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs).get("id")
        if found is not None:
            self.ids[found] = ""
            self._open = found

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.ids[self._open] += data

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def page_ids() -> dict[str, str]:
    page = runbook.page()
    assert page is not None, "ollama_watchdog/docs/operations.md is not in the package"
    parser = Ids()
    parser.feed(page.decode())
    return parser.ids


def test_the_packaged_runbook_is_docs_operations_md() -> None:
    packaged = REPO / "src" / "ollama_watchdog" / "docs" / "operations.md"
    assert packaged.read_text() == (REPO / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("alert", ALERTS, ids=[a["alert"] for a in ALERTS])
def test_every_alert_has_its_section_under_its_anchor(alert: dict[str, object]) -> None:
    name = str(alert["alert"])
    annotations = alert["annotations"]
    assert isinstance(annotations, dict)
    fragment = str(annotations["runbook_url"]).rpartition("#")[2]
    ids = page_ids()
    assert fragment in ids, f"/runbook has no #{fragment}"
    assert ids[fragment] == name


def test_markdown_becomes_escaped_html() -> None:
    body = runbook.to_html(
        "## Logs and rotation\n\nA `<script>` **here** and [a link](https://example.org/x).\n\n"
        "1. first\n   continued\n2. second\n\n"
        "```sh\necho '<b>'\n```\n\n| a | b |\n| --- | --- |\n| `x` | <i> |\n"
    )
    assert '<h2 id="logs-and-rotation">Logs and rotation</h2>' in body
    assert "<code>&lt;script&gt;</code>" in body and "<script>" not in body
    assert "<strong>here</strong>" in body
    assert '<a href="https://example.org/x">a link</a>' in body
    assert "<ol><li>first continued</li><li>second</li></ol>" in body
    assert "<pre><code>echo &#x27;&lt;b&gt;&#x27;</code></pre>" in body
    assert "<td><code>x</code></td><td>&lt;i&gt;</td>" in body
    assert "<i>" not in body


def test_only_http_and_local_links_become_links() -> None:
    body = runbook.to_html("[x](javascript:alert(1)) [y](#ollamadown)")
    assert "href=\"javascript" not in body
    assert '<a href="#ollamadown">y</a>' in body


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    server = Exporter(f"127.0.0.1:{free_port()}", SnapshotBoard(), lambda: (True, "ok"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_exporter_serves_the_runbook(exporter: Exporter) -> None:
    base = f"http://127.0.0.1:{exporter.port}"
    response = requests.get(f"{base}/runbook", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<h3 id="ollamawatchdoggaveup">OllamaWatchdogGaveUp</h3>' in response.text
    assert 'href="/runbook"' in requests.get(base + "/", timeout=10).text
