"""The exporter-toolkit web config: validation errors, basic auth, and the bcrypt cache."""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path

import bcrypt
import pytest
from support.tools import require_tool

from ollama_watchdog.config import ConfigError, ExporterConfig, parse_listen
from ollama_watchdog.exporter.webconfig import WebConfig, load_web_config

# cost 4 keeps the suite fast; the cost is part of the hash, so production hashes work the same
HASH = bcrypt.hashpw(b"s3cret pass", bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def make_cert(directory: Path) -> None:
    """A self-signed EC key pair, server.crt/server.key, made by the real openssl CLI."""
    openssl = require_tool("openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(directory / "server.key"), "-out", str(directory / "server.crt"),
         "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def test_users_only_config_checks_passwords(tmp_path: Path) -> None:
    web = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n"))
    assert web.ssl_context() is None
    assert web.auth_required
    assert web.check_basic_auth(basic("prometheus", "s3cret pass"))
    assert not web.check_basic_auth(basic("prometheus", "s3cret pass "))
    assert not web.check_basic_auth(basic("prometheus", ""))
    assert not web.check_basic_auth(basic("grafana", "s3cret pass"))
    assert not web.check_basic_auth(None)
    assert not web.check_basic_auth("")
    assert not web.check_basic_auth("Bearer abc")
    assert not web.check_basic_auth("Basic !!!not-base64")
    assert not web.check_basic_auth("Basic " + base64.b64encode(b"no-colon").decode())


def test_password_with_colon_and_utf8(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw("pä:ss".encode(), bcrypt.gensalt(rounds=4)).decode()
    web = load_web_config(write(tmp_path, f"basic_auth_users:\n  ops: '{hashed}'\n"))
    assert web.check_basic_auth(basic("ops", "pä:ss"))
    assert not web.check_basic_auth(basic("ops", "pä"))


def test_no_users_means_no_auth(tmp_path: Path) -> None:
    web = load_web_config(write(tmp_path, "basic_auth_users: {}\n"))
    assert not web.auth_required
    assert web.check_basic_auth(None)


class CountingCheckpw:
    """Counts calls into the bcrypt library (third-party code, not ours)."""

    def __init__(self) -> None:
        self.calls = 0
        self._real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return self._real(password, hashed)


def test_verified_credentials_are_cached_and_failures_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    web = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n"))
    spy = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", spy)
    for _ in range(5):
        assert web.check_basic_auth(basic("prometheus", "s3cret pass"))
    assert spy.calls == 1  # one bcrypt for five scrapes
    for _ in range(3):
        assert not web.check_basic_auth(basic("prometheus", "guess"))
    assert spy.calls == 4  # every wrong guess pays full bcrypt cost
    # an unknown user also costs one bcrypt (against a dummy), so timing hides which names exist
    assert not web.check_basic_auth(basic("nobody", "s3cret pass"))
    assert spy.calls == 5


def test_cache_does_not_survive_a_changed_hash(tmp_path: Path) -> None:
    old = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n"))
    assert old.check_basic_auth(basic("prometheus", "s3cret pass"))
    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(rounds=4)).decode()
    new = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: '{new_hash}'\n"))
    assert not new.check_basic_auth(basic("prometheus", "s3cret pass"))
    assert new.check_basic_auth(basic("prometheus", "rotated"))


def test_tls_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    make_cert(certs)
    path = write(
        tmp_path,
        "tls_server_config:\n  cert_file: certs/server.crt\n  key_file: certs/server.key\n"
        "  min_version: TLS13\n",
    )
    web = load_web_config(path)
    context = web.ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_NONE
    assert not web.auth_required


def test_client_ca_defaults_to_require_and_verify(tmp_path: Path) -> None:
    make_cert(tmp_path)
    path = write(
        tmp_path,
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_ca_file: server.crt\n",
    )
    context = load_web_config(path).ssl_context()
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


# Each invalid config is paired with the exact line it must produce (after the file name).
INVALID = [
    ("unknown top key", "http_server_config:\n  http2: false\n",
     "unsupported key http_server_config (supported: tls_server_config, basic_auth_users)"),
    ("plain password", "basic_auth_users:\n  prometheus: hunter2\n",
     "basic_auth_users.prometheus must be a bcrypt hash ($2b$...), not a plain password"),
    ("broken hash", "basic_auth_users:\n  prometheus: '$2b$04$tooShort'\n",
     "basic_auth_users.prometheus is not a valid bcrypt hash"),
    ("colon in user", f"basic_auth_users:\n  'a:b': '{HASH}'\n",
     "basic_auth_users: invalid user name 'a:b'"),
    ("users not a map", "basic_auth_users: [a, b]\n", "basic_auth_users must be a mapping"),
    ("missing key file", "tls_server_config:\n  cert_file: server.crt\n",
     "tls_server_config.key_file is required"),
    ("cert does not exist", "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
     "tls_server_config.cert_file: {dir}/nope.crt does not exist"),
    ("unknown tls key", "tls_server_config:\n  cert_file: a\n  cipher_suites: [x]\n",
     "unsupported key tls_server_config.cipher_suites"),
    ("unsupported client auth",
     "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequestClientCert\n",
     "tls_server_config.client_auth_type RequestClientCert is not supported; use "
     "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"),
    ("verify without CA",
     "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n",
     "tls_server_config.client_auth_type RequireAndVerifyClientCert needs client_ca_file"),
    ("bad min version",
     "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: SSL3\n",
     "tls_server_config.min_version 'SSL3' is invalid (one of TLS10, TLS11, TLS12, TLS13)"),
    ("key does not match cert",
     "tls_server_config:\n  cert_file: server.crt\n  key_file: web.yml\n",
     "tls_server_config: cannot load certificate/key"),
    ("not yaml", "basic_auth_users: [\n", "not valid YAML at line 2"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [pytest.param(t, e, id=i) for i, t, e in INVALID])
def test_invalid_web_config_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    if "server.crt" in text:
        make_cert(tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_web_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"exporter.web_config {path}: ")
    assert expected.format(dir=tmp_path.resolve()) in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"web\.yml: cannot read \(No such file or directory\)"):
        load_web_config(tmp_path / "web.yml")


def test_default_exporter_listen_is_loopback_only() -> None:
    host, _ = parse_listen(ExporterConfig().listen)
    assert host == "127.0.0.1"
    assert ExporterConfig().web_config == ""


def test_webconfig_without_file_is_open() -> None:
    web = WebConfig()
    assert web.ssl_context() is None and web.check_basic_auth(None)
