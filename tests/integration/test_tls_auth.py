"""The running exporter behind TLS and basic auth, spoken to by real clients (curl, requests).

``ollama-watchdog run`` is started as a real process with ``[exporter] web_config`` pointing at
an exporter-toolkit YAML; certificates come from the real ``openssl`` CLI. Ollama is not needed:
the exporter serves its own metrics whether Ollama answers or not.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import requests
from support.certs import ca, key_and_csr, server_certs, sign
from support.daemon import DaemonProcess, quick_config
from support.tools import free_port, require_tool
from support.wait import wait_until

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_crt: Path
    server_key: Path
    client_ca: Path
    client_crt: Path
    client_key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    server_certs(d)
    ca(d, "client-ca")
    key_and_csr(d, "client", "prometheus")
    sign(d, "client", "client-ca", "extendedKeyUsage=clientAuth")
    return Certs(
        d / "server-ca.crt", d / "server.crt", d / "server.key",
        d / "client-ca.crt", d / "client.crt", d / "client.key",
    )  # fmt: skip


def start_daemon(tmp: Path, web_yaml: str) -> DaemonProcess:
    (tmp / "web.yml").write_text(web_yaml)
    port = free_port()
    config = quick_config(
        f"http://127.0.0.1:{free_port()}",  # nothing listens: the exporter still serves
        tmp,
        port,
        exporter={"web_config": str(tmp / "web.yml")},
    )
    daemon = DaemonProcess(config, tmp).start(wait=False)
    daemon.url = f"https://127.0.0.1:{port}"
    return daemon


def wait_listening(daemon: DaemonProcess, ca: Path, timeout: float = 30.0) -> None:
    """Wait until the port accepts TLS; any HTTP answer (even 401) means it is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"daemon exited {daemon.proc.returncode}: {daemon.stderr()}")
        try:
            requests.get(daemon.url + "/healthz", timeout=2, verify=str(ca))
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError("exporter never listened: " + daemon.stderr())


@pytest.fixture
def tls_auth_daemon(tmp_path: Path, certs: Certs) -> Iterator[DaemonProcess]:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    daemon = start_daemon(
        tmp_path,
        f"tls_server_config:\n  cert_file: {certs.server_crt}\n  key_file: {certs.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n",
    )
    try:
        wait_listening(daemon, certs.ca)
        yield daemon
    finally:
        daemon.stop()


def curl(*args: str) -> tuple[int, str, str]:
    """Run real curl; returns (exit code, HTTP status as text, body)."""
    proc = subprocess.run(
        [require_tool("curl"), "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, status = proc.stdout.rpartition("\n")
    return proc.returncode, status, body


def test_curl_with_the_right_password_gets_metrics_over_tls(
    tls_auth_daemon: DaemonProcess, certs: Certs
) -> None:
    url = tls_auth_daemon.url + "/metrics"
    code, status, body = curl("--cacert", str(certs.ca), "-u", f"prometheus:{PASSWORD}", url)
    assert (code, status) == (0, "200")
    assert "ollama_watchdog_build_info{" in body
    assert "ollama_up" in body


def test_curl_with_a_wrong_or_no_password_gets_401(
    tls_auth_daemon: DaemonProcess, certs: Certs
) -> None:
    url = tls_auth_daemon.url + "/metrics"
    for auth in (["-u", "prometheus:wrong"], ["-u", f"grafana:{PASSWORD}"], []):
        code, status, body = curl("--cacert", str(certs.ca), *auth, url)
        assert (code, status) == (0, "401"), auth
        assert "ollama_" not in body
    # the challenge tells clients to use basic auth
    proc = subprocess.run(
        [require_tool("curl"), "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10",
         "--cacert", str(certs.ca), url],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert 'www-authenticate: basic realm="ollama-watchdog"' in proc.stdout.lower()


def test_the_runbook_is_behind_the_same_gate(tls_auth_daemon: DaemonProcess, certs: Certs) -> None:
    # /runbook follows the exporter's auth rules like every other path
    url = tls_auth_daemon.url + "/runbook"
    code, status, body = curl("--cacert", str(certs.ca), url)
    assert (code, status) == (0, "401")
    assert "OllamaDown" not in body
    code, status, body = curl("--cacert", str(certs.ca), "-u", f"prometheus:{PASSWORD}", url)
    assert (code, status) == (0, "200")
    assert '<h3 id="ollamadown">OllamaDown</h3>' in body


def test_ready_needs_no_password_but_still_tls(
    tls_auth_daemon: DaemonProcess, certs: Certs
) -> None:
    # Balancers' health checks carry no credentials: /ready answers without them, over TLS.
    # Nothing listens at this daemon's Ollama URL, so once the first probe failed it says so.
    url = tls_auth_daemon.url + "/ready"
    wait_until(
        lambda: curl("--cacert", str(certs.ca), url)[1:] == ("503", "down\n"),
        "/ready says down without a password",
        timeout=30,
    )
    _, status, body = curl("--cacert", str(certs.ca), "-u", "prometheus:wrong", url)
    assert (status, body) == ("503", "down\n")
    # the certificate is still checked, and plain HTTP still gets nothing
    assert curl(url)[0] == 60
    _, status, body = curl(url.replace("https://", "http://"))
    assert status != "503" and "down" not in body


def test_curl_refuses_the_certificate_without_the_ca(tls_auth_daemon: DaemonProcess) -> None:
    code, status, _ = curl("-u", f"prometheus:{PASSWORD}", tls_auth_daemon.url + "/metrics")
    assert code == 60  # CURLE_PEER_FAILED_VERIFICATION: the server is not in the system store
    assert status == "000"


def test_plain_http_to_the_tls_port_gets_no_metrics(tls_auth_daemon: DaemonProcess) -> None:
    url = tls_auth_daemon.url.replace("https://", "http://") + "/metrics"
    _, status, body = curl("-u", f"prometheus:{PASSWORD}", url)
    assert status != "200"
    assert "ollama_" not in body


def test_requests_sees_the_same(tls_auth_daemon: DaemonProcess, certs: Certs) -> None:
    url = tls_auth_daemon.url + "/metrics"
    ok = requests.get(url, auth=("prometheus", PASSWORD), verify=str(certs.ca), timeout=10)
    assert ok.status_code == 200 and "ollama_watchdog_build_info" in ok.text
    bad = requests.get(url, auth=("prometheus", PASSWORD + "x"), verify=str(certs.ca), timeout=10)
    assert bad.status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, auth=("prometheus", PASSWORD), timeout=10)
    # a raw header that is not basic auth at all
    raw = requests.get(
        url,
        headers={"Authorization": "Basic " + base64.b64encode(b"prometheus").decode()},
        verify=str(certs.ca),
        timeout=10,
    )
    assert raw.status_code == 401


def test_many_scrapes_with_the_right_password_all_succeed(
    tls_auth_daemon: DaemonProcess, certs: Certs
) -> None:
    # every scrape after the first is served from the verified-credentials cache; this checks
    # that the cache keeps answering yes for the right password (not how fast it is)
    with requests.Session() as session:
        session.auth = ("prometheus", PASSWORD)
        # verify per request: a Session attribute loses to REQUESTS_CA_BUNDLE in the environment
        codes = [
            session.get(
                tls_auth_daemon.url + "/metrics", verify=str(certs.ca), timeout=10
            ).status_code
            for _ in range(20)
        ]
    assert codes == [200] * 20


@pytest.fixture
def mtls_daemon(tmp_path: Path, certs: Certs) -> Iterator[DaemonProcess]:
    daemon = start_daemon(
        tmp_path,
        f"tls_server_config:\n  cert_file: {certs.server_crt}\n  key_file: {certs.server_key}\n"
        f"  client_ca_file: {certs.client_ca}\n  min_version: TLS13\n",
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the handshake needs a client certificate, so poll with one
            try:
                requests.get(
                    daemon.url + "/healthz",
                    cert=(str(certs.client_crt), str(certs.client_key)),
                    verify=str(certs.ca),
                    timeout=2,
                )
                break
            except requests.RequestException:
                assert daemon.proc is not None and daemon.proc.poll() is None, daemon.stderr()
                assert time.monotonic() < deadline, daemon.stderr()
                time.sleep(0.1)
        yield daemon
    finally:
        daemon.stop()


def test_client_certificate_is_required_when_a_client_ca_is_set(
    mtls_daemon: DaemonProcess, certs: Certs
) -> None:
    url = mtls_daemon.url + "/metrics"
    code, status, body = curl(
        "--cacert", str(certs.ca), "--cert", str(certs.client_crt), "--key", str(certs.client_key),
        url,
    )  # fmt: skip
    assert (code, status) == (0, "200") and "ollama_up" in body
    code, status, _ = curl("--cacert", str(certs.ca), url)
    assert code != 0 and status == "000"
    # a certificate from another CA (the server's own) is not a client certificate we trust
    code, status, _ = curl(
        "--cacert", str(certs.ca), "--cert", str(certs.server_crt), "--key", str(certs.server_key),
        url,
    )  # fmt: skip
    assert code != 0 and status == "000"
    ok = requests.get(
        url, cert=(str(certs.client_crt), str(certs.client_key)), verify=str(certs.ca), timeout=10
    )
    assert ok.status_code == 200


def test_min_version_tls13_refuses_a_tls12_client(mtls_daemon: DaemonProcess, certs: Certs) -> None:
    code, status, _ = curl(
        "--tlsv1.2", "--tls-max", "1.2", "--cacert", str(certs.ca),
        "--cert", str(certs.client_crt), "--key", str(certs.client_key), mtls_daemon.url + "/",
    )  # fmt: skip
    assert code == 35  # CURLE_SSL_CONNECT_ERROR: no common protocol version
    assert status == "000"


def test_invalid_web_config_stops_the_daemon_with_exit_78(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("basic_auth_users:\n  prometheus: plaintext\n")
    config = quick_config(
        "http://127.0.0.1:1", tmp_path, exporter={"web_config": str(tmp_path / "web.yml")}
    )
    daemon = DaemonProcess(config, tmp_path).start(wait=False)
    try:
        assert daemon.proc is not None
        code = daemon.proc.wait(timeout=60)
    finally:
        daemon.stop()
    assert code == 78
    assert "basic_auth_users.prometheus must be a bcrypt hash" in daemon.stderr()
