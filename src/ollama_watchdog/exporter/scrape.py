"""Reading a ``/metrics`` page back: what ``doctor`` and the demo see of a running watchdog.

One bounded GET (a timeout, a size cap) parsed with prometheus_client's own text parser into
``{(sample name, sorted labels): value}``; failures are returned as a short reason, never
raised, so a caller can report them as findings.
"""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from ollama_watchdog.oneline import one_line

#: a watchdog's page is tens of KiB; anything this large is not one
MAX_BODY = 16 * 1024 * 1024

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float) -> tuple[Samples | None, str]:
    """Every sample at ``url``, or None and why not (never raises)."""
    try:
        resp = requests.get(url, timeout=timeout, stream=True)
        try:
            body = resp.raw.read(MAX_BODY + 1, decode_content=True)
        finally:
            resp.close()
    except requests.exceptions.ConnectionError:
        return None, "connection refused"
    except requests.exceptions.Timeout:
        return None, f"no answer within {timeout:g}s"
    except (requests.exceptions.RequestException, OSError) as exc:
        return None, one_line(str(exc), 120)
    if resp.status_code != 200:
        return None, f"HTTP {resp.status_code}"
    if len(body) > MAX_BODY:
        return None, f"body larger than {MAX_BODY // (1024 * 1024)} MiB"
    samples: Samples = {}
    try:
        for family in text_string_to_metric_families(body.decode(errors="replace")):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    except ValueError as exc:
        return None, f"not Prometheus text: {one_line(str(exc), 80)}"
    return samples, ""


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of one sample with exactly these labels, or None."""
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``match``."""
    return sum(
        value
        for (n, labels), value in samples.items()
        if n == name and all(dict(labels).get(k) == v for k, v in match.items())
    )


__all__ = ["MAX_BODY", "Samples", "sample", "scrape", "total"]
