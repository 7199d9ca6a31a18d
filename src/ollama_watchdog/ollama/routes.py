"""The fixed set of HTTP routes an Ollama server answers, defined once.

Source: FACTS.md §1.1 (``server/routes.go`` ``GenerateRoutes`` at v0.33.0-rc2, plus the
routes older releases had). Everyone who needs a route name imports it from here: the log
parser turns a logged path into one of these templates, the simulator serves them.

A path that is not one of these becomes :data:`OTHER`, so a scanner probing random URLs adds
at most one series per method and status code instead of one per URL. Methods and status codes
are bounded the same way (:data:`METHODS`, :data:`STATUS_CODES` or ``other``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: label value for any path (or method) outside the fixed set
OTHER = "other"

#: the request methods kept as label values; anything else is ``other``
METHODS: frozenset[str] = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Route:
    """One route of the Ollama HTTP server as gin registers it."""

    #: gin path template; also the ``route`` label value (``/api/blobs/:digest``)
    template: str
    #: methods registered for it (a wrong method gives gin's 405)
    methods: frozenset[str]


def _r(template: str, *methods: str) -> Route:
    return Route(template, frozenset(methods))


ROUTES: tuple[Route, ...] = (
    _r("/", "GET", "HEAD"),
    _r("/api/version", "GET", "HEAD"),
    _r("/api/status", "GET"),
    _r("/api/pull", "POST"),
    _r("/api/push", "POST"),
    _r("/api/tags", "GET", "HEAD"),
    _r("/api/show", "POST"),
    _r("/api/delete", "DELETE"),
    _r("/api/me", "POST"),
    _r("/api/signout", "POST"),
    _r("/api/user/keys/:encodedKey", "DELETE"),
    _r("/api/create", "POST"),
    _r("/api/blobs/:digest", "POST", "HEAD"),
    _r("/api/copy", "POST"),
    _r("/api/experimental/web_search", "POST"),
    _r("/api/experimental/web_fetch", "POST"),
    _r("/api/experimental/model-recommendations", "GET"),
    _r("/api/ps", "GET"),
    _r("/api/generate", "POST"),
    _r("/api/chat", "POST"),
    _r("/api/embed", "POST"),
    _r("/api/embeddings", "POST"),
    _r("/v1/chat/completions", "POST"),
    _r("/v1/completions", "POST"),
    _r("/v1/embeddings", "POST"),
    _r("/v1/responses", "POST"),
    _r("/v1/audio/transcriptions", "POST"),
    _r("/v1/models", "GET"),
    _r("/v1/models/:model", "GET"),
    _r("/v1/messages", "POST"),
)

#: the routes that run a model (what users of an inference service feel): completions, chats,
#: embeddings, native and OpenAI/Anthropic-compatible
INFERENCE_ROUTES: frozenset[str] = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
    }
)
#: the status codes kept as ``code`` label values: what Ollama's handlers and gin send (2xx
#: answers and partial blobs, gin's redirects of a trailing slash, the 4xx of bad requests,
#: auth, CORS, sizes and limits, 499 of a client gone, the 5xx of errors, overload, upstream
#: and storage). Any other code is ``other``: a forged or future code cannot add series.
STATUS_CODES: frozenset[int] = frozenset(
    {200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413,
     415, 422, 429, 499, 500, 501, 502, 503, 504, 507}
)  # fmt: skip
#: code -> its label value, for the codes kept
STATUS_LABELS: dict[int, str] = {code: str(code) for code in STATUS_CODES}


def status_label(code: int) -> str:
    """Bound the ``code`` label to :data:`STATUS_CODES` or ``other``."""
    return STATUS_LABELS.get(code, OTHER)


#: every value the ``route`` label can take
ROUTE_LABELS: frozenset[str] = frozenset({r.template for r in ROUTES} | {OTHER})

_STATIC: dict[str, str] = {r.template: r.template for r in ROUTES if ":" not in r.template}
# One path segment after a fixed prefix, as gin's ``:param`` matches it.
_PARAM_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    (r.template.split(":", 1)[0], r.template) for r in ROUTES if ":" in r.template
)


def route_label(path: str) -> str:
    """Map a request path (query string allowed) to its route template or ``other``."""
    q = path.find("?")
    if q >= 0:
        path = path[:q]
    hit = _STATIC.get(path)
    if hit is not None:
        return hit
    for prefix, template in _PARAM_PREFIXES:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            # gin's :param is exactly one non-empty segment
            if rest and "/" not in rest:
                return template
    return OTHER


def method_label(method: str) -> str:
    """Bound the ``method`` label to :data:`METHODS` or ``other``."""
    return method if method in METHODS else OTHER


__all__ = [
    "INFERENCE_ROUTES",
    "METHODS",
    "OTHER",
    "ROUTES",
    "ROUTE_LABELS",
    "STATUS_CODES",
    "STATUS_LABELS",
    "Route",
    "method_label",
    "route_label",
    "status_label",
]
