"""Readiness for balancers: the state -> answer rule, /ready on the exporter, the HAProxy agent.

The exporter and the agent are real servers on free ports, spoken to over real sockets; the
readiness they serve is an input of the test (what the daemon's main loop would compute).
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
from support.tools import free_port
from support.wait import wait_until

from ollama_watchdog.exporter.agent import HaproxyAgent
from ollama_watchdog.exporter.http import Exporter, SnapshotBoard
from ollama_watchdog.exporter.webconfig import load_web_config
from ollama_watchdog.healing.readiness import (
    STARTING,
    AgentWord,
    Readiness,
    Reason,
    readiness,
)

# every state name of ollama_watchdog_state, today's and the ones the healing work adds
STAYS_IN = ["healthy", "degraded", "busy", "backoff", "gave_up", "disabled", "deferred"]
TAKES_OUT = ["maintenance", "draining", "remediating", "restarting"]


@pytest.mark.parametrize("state", STAYS_IN)
def test_states_that_keep_the_host_in_follow_the_liveness_probe(state: str) -> None:
    assert readiness(state, True) == Readiness(True, Reason.READY)
    assert readiness(state, False) == Readiness(False, Reason.DOWN)
    assert readiness(state, None) == STARTING == Readiness(False, Reason.STARTING)


@pytest.mark.parametrize("state", TAKES_OUT)
def test_states_that_take_the_host_out_win_over_the_probe(state: str) -> None:
    for live in (True, False, None):
        answer = readiness(state, live)
        assert not answer.ready
        assert str(answer.reason) == state


def test_agent_words() -> None:
    assert readiness("healthy", True).agent_word is AgentWord.READY
    assert readiness("draining", True).agent_word is AgentWord.DRAIN
    for state, live in [
        ("maintenance", True), ("remediating", True), ("restarting", False),
        ("healthy", False), ("healthy", None), ("gave_up", False),
    ]:  # fmt: skip
        assert readiness(state, live).agent_word is AgentWord.MAINT, (state, live)


# -- /ready on the exporter --------------------------------------------------------------------


class Switch:
    """What the daemon's loop would keep current: a value the test sets."""

    def __init__(self) -> None:
        self.value = STARTING

    def __call__(self) -> tuple[bool, str]:
        return self.value.as_tuple()


@pytest.fixture
def switch() -> Switch:
    return Switch()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def exporter(tmp_path: Path, switch: Switch) -> Iterator[str]:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web_yml = tmp_path / "web.yml"
    web_yml.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exp = Exporter(
        f"127.0.0.1:{free_port()}",
        SnapshotBoard(),
        lambda: (True, "ok"),
        load_web_config(web_yml),
        readiness=switch,
    )
    exp.start()
    try:
        yield f"http://127.0.0.1:{exp.port}"
    finally:
        exp.stop()


def test_ready_answers_200_or_503_with_one_word(exporter: str, switch: Switch) -> None:
    answer = requests.get(exporter + "/ready", timeout=10)
    assert (answer.status_code, answer.text) == (503, "starting\n")
    switch.value = readiness("healthy", True)
    answer = requests.get(exporter + "/ready", timeout=10)
    assert (answer.status_code, answer.text) == (200, "ready\n")
    assert answer.headers["Cache-Control"] == "no-store"
    for state, live, word in [
        ("healthy", False, "down"), ("draining", True, "draining"),
        ("maintenance", True, "maintenance"), ("remediating", True, "remediating"),
        ("restarting", False, "restarting"),
    ]:  # fmt: skip
        switch.value = readiness(state, live)
        answer = requests.get(exporter + "/ready?probe=haproxy", timeout=10)
        assert (answer.status_code, answer.text) == (503, word + "\n"), state


def test_ready_needs_no_credentials_while_metrics_does(exporter: str, switch: Switch) -> None:
    switch.value = readiness("healthy", True)
    assert requests.get(exporter + "/metrics", timeout=10).status_code == 401
    assert requests.get(exporter + "/healthz", timeout=10).status_code == 401
    assert requests.get(exporter + "/ready", timeout=10).status_code == 200
    # wrong credentials do not turn a ready host unready either
    wrong = {"Authorization": basic("prometheus", "nope")}
    assert requests.get(exporter + "/ready", headers=wrong, timeout=10).status_code == 200
    right = {"Authorization": basic("prometheus", "s3cret")}
    metrics = requests.get(exporter + "/metrics", headers=right, timeout=10)
    assert metrics.status_code == 200
    # and /ready carries nothing of what /metrics has
    assert "ollama_" not in requests.get(exporter + "/ready", timeout=10).text


def test_head_ready_has_the_status_and_no_body(exporter: str, switch: Switch) -> None:
    switch.value = readiness("restarting", True)
    answer = requests.head(exporter + "/ready", timeout=10)
    assert answer.status_code == 503
    assert answer.content == b""


def test_a_provider_that_raises_reads_as_down(tmp_path: Path) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("bug")

    listen = f"127.0.0.1:{free_port()}"
    exp = Exporter(listen, SnapshotBoard(), lambda: (True, "ok"), readiness=broken)
    exp.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{exp.port}/ready", timeout=10)
        assert (answer.status_code, answer.text) == (503, "down\n")
    finally:
        exp.stop()


def test_an_exporter_without_a_provider_is_not_ready() -> None:
    exp = Exporter(f"127.0.0.1:{free_port()}", SnapshotBoard(), lambda: (True, "ok"))
    exp.start()
    try:
        answer = requests.get(f"http://127.0.0.1:{exp.port}/ready", timeout=10)
        assert (answer.status_code, answer.text) == (503, "starting\n")
    finally:
        exp.stop()


# -- the HAProxy agent -------------------------------------------------------------------------


class Words:
    def __init__(self) -> None:
        self.value = STARTING

    def __call__(self) -> str:
        return str(self.value.agent_word)


def agent_answer(port: int, send: bytes = b"") -> bytes:
    """What HAProxy reads: connect, send agent-send (if any), read until the agent closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if send:
            sock.sendall(send)
        data = b""
        while chunk := sock.recv(1024):
            data += chunk
        return data


@pytest.fixture
def words() -> Words:
    return Words()


@pytest.fixture
def agent(words: Words) -> Iterator[HaproxyAgent]:
    a = HaproxyAgent(f"127.0.0.1:{free_port()}", words, timeout=30.0, max_connections=2)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def test_agent_answers_the_haproxy_words(agent: HaproxyAgent, words: Words) -> None:
    assert agent_answer(agent.port) == b"maint\n"  # before the first probe
    words.value = readiness("healthy", True)
    assert agent_answer(agent.port) == b"ready\n"
    words.value = readiness("draining", True)
    assert agent_answer(agent.port) == b"drain\n"
    words.value = readiness("maintenance", True)
    assert agent_answer(agent.port) == b"maint\n"
    words.value = readiness("healthy", False)
    assert agent_answer(agent.port) == b"maint\n"


def test_agent_ignores_what_agent_send_sends(agent: HaproxyAgent, words: Words) -> None:
    words.value = readiness("healthy", True)
    assert agent_answer(agent.port, b"ollama/gpu1\n") == b"ready\n"
    assert agent_answer(agent.port, b"x" * 1000 + b"\n") == b"ready\n"


def test_agent_caps_connections_and_frees_the_slots(agent: HaproxyAgent, words: Words) -> None:
    words.value = readiness("healthy", True)
    held = [socket.create_connection(("127.0.0.1", agent.port), timeout=10) for _ in range(2)]
    try:
        for sock in held:  # answered, and the agent now waits for these peers to hang up
            assert sock.recv(64) == b"ready\n"
        assert agent_answer(agent.port) == b""  # over the cap: closed unanswered
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: agent_answer(agent.port) == b"ready\n", "a slot free again", timeout=30)


def test_agent_closes_on_a_peer_that_never_hangs_up(words: Words) -> None:
    a = HaproxyAgent(f"127.0.0.1:{free_port()}", words, timeout=0.5, max_connections=1)
    a.start()
    try:
        with socket.create_connection(("127.0.0.1", a.port), timeout=30) as sock:
            assert sock.recv(64) == b"maint\n"
            # this peer stays connected; past its deadline the agent drops it and the one
            # slot serves the next connection
            wait_until(lambda: agent_answer(a.port) == b"maint\n", "the slot back", timeout=30)
    finally:
        a.stop()


def test_agent_refuses_a_taken_port(agent: HaproxyAgent, words: Words) -> None:
    with pytest.raises(OSError):
        HaproxyAgent(f"127.0.0.1:{agent.port}", words)
