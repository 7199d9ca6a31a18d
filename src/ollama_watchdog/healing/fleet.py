"""The fleet budget's one question to Prometheus: how many OTHER hosts are out right now?

Before a watchdog acts (issue 17), it asks the Prometheus that scrapes every watchdog of the
fleet for the hosts whose ``ollama_watchdog_state`` is one of :data:`UNAVAILABLE_STATES`, among
the series the fleet's ``selector`` picks, and leaves its own ``instance`` out:

    ollama_watchdog_state{state=~"draining|remediating|restarting|backoff", <selector>} == 1

Why these four: they are hosts *in the middle of healing* (an action in flight or its backoff).
The budget bounds concurrent healing, so that one fault hitting every host does not restart
every host at once. ``maintenance`` and ``gave_up`` are left out on purpose: both can last for
hours, and counting them would block all healing fleet-wide behind one broken or parked host.
A host whose watchdog is not scraped (``up == 0``) is not counted either, for the same reason
(a decommissioned target would block the fleet for ever); the ``OllamaFleetHostsOut`` alert
counts those.

How a watchdog knows its own ``instance``: ``[fleet] instance`` when set (it must be spelt as
the scrape target is); otherwise :func:`own_instance` derives it from ``[exporter] listen``.

Prometheus's view is eventual (a scrape interval old, plus the rule of the query), so two hosts
deciding in the same instant can both see zero others: the caller bounds that with jitter.

:meth:`FleetView.unavailable_others` returns an ``int``, or ``None`` when Prometheus could not
be asked (refused, timed out, an error status, a body that is not the expected JSON, or too
big): the caller then acts alone and says so. The question has a hard deadline: the HTTP
exchange runs on a worker thread that the caller waits for at most ``timeout`` seconds; a
worker that outlives it (a Prometheus that trickles its answer) is left to its own socket
timeouts and body cap, and no second one starts while it runs.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import requests

from ollama_watchdog.config import Config, ConfigError, parse_listen
from ollama_watchdog.oneline import one_line

#: states of ollama_watchdog_state that count against the fleet budget
UNAVAILABLE_STATES: Final = ("draining", "remediating", "restarting", "backoff")
#: a fleet answer bigger than this is not an answer (hundreds of hosts fit in a few KiB)
MAX_BODY: Final = 1024 * 1024
_CHUNK = 16 * 1024
_ERROR_LIMIT = 200
#: a password file is one short line; anything bigger is not one
_MAX_PASSWORD_FILE = 4096


class FleetQueryError(Exception):
    """Prometheus could not be asked, or its answer was not one; the text says which."""


def own_instance(config: Config) -> str:
    """This host's ``instance`` label: ``[fleet] instance``, or derived from the exporter.

    ``[exporter] listen`` with a specific address (``10.0.0.11:9778``, ``gpu1:9778``) is taken
    as it is: that is what a scrape target names. A wildcard or loopback address
    (``:9778``, ``0.0.0.0:9778``, ``127.0.0.1:9778``) names nothing Prometheus scrapes from
    elsewhere, so this host's FQDN with the exporter's port is used; set ``[fleet] instance``
    when your targets are spelt otherwise (a short name, an IP address).
    """
    if config.fleet.instance:
        return config.fleet.instance
    host, port = parse_listen(config.exporter.listen)
    if host in {"", "0.0.0.0", "::", "127.0.0.1", "::1", "localhost"}:
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def fleet_query(selector: str) -> str:
    """The PromQL of the question, for a selector of label matchers (without braces)."""
    states = "|".join(UNAVAILABLE_STATES)
    matchers = f'state=~"{states}"' + (f",{selector}" if selector else "")
    return f"ollama_watchdog_state{{{matchers}}} == 1"


@dataclass(frozen=True, slots=True)
class FleetAnswer:
    """What Prometheus said: the other hosts that are out (their instance labels, sorted)."""

    others: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.others)


def parse_answer(body: bytes, instance: str) -> FleetAnswer:
    """The hosts out, other than ``instance``, from a ``/api/v1/query`` body; raises
    FleetQueryError on anything but a successful instant vector."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise FleetQueryError("answer is not JSON") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        raise FleetQueryError(f"query failed: {error or 'no status success'}")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise FleetQueryError("answer is not an instant vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise FleetQueryError("answer has no result list")
    hosts: set[str] = set()
    for series in result:
        metric = series.get("metric") if isinstance(series, dict) else None
        if not isinstance(metric, dict):
            raise FleetQueryError("a result has no labels")
        name = metric.get("instance")
        if not isinstance(name, str):
            # a series without an instance label (relabelled away) is still a host out
            name = json.dumps(metric, sort_keys=True)
        if name != instance:
            hosts.add(name)
    return FleetAnswer(tuple(sorted(hosts)))


class FleetView:
    """Asks one Prometheus about the fleet; safe to call from one thread at a time.

    ``auth``: basic-auth (user, password); ``ca_file``: CA bundle for an https URL with a
    private CA (``None``: the system's). ``last_error`` says why the latest question got
    ``None``.
    """

    def __init__(
        self,
        prometheus_url: str,
        selector: str,
        instance: str,
        timeout: float = 2.0,
        *,
        auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.url = prometheus_url.rstrip("/") + "/api/v1/query"
        self.query = fleet_query(selector)
        self.instance = instance
        self.timeout = timeout
        self._auth = auth
        self._verify: bool | str = ca_file or True
        self._session = requests.Session()
        self._worker: threading.Thread | None = None
        self.last_error: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> FleetView | None:
        """The view ``[fleet]`` describes; None when ``prometheus_url`` is empty (act alone).

        Raises ConfigError (exit 78) for a password file that cannot be read.
        """
        fleet = config.fleet
        if not fleet.prometheus_url:
            return None
        auth = None
        if fleet.prometheus_username:
            auth = (fleet.prometheus_username, _read_password(fleet.prometheus_password_file))
        return cls(
            fleet.prometheus_url,
            fleet.selector,
            own_instance(config),
            fleet.query_timeout,
            auth=auth,
            ca_file=fleet.prometheus_ca_file or None,
        )

    def close(self) -> None:
        self._session.close()

    def unavailable_hosts(self) -> tuple[str, ...] | None:
        """The other hosts of the fleet that are out, or None if Prometheus could not be asked."""
        answer = self.ask()
        return None if answer is None else answer.others

    def unavailable_others(self) -> int | None:
        """How many other hosts of the fleet are out, or None if Prometheus could not be asked."""
        answer = self.ask()
        return None if answer is None else answer.count

    def ask(self) -> FleetAnswer | None:
        """One question, waited for at most ``timeout`` seconds."""
        previous = self._worker
        if previous is not None and previous.is_alive():
            self.last_error = "the previous fleet query is still running"
            return None
        box: dict[str, FleetAnswer | str] = {}
        worker = threading.Thread(
            target=self._exchange, args=(box,), name="fleet-query", daemon=True
        )
        self._worker = worker
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            self.last_error = f"no answer from Prometheus within {self.timeout:g}s"
            return None
        outcome = box.get("answer")
        if isinstance(outcome, FleetAnswer):
            self.last_error = None
            return outcome
        self.last_error = str(outcome) if outcome else "the fleet query ended without a result"
        return None

    def _exchange(self, box: dict[str, FleetAnswer | str]) -> None:
        try:
            box["answer"] = parse_answer(self._fetch(), self.instance)
        except FleetQueryError as exc:
            box["answer"] = one_line(str(exc), _ERROR_LIMIT)
        except Exception as exc:  # never let a worker die without saying why
            box["answer"] = one_line(f"{type(exc).__name__}: {exc}", _ERROR_LIMIT)

    def _fetch(self) -> bytes:
        params: Mapping[str, str] = {"query": self.query, "timeout": f"{self.timeout:g}s"}
        try:
            with self._session.get(
                self.url,
                params=params,
                auth=self._auth,
                verify=self._verify,
                timeout=(self.timeout, self.timeout),
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    body = response.raw.read(_ERROR_LIMIT, decode_content=True) or b""
                    raise FleetQueryError(
                        f"HTTP {response.status_code}: {body.decode(errors='replace')}"
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_content(_CHUNK):
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise FleetQueryError(f"answer bigger than {MAX_BODY} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.Timeout:
            raise FleetQueryError("Prometheus timed out") from None
        except requests.ConnectionError as exc:
            raise FleetQueryError(f"cannot reach Prometheus: {exc}") from None
        except requests.RequestException as exc:
            raise FleetQueryError(f"{type(exc).__name__}: {exc}") from None


def _read_password(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_PASSWORD_FILE + 1)
    except OSError as exc:
        raise ConfigError(
            f"fleet.prometheus_password_file: cannot read {path}: {exc.strerror or exc}"
        ) from None
    if len(data) > _MAX_PASSWORD_FILE:
        raise ConfigError(
            f"fleet.prometheus_password_file: {path} is not a password file (over 4 KiB)"
        )
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        raise ConfigError(f"fleet.prometheus_password_file: {path} is empty")
    return text


__all__ = [
    "MAX_BODY",
    "UNAVAILABLE_STATES",
    "FleetAnswer",
    "FleetQueryError",
    "FleetView",
    "fleet_query",
    "own_instance",
    "parse_answer",
]
