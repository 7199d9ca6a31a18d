"""healing/fleet.py against a real Prometheus scraping a fleet of watchdog stand-ins.

Each "host" is a tiny ``http.server`` serving ``ollama_watchdog_state`` in the text format, in
the state the test sets; a real ``prometheus`` scrapes them every second. ``FleetView`` asks
that Prometheus how many *other* hosts are out, exactly as a watchdog would: its own instance
excluded, the selector honoured, and ``None`` whenever Prometheus cannot be asked (refused,
hung, an error, a body that is not an answer, one too big), so the caller acts alone.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
from support.certs import server_certs
from support.prometheus import PrometheusProcess
from support.stub import FakeWatchdog, QuietHandler, StubServer
from support.tools import free_port, require_tool
from support.wait import wait_until

from ollama_watchdog.config import Config, ConfigError, ExporterConfig, FleetConfig
from ollama_watchdog.healing.fleet import (
    MAX_BODY,
    FleetView,
    fleet_query,
    own_instance,
)

pytestmark = pytest.mark.integration

JOB = "ollama-watchdog"
WAIT = 90.0


@dataclass
class Fleet:
    prometheus: PrometheusProcess
    hosts: list[FakeWatchdog]
    elsewhere: FakeWatchdog  # a watchdog of another fleet (another job), same Prometheus

    def view(self, me: FakeWatchdog, selector: str = f'job="{JOB}"') -> FleetView:
        return FleetView(self.prometheus.url, selector, me.instance, timeout=5.0)

    def settle(self) -> None:
        """Wait until Prometheus holds every host's current state."""
        want = {h.instance: h.state for h in [*self.hosts, self.elsewhere]}

        def seen() -> bool:
            got = {
                r["metric"]["instance"]: r["metric"]["state"]
                for r in self.prometheus.result("ollama_watchdog_state == 1")
            }
            return got == want

        self.prometheus.wait(seen, f"seeing {want}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_tool("prometheus")
    hosts = [FakeWatchdog() for _ in range(3)]
    elsewhere = FakeWatchdog("restarting")
    prom = PrometheusProcess(
        tmp_path_factory.mktemp("fleet-prometheus"),
        scrape_configs=[
            {"job_name": JOB, "static_configs": [{"targets": [h.instance for h in hosts]}]},
            {"job_name": "other-fleet", "static_configs": [{"targets": [elsewhere.instance]}]},
        ],
    )
    try:
        prom.start()
        yield Fleet(prom, hosts, elsewhere)
    finally:
        prom.stop()
        for h in [*hosts, elsewhere]:
            h.close()


def set_states(fleet: Fleet, *states: str) -> None:
    for host, state in zip(fleet.hosts, states, strict=True):
        host.state = state
    fleet.settle()


def test_the_query_is_the_documented_one() -> None:
    assert fleet_query('job="ollama-watchdog"') == (
        'ollama_watchdog_state{state=~"draining|remediating|restarting|backoff",'
        'job="ollama-watchdog"} == 1'
    )
    assert fleet_query("") == (
        'ollama_watchdog_state{state=~"draining|remediating|restarting|backoff"} == 1'
    )


def test_no_host_out(fleet: Fleet) -> None:
    set_states(fleet, "healthy", "degraded", "busy")
    for me in fleet.hosts:
        view = fleet.view(me)
        assert view.unavailable_others() == 0
        assert view.last_error is None


def test_other_hosts_out_are_counted_and_the_asker_is_not(fleet: Fleet) -> None:
    a, b, c = fleet.hosts
    set_states(fleet, "restarting", "draining", "healthy")
    assert fleet.view(a).unavailable_hosts() == (b.instance,)
    assert fleet.view(b).unavailable_hosts() == (a.instance,)
    assert fleet.view(c).unavailable_others() == 2
    set_states(fleet, "remediating", "backoff", "healthy")
    assert fleet.view(c).unavailable_others() == 2


def test_states_that_do_not_count(fleet: Fleet) -> None:
    # long-lasting states must not block healing fleet-wide; deferred has not acted yet
    a = fleet.hosts[0]
    set_states(fleet, "healthy", "maintenance", "gave_up")
    assert fleet.view(a).unavailable_others() == 0
    set_states(fleet, "healthy", "deferred", "disabled")
    assert fleet.view(a).unavailable_others() == 0


def test_the_selector_picks_the_fleet(fleet: Fleet) -> None:
    a = fleet.hosts[0]
    set_states(fleet, "healthy", "healthy", "healthy")  # the other job's host is restarting
    assert fleet.view(a).unavailable_others() == 0
    assert fleet.view(a, selector="").unavailable_hosts() == (fleet.elsewhere.instance,)
    assert fleet.view(a, selector='job=~"ollama-watchdog|other-fleet"').unavailable_others() == 1


def test_the_view_follows_changes(fleet: Fleet) -> None:
    a, b, _ = fleet.hosts
    set_states(fleet, "healthy", "restarting", "healthy")
    view = fleet.view(a)
    assert view.unavailable_others() == 1
    b.state = "healthy"
    wait_until(lambda: view.unavailable_others() == 0, "b back in the view", timeout=WAIT)


# -- Prometheus that cannot be asked --------------------------------------------------------


def test_refused_gives_none() -> None:
    view = FleetView(f"http://127.0.0.1:{free_port()}", "", "me:1", timeout=5.0)
    assert view.unavailable_others() is None
    assert view.last_error is not None and "cannot reach Prometheus" in view.last_error


class _Stub:
    """A server that is not a working Prometheus: it answers ``body`` with ``status``, or
    accepts and never answers (``body`` None), or (``trickle``) sends its headers and then one
    byte of body every tenth of a second until closed: each read is quick, the answer never
    ends."""

    def __init__(self, status: int = 200, body: bytes | None = b"", trickle: bool = False) -> None:
        self.release = threading.Event()
        stub = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if body is None:
                    stub.release.wait(60)
                    return
                if trickle:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    while not stub.release.wait(0.1):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                    return
                self.reply(status, body, "application/json")

        self._server = StubServer(Handler)
        self.url = self._server.url

    def close(self) -> None:
        self.release.set()
        self._server.close()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (200, b"<html>not prometheus</html>", "not JSON"),
        (200, b'{"status": "error", "error": "parse error"}', "parse error"),
        (200, b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
         "instant vector"),
        (200, b'{"status": "success", "data": {"resultType": "vector", "result": [7]}}',
         "no labels"),
        (503, b"Service Unavailable", "HTTP 503"),
        (200, b'{"status": "success", "data": ' + b" " * MAX_BODY + b"}", "bigger than"),
    ],
    ids=["html", "error", "matrix", "garbage-result", "http-503", "too-big"],
)  # fmt: skip
def test_a_bad_answer_gives_none(status: int, body: bytes, error: str) -> None:
    stub = _Stub(status, body)
    try:
        view = FleetView(stub.url, "", "me:1", timeout=5.0)
        assert view.unavailable_others() is None
        assert view.last_error is not None and error in view.last_error
    finally:
        stub.close()


def test_a_hung_prometheus_gives_none() -> None:
    stub = _Stub(body=None)
    try:
        view = FleetView(stub.url, "", "me:1", timeout=0.5)
        assert view.unavailable_others() is None
        assert view.last_error is not None
    finally:
        stub.close()


def test_a_trickling_prometheus_meets_the_deadline_and_one_query_at_a_time() -> None:
    stub = _Stub(trickle=True)
    try:
        view = FleetView(stub.url, "", "me:1", timeout=1.0)
        assert view.unavailable_others() is None
        assert view.last_error == "no answer from Prometheus within 1s"
        # the trickling exchange is still running: no second one piles up behind it
        assert view.unavailable_others() is None
        assert view.last_error == "the previous fleet query is still running"
    finally:
        stub.close()


# -- TLS and basic auth ------------------------------------------------------------------------


def test_tls_and_basic_auth(tmp_path: Path, fleet: Fleet) -> None:
    a, b, _ = fleet.hosts
    set_states(fleet, "healthy", "restarting", "healthy")
    ca, crt, key = server_certs(tmp_path)
    hashed = bcrypt.hashpw(b"fleet-secret", bcrypt.gensalt(rounds=4)).decode()
    prom = PrometheusProcess(
        tmp_path / "tls-prometheus",
        scrape_configs=[
            {"job_name": JOB, "static_configs": [{"targets": [h.instance for h in fleet.hosts]}]}
        ],
        web_config=(
            f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
            f"basic_auth_users:\n  watchdog: '{hashed}'\n"
        ),
        scheme="https",
    )
    prom.client_kwargs = {"verify": str(ca), "auth": ("watchdog", "fleet-secret")}
    with prom:
        prom.wait(lambda: len(prom.result(fleet_query(f'job="{JOB}"'))) == 1, "b restarting")
        good = FleetView(prom.url, f'job="{JOB}"', a.instance, 5.0,
                         auth=("watchdog", "fleet-secret"), ca_file=str(ca))  # fmt: skip
        assert good.unavailable_hosts() == (b.instance,)
        wrong = FleetView(prom.url, f'job="{JOB}"', a.instance, 5.0,
                          auth=("watchdog", "nope"), ca_file=str(ca))  # fmt: skip
        assert wrong.unavailable_others() is None
        assert wrong.last_error is not None and "HTTP 401" in wrong.last_error
        no_ca = FleetView(prom.url, f'job="{JOB}"', a.instance, 5.0,
                          auth=("watchdog", "fleet-secret"))  # fmt: skip
        assert no_ca.unavailable_others() is None


# -- from the configuration ----------------------------------------------------------------


def test_from_config(tmp_path: Path) -> None:
    assert FleetView.from_config(Config()) is None  # no prometheus_url: act alone
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    config = Config(
        exporter=ExporterConfig(listen="10.0.0.11:9778"),
        fleet=FleetConfig(
            prometheus_url="https://prom.example.internal:9090/",
            prometheus_username="watchdog",
            prometheus_password_file=str(password),
            selector='job="ollama-watchdog",site="lab"',
        ),
    )
    view = FleetView.from_config(config)
    assert view is not None
    assert view.url == "https://prom.example.internal:9090/api/v1/query"
    assert view.instance == "10.0.0.11:9778"
    assert view.query == fleet_query('job="ollama-watchdog",site="lab"')
    password.unlink()
    with pytest.raises(ConfigError, match="cannot read"):
        FleetView.from_config(config)


def test_own_instance() -> None:
    def inst(listen: str, instance: str = "") -> str:
        return own_instance(
            Config(exporter=ExporterConfig(listen=listen), fleet=FleetConfig(instance=instance))
        )

    assert inst("10.0.0.11:9778") == "10.0.0.11:9778"
    assert inst("gpu1.example.internal:9778") == "gpu1.example.internal:9778"
    assert inst("[fd00::11]:9778") == "[fd00::11]:9778"
    assert inst("127.0.0.1:9778") == f"{socket.getfqdn()}:9778"
    assert inst(":9779") == f"{socket.getfqdn()}:9779"
    assert inst(":9778", "gpu1:9778") == "gpu1:9778"
