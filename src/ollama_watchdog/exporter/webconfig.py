"""Exporter security: TLS and basic auth from a Prometheus exporter-toolkit web config file.

``[exporter] web_config`` names a YAML file in the format node_exporter and every official
exporter accept (``--web.config.file``), so an operator can reuse the file and habits they have::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this YAML file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional; needs client_ca_file
      client_ca_file: clients.pem
      min_version: TLS12             # TLS10 | TLS11 | TLS12 | TLS13
    basic_auth_users:
      prometheus: $2b$12$...         # bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')

Without the file the exporter serves plain HTTP on loopback only (``[exporter] listen``).

bcrypt is slow on purpose (tens of ms per check), and Prometheus sends the same credentials on
every scrape; like exporter-toolkit we remember credentials that verified, keyed by a SHA-256
of what was presented, so a scrape costs one hash and a dictionary lookup. A failed attempt is
never cached, so guessing stays as slow as bcrypt makes it, and an unknown user is checked
against a dummy hash so response time does not reveal which user names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ssl
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from ollama_watchdog.config import ConfigError

#: exporter-toolkit's client_auth_type values that Python's ssl module can honour
_CLIENT_AUTH: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: accepted by exporter-toolkit but not expressible with OpenSSL through Python: they ask for a
#: client certificate without verifying it, which would be a false sense of security anyway
_UNSUPPORTED_CLIENT_AUTH = frozenset({"RequestClientCert", "RequireAnyClientCert"})

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

_TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users"})
_TLS_KEYS = frozenset(
    {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
)
#: cost 4 (the minimum): only compared against so unknown users take as long as known ones
_DUMMY_HASH = bcrypt.hashpw(b"ollama-watchdog-dummy", bcrypt.gensalt(rounds=4))
#: bounded so presenting many distinct valid passwords cannot grow memory without end
_CACHE_SIZE = 256


@dataclass(frozen=True)
class TlsSettings:
    """The validated ``tls_server_config`` (paths already resolved)."""

    cert_file: Path
    key_file: Path
    client_auth: ssl.VerifyMode = ssl.CERT_NONE
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None


@dataclass(frozen=True)
class WebConfig:
    """Validated web configuration: TLS settings and bcrypt users; both optional."""

    tls: TlsSettings | None = None
    #: user name -> bcrypt hash
    users: Mapping[str, bytes] = field(default_factory=dict)
    _cache: OrderedDict[bytes, None] = field(default_factory=OrderedDict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def auth_required(self) -> bool:
        return bool(self.users)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server context for the exporter's socket, or None for plain HTTP."""
        if self.tls is None:
            return None
        return _build_context(self.tls)

    def check_basic_auth(self, header_value: str | None) -> bool:
        """True if the ``Authorization`` header carries valid credentials (or none are needed)."""
        if not self.users:
            return True
        credentials = _parse_basic(header_value)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        # The key binds the presented password to the stored hash, so a changed hash on reload
        # (a new WebConfig anyway) or another user's entry can never match a cached success.
        key = hashlib.sha256(
            user.encode() + b"\0" + (hashed or b"") + b"\0" + password.encode()
        ).digest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return True
        # bcrypt compares in constant time; an unknown user still pays for one check
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._cache[key] = None
                while len(self._cache) > _CACHE_SIZE:
                    self._cache.popitem(last=False)
        return ok


def _parse_basic(header_value: str | None) -> tuple[str, str] | None:
    if not header_value:
        return None
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def _build_context(tls: TlsSettings) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    if tls.max_version is not None:
        context.maximum_version = tls.max_version
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    context.verify_mode = tls.client_auth
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=str(tls.client_ca_file))
    return context


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"exporter.web_config {path}: {message}")


def _mapping(value: object, path: Path, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, f"{key} must be a mapping")
    return value


def load_web_config(path: Path | str) -> WebConfig:
    """Read and validate a web config file; every problem is one ``ConfigError`` line."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(path, f"cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _fail(path, f"not valid YAML{where}") from None
    top = _mapping(doc, path, "the file")
    unknown = sorted(set(top) - _TOP_KEYS)
    if unknown:
        raise _fail(
            path, f"unsupported key {unknown[0]} (supported: tls_server_config, basic_auth_users)"
        )
    tls = _load_tls(_mapping(top.get("tls_server_config"), path, "tls_server_config"), path)
    users = _load_users(_mapping(top.get("basic_auth_users"), path, "basic_auth_users"), path)
    config = WebConfig(tls=tls, users=users)
    if tls is not None:
        try:
            _build_context(tls)  # fail at start-up, not at the first scrape
        except (ssl.SSLError, OSError) as exc:
            raise _fail(path, f"tls_server_config: cannot load certificate/key ({exc})") from None
    return config


def _load_tls(section: dict[str, Any], path: Path) -> TlsSettings | None:
    if not section:
        return None
    unknown = sorted(set(section) - _TLS_KEYS)
    if unknown:
        raise _fail(path, f"unsupported key tls_server_config.{unknown[0]}")

    def file_key(key: str, required: bool) -> Path | None:
        value = section.get(key)
        if value in (None, ""):
            if required:
                raise _fail(path, f"tls_server_config.{key} is required")
            return None
        if not isinstance(value, str):
            raise _fail(path, f"tls_server_config.{key} must be a path")
        resolved = (path.parent / value).resolve()  # relative to the YAML file, like the toolkit
        if not resolved.is_file():
            raise _fail(path, f"tls_server_config.{key}: {resolved} does not exist")
        return resolved

    cert, key = file_key("cert_file", True), file_key("key_file", True)
    assert cert is not None and key is not None
    client_ca = file_key("client_ca_file", False)
    auth_type = section.get("client_auth_type") or (
        "RequireAndVerifyClientCert" if client_ca else "NoClientCert"
    )
    if auth_type in _UNSUPPORTED_CLIENT_AUTH:
        raise _fail(
            path,
            f"tls_server_config.client_auth_type {auth_type} is not supported; use "
            "VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
        )
    if auth_type not in _CLIENT_AUTH:
        raise _fail(
            path,
            f"tls_server_config.client_auth_type {auth_type!r} is invalid "
            f"(one of {', '.join(_CLIENT_AUTH)})",
        )
    mode = _CLIENT_AUTH[auth_type]
    if mode != ssl.CERT_NONE and client_ca is None:
        raise _fail(path, f"tls_server_config.client_auth_type {auth_type} needs client_ca_file")

    def version(key: str, default: ssl.TLSVersion | None) -> ssl.TLSVersion | None:
        value = section.get(key)
        if value in (None, ""):
            return default
        if value not in _TLS_VERSIONS:
            raise _fail(
                path,
                f"tls_server_config.{key} {value!r} is invalid (one of {', '.join(_TLS_VERSIONS)})",
            )
        return _TLS_VERSIONS[value]

    min_version = version("min_version", ssl.TLSVersion.TLSv1_2)
    assert min_version is not None
    max_version = version("max_version", None)
    if max_version is not None and max_version < min_version:
        raise _fail(path, "tls_server_config.max_version is below min_version")
    return TlsSettings(cert, key, mode, client_ca, min_version, max_version)


def _load_users(section: dict[str, Any], path: Path) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _fail(path, f"basic_auth_users: invalid user name {user!r}")
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise _fail(
                path,
                f"basic_auth_users.{user} must be a bcrypt hash ($2b$...), not a plain password",
            )
        raw = hashed.encode()
        try:
            bcrypt.checkpw(b"", raw)  # rejects a malformed hash now rather than at a scrape
        except ValueError:
            raise _fail(path, f"basic_auth_users.{user} is not a valid bcrypt hash") from None
        users[user] = raw
    return users


__all__ = ["TlsSettings", "WebConfig", "load_web_config"]
