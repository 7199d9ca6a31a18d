"""ECDSA P-256 certificates made by the real ``openssl`` CLI, for TLS tests and benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.tools import require_tool


def openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


def key_and_csr(directory: Path, name: str, cn: str) -> None:
    """``name.key`` and a signing request ``name.csr`` for the common name ``cn``."""
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.csr"),
        "-subj", f"/CN={cn}",
    )  # fmt: skip


def ca(directory: Path, name: str) -> None:
    """A self-signed CA: ``name.key`` and ``name.crt``, valid two days."""
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(directory / f"{name}.key"), "-out", str(directory / f"{name}.crt"),
        "-days", "2", "-subj", f"/CN={name}",
    )  # fmt: skip


def sign(directory: Path, name: str, by: str, ext: str) -> None:
    """``name.crt`` from ``name.csr``, signed by the CA ``by``, with the extension ``ext``."""
    (directory / f"{name}.ext").write_text(ext + "\n")
    openssl(
        "x509", "-req", "-in", str(directory / f"{name}.csr"),
        "-CA", str(directory / f"{by}.crt"), "-CAkey", str(directory / f"{by}.key"),
        "-CAcreateserial", "-out", str(directory / f"{name}.crt"), "-days", "2",
        "-extfile", str(directory / f"{name}.ext"),
    )  # fmt: skip


def server_certs(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1 and localhost."""
    ca(directory, "server-ca")
    key_and_csr(directory, "server", "localhost")
    sign(directory, "server", "server-ca", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    return directory / "server-ca.crt", directory / "server.crt", directory / "server.key"
