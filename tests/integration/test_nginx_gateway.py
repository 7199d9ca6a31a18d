"""nginx/gateway.conf + gateway.js: the API-key gateway, with the real nginx and its njs module.

The shipped files are rendered with test addresses (two simulators as the upstream, a
throw-away certificate, an allow-list of key hashes in the temp dir) and nginx runs in the
foreground as in test_nginx.py. What a client of the gateway sees is checked: 401 without a
valid key, 403 for a model not on the key's list, 400 for a body that names no model, streamed
tokens that arrive before the answer ends, admin routes for admin keys only, allow-list edits
that apply without a reload, a broken allow-list that refuses everything; and what nobody may
see: the key in nginx's logs or in the request that reaches Ollama.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from support.nginx import running_nginx
from support.sim import SimulatorProcess
from support.stub import QuietHandler, StubServer
from support.tools import free_port, missing, require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
WAIT = 60.0
ALICE = "alice-" + "a1" * 16  # may use qwen2.5:0.5b only
OPS = "ops-" + "0f" * 16  # every model, and the admin routes
ALLOWED, OTHER = "qwen2.5:0.5b", "llama3.2:latest"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def write_keys(path: Path, alice_models: list[str]) -> None:
    path.write_text(
        json.dumps(
            {
                "keys": {
                    digest(ALICE): {"name": "alice", "models": alice_models},
                    digest(OPS): {"name": "ops", "models": ["*"], "admin": True},
                }
            }
        )
    )


@dataclass
class Gateway:
    url: str
    ca: Path
    tmp: Path
    keys: Path

    def call(self, method: str, path: str, key: str | None = None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        kw.setdefault("timeout", WAIT)
        return requests.request(method, self.url + path, headers=headers, verify=str(self.ca), **kw)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace")
            for p in (self.tmp / "access.log", self.tmp / "error.log", self.tmp / "nginx.out")
            if p.exists()
        )


def render(tmp: Path, upstreams: list[str], port: int) -> Path:
    openssl = require_tool("openssl")
    crt, key = tmp / "gateway.crt", tmp / "gateway.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    njs = tmp / "njs"
    njs.mkdir()
    (njs / "ollama-gateway.js").write_text((REPO / "nginx" / "gateway.js").read_text())
    conf = (REPO / "nginx" / "gateway.conf").read_text()
    examples = re.findall(r"server (10\.0\.0\.\d+:11434)", conf)
    assert len(examples) == len(upstreams)
    for example, upstream in zip(examples, upstreams, strict=True):
        conf = conf.replace(example, upstream)
    for old, new in [
        ("js_path /etc/nginx/njs/;", f"js_path {njs}/;"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("/etc/nginx/tls/ollama.crt", str(crt)),
        ("/etc/nginx/tls/ollama.key", str(key)),
        ("/etc/nginx/ollama-gateway-keys.json", str(tmp / "keys.json")),
        ("/var/log/nginx/ollama-gateway.access.log", str(tmp / "access.log")),
    ]:
        assert old in conf, old
        conf = conf.replace(old, new)
    (tmp / "gateway.conf").write_text(conf)
    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};" for kind in kinds)
    main = tmp / "nginx.conf"
    main.write_text(
        f"load_module {NJS_MODULE};\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\nerror_log {tmp / 'error.log'} info;\n"
        + "events { worker_connections 256; }\n"
        + f"http {{\n{temp_paths}\n    include {tmp / 'gateway.conf'};\n}}\n"
    )
    return main


def run_gateway(tmp: Path, upstreams: list[str]) -> Iterator[Gateway]:
    nginx = require_tool("nginx", "nginx-light")
    if not NJS_MODULE.exists():
        missing(f"{NJS_MODULE} not found (apt-get install libnginx-mod-http-js)")
    port = free_port()
    write_keys(tmp / "keys.json", [ALLOWED])
    main = render(tmp, upstreams, port)
    with running_nginx(nginx, tmp, main, port, tmp / "gateway.crt"):
        yield Gateway(f"https://127.0.0.1:{port}", tmp / "gateway.crt", tmp, tmp / "keys.json")


@pytest.fixture
def gateway(
    tmp_path: Path, simulator_factory: Callable[..., SimulatorProcess]
) -> Iterator[Gateway]:
    sims = [
        simulator_factory("--token-delay", "0.1", log_file=tmp_path / f"ollama{i}.log")
        for i in range(2)
    ]
    yield from run_gateway(tmp_path, [f"127.0.0.1:{s.port}" for s in sims])


def generate(model: str, n: int = 3, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "prompt": "hi", "stream": stream, "options": {"num_predict": n}}


def test_no_valid_key_is_401(gateway: Gateway) -> None:
    for key, headers in [
        (None, {}),
        ("not-a-key", {}),
        (None, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}),
        (None, {"Authorization": f"Token {ALICE}"}),
    ]:
        answer = gateway.call("POST", "/api/generate", key, json=generate(ALLOWED), headers=headers)
        assert answer.status_code == 401, (key, headers)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="ollama"'
        assert "error" in answer.json()
    assert gateway.call("GET", "/api/tags").status_code == 401
    assert gateway.call("POST", "/api/pull", json={"model": ALLOWED}).status_code == 401


def test_a_model_off_the_list_is_403_and_on_it_passes(gateway: Gateway) -> None:
    ok = gateway.call("POST", "/api/generate", ALICE, json=generate(ALLOWED))
    assert ok.status_code == 200 and ok.json()["done"] is True
    for name in (OTHER, "llama3.2", "LLAMA3.2:latest", "library/llama3.2"):
        denied = gateway.call("POST", "/api/generate", ALICE, json=generate(name))
        assert denied.status_code == 403, name
        assert "not allowed" in denied.json()["error"]
    # the same model under its other spellings is the same model
    for name in ("qwen2.5:0.5b", "library/qwen2.5:0.5b", "registry.ollama.ai/library/qwen2.5:0.5b"):
        assert gateway.call("POST", "/api/show", ALICE, json={"model": name}).status_code == 200
    # the OpenAI-compatible routes are checked the same way (the simulator does not serve
    # this one: 501 means the gateway let it through)
    chat = {"model": OTHER, "messages": [{"role": "user", "content": "hi"}]}
    assert gateway.call("POST", "/v1/chat/completions", ALICE, json=chat).status_code == 403
    chat["model"] = ALLOWED
    assert gateway.call("POST", "/v1/chat/completions", ALICE, json=chat).status_code not in {
        401,
        403,
    }
    assert gateway.call("GET", f"/v1/models/{OTHER}", ALICE).status_code == 403
    # a key for every model
    assert gateway.call("POST", "/api/generate", OPS, json=generate(OTHER)).status_code == 200


def test_a_body_without_a_model_is_400(gateway: Gateway) -> None:
    assert gateway.call("POST", "/api/generate", ALICE, data=b"{not json").status_code == 400
    assert gateway.call("POST", "/api/generate", ALICE, json={"prompt": "x"}).status_code == 400
    assert gateway.call("POST", "/api/chat", ALICE, json=[ALLOWED]).status_code == 400


def test_routes_without_a_model_need_a_key(gateway: Gateway) -> None:
    tags = gateway.call("GET", "/api/tags", ALICE)
    assert tags.status_code == 200 and tags.json()["models"]
    assert gateway.call("GET", "/api/version", ALICE).json()["version"]
    assert gateway.call("GET", "/", ALICE).status_code == 200


def test_admin_routes_need_an_admin_key(gateway: Gateway) -> None:
    denied = gateway.call("DELETE", "/api/delete", ALICE, json={"model": ALLOWED})
    assert denied.status_code == 403
    assert denied.json() == {"error": "this key may not use this route"}
    unauthorized = gateway.call("DELETE", "/api/delete", "wrong", json={"model": ALLOWED})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["WWW-Authenticate"] == 'Bearer realm="ollama"'
    # an admin key reaches Ollama (which answers for itself: the model is gone, or 404)
    done = gateway.call("DELETE", "/api/delete", OPS, json={"model": OTHER})
    assert done.status_code in {200, 404}, done.text


def created_at(chunk: dict[str, Any]) -> datetime:
    text = re.sub(r"(\.\d{6})\d*", r"\1", str(chunk["created_at"])).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def test_streams_pass_unbuffered(gateway: Gateway) -> None:
    body = generate(ALLOWED, n=30, stream=True)
    with gateway.call("POST", "/api/generate", ALICE, json=body, stream=True) as response:
        assert response.status_code == 200
        lines = response.iter_lines(chunk_size=1)
        first = json.loads(next(lines))
        first_seen = datetime.now(UTC)
        rest = [json.loads(line) for line in lines if line]
    assert first["done"] is False and rest[-1]["done"] is True
    # order, not speed: the first token was here before the backend made the last one
    assert first_seen < created_at(rest[-1])


def test_allow_list_edits_apply_without_reload_and_a_broken_one_refuses(
    gateway: Gateway,
) -> None:
    assert gateway.call("POST", "/api/generate", ALICE, json=generate(OTHER)).status_code == 403
    write_keys(gateway.keys, [ALLOWED, OTHER])
    assert gateway.call("POST", "/api/generate", ALICE, json=generate(OTHER)).status_code == 200
    gateway.keys.write_text("{broken")
    for key in (ALICE, OPS):
        assert gateway.call("POST", "/api/generate", key, json=generate(ALLOWED)).status_code == 500
        assert gateway.call("GET", "/api/tags", key).status_code == 500
        assert gateway.call("POST", "/api/pull", key, json={"model": "x"}).status_code == 500
    assert "cannot use the allow-list" in (gateway.tmp / "error.log").read_text()


def test_the_key_is_in_no_log_line(gateway: Gateway) -> None:
    for key in (ALICE, OPS, "guessed-" + "9" * 20):
        gateway.call("POST", "/api/generate", key, json=generate(ALLOWED))
        gateway.call("POST", "/api/generate", key, json=generate(OTHER))
        gateway.call("GET", "/api/tags", key)
        gateway.call("DELETE", "/api/delete", key, json={"model": "nope"})
    logs = gateway.logs()
    access = (gateway.tmp / "access.log").read_text()
    assert "alice [" in access and f"model={ALLOWED}" in access  # who and which model
    assert "ops [" in access  # admin routes name their caller too
    for secret in (ALICE, OPS, "guessed-", "Bearer", digest(ALICE)):
        assert secret not in logs, secret


class _Capture:
    """An upstream that answers like Ollama's /api/generate and keeps the request headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        capture = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                capture.headers.append({k.lower(): v for k, v in self.headers.items()})
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = b'{"model":"qwen2.5:0.5b","response":"ok","done":true}'
                self.reply(200, body, "application/json")

        self._server = StubServer(Handler)
        self.address = self._server.address

    def close(self) -> None:
        self._server.close()


def test_the_key_never_reaches_ollama(tmp_path: Path) -> None:
    capture = _Capture()
    try:
        for gw in run_gateway(tmp_path, [capture.address, capture.address]):
            answer = gw.call("POST", "/api/generate", ALICE, json=generate(ALLOWED))
            assert answer.status_code == 200
    finally:
        capture.close()
    assert capture.headers, "the request never reached the upstream"
    for headers in capture.headers:
        assert "authorization" not in headers
        assert ALICE not in json.dumps(headers)
