"""nginx/ollama.conf with the real nginx, in front of two Ollama simulators.

The shipped file is rendered with the simulators' ports, a throw-away certificate and password
file, and wrapped in a minimal main config; nginx runs in the foreground as a child
(``-p tmpdir -c conf -g 'daemon off;'``) and is stopped with its process group. What a user of
the proxy sees is checked: no password, no answer; streamed NDJSON arrives while the backend
is still generating; with one backend hung, requests still succeed through the other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from support.nginx import running_nginx
from support.sim import SimulatorProcess
from support.tools import free_port, require_tool

pytestmark = pytest.mark.integration


REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "alice", "correct horse battery staple"
WAIT = 60.0  # generous deadline for waiting, never an assertion on speed


@dataclass
class Proxy:
    url: str
    ca: Path
    backends: list[SimulatorProcess]

    def get(self, path: str, auth: tuple[str, str] | None = (USER, PASSWORD)) -> requests.Response:
        return requests.get(self.url + path, auth=auth, verify=str(self.ca), timeout=WAIT)

    def post(self, path: str, body: object, **kw: object) -> requests.Response:
        return requests.post(
            self.url + path,
            json=body,
            auth=(USER, PASSWORD),
            verify=str(self.ca),
            timeout=WAIT,
            **kw,  # type: ignore[arg-type]
        )


def render(tmp: Path, backends: list[SimulatorProcess], port: int) -> Path:
    """The shipped conf with test addresses and files; returns the main nginx.conf."""
    openssl = require_tool("openssl")
    crt, key = tmp / "ollama.crt", tmp / "ollama.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    hashed = subprocess.run(
        [openssl, "passwd", "-6", "-stdin"],
        input=PASSWORD, check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    htpasswd = tmp / "ollama.htpasswd"
    htpasswd.write_text(f"{USER}:{hashed}\n")

    conf = (REPO / "nginx" / "ollama.conf").read_text()
    example_servers = re.findall(r"server (10\.0\.0\.\d+:11434)", conf)
    assert len(example_servers) == len(backends)
    for example, sim in zip(example_servers, backends, strict=True):
        conf = conf.replace(example, f"127.0.0.1:{sim.port}")
    conf = conf.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    conf = conf.replace("listen [::]:443 ssl;", "")
    conf = conf.replace("/etc/nginx/tls/ollama.crt", str(crt))
    conf = conf.replace("/etc/nginx/tls/ollama.key", str(key))
    conf = conf.replace("/etc/nginx/ollama.htpasswd", str(htpasswd))
    (tmp / "ollama.conf").write_text(conf)

    kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / kind};" for kind in kinds)
    main = tmp / "nginx.conf"
    main.write_text(
        # As root, keep the workers root too: they read files in a 0700 pytest temp dir.
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\nerror_log {tmp / 'error.log'} info;\n"
        + "events { worker_connections 256; }\n"
        + f"http {{\n    access_log {tmp / 'access.log'};\n{temp_paths}\n"
        + f"    include {tmp / 'ollama.conf'};\n}}\n"
    )
    return main


@pytest.fixture
def proxy(tmp_path: Path, simulator_factory: Callable[..., SimulatorProcess]) -> Iterator[Proxy]:
    nginx = require_tool("nginx", "nginx-light")
    backends = [
        simulator_factory("--token-delay", "0.1", log_file=tmp_path / f"ollama{i}.log")
        for i in range(2)
    ]
    port = free_port()
    main = render(tmp_path, backends, port)
    with running_nginx(nginx, tmp_path, main, port, tmp_path / "ollama.crt"):
        yield Proxy(f"https://127.0.0.1:{port}", tmp_path / "ollama.crt", backends)


def generation_model(proxy: Proxy) -> str:
    models = proxy.get("/api/tags").json()["models"]
    return str(next(m["name"] for m in models if "completion" in m.get("capabilities", [])))


def test_requests_need_the_password(proxy: Proxy) -> None:
    assert proxy.get("/api/version", auth=None).status_code == 401
    assert proxy.get("/api/version", auth=(USER, "wrong")).status_code == 401
    answer = proxy.get("/api/version")
    assert answer.status_code == 200
    assert "version" in answer.json()


def created_at(chunk: dict[str, object]) -> datetime:
    """Ollama's created_at (UTC, nanoseconds, trailing Z) as an aware datetime."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", str(chunk["created_at"])).replace("Z", "+00:00")
    return datetime.fromisoformat(text)


def test_streamed_tokens_reach_the_client_before_the_answer_ends(proxy: Proxy) -> None:
    model = generation_model(proxy)
    # 30 tokens a tenth of a second apart, about 3 KB: less than one proxy buffer, so a
    # buffering proxy would hold every line until the backend wrote the last one.
    body = {"model": model, "prompt": "count", "options": {"num_predict": 30}}
    with proxy.post("/api/generate", body, stream=True) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/x-ndjson")
        lines = response.iter_lines(chunk_size=1)
        first = json.loads(next(lines))
        first_seen = datetime.now(UTC)
        rest = [json.loads(line) for line in lines if line]
    assert first["done"] is False and rest[-1]["done"] is True
    # Order, not speed: the client held the first token before the backend (same clock)
    # had even created the last one.
    assert first_seen < created_at(rest[-1])


def test_a_hung_backend_is_routed_around(proxy: Proxy) -> None:
    hung, healthy = proxy.backends
    hung.set_fault("hang")
    # least_conn starts with either backend; whichever request meets the hung one fails over
    # after the short read timeout of the cheap location and takes it out of the rotation.
    for _ in range(4):
        assert proxy.get("/api/tags").status_code == 200
    model = generation_model(proxy)
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 3}}
    answer = proxy.post("/api/generate", body)
    assert answer.status_code == 200
    assert answer.json()["done"] is True
    served = healthy.log_text()
    assert '"/api/generate"' in served and '"/api/tags"' in served
    assert '"/api/generate"' not in hung.log_text()
