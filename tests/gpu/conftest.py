"""What the GPU tests share: a CUDA build of llama-server, or a skip that says why not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.llama import llama_server_path


@pytest.fixture(scope="session")
def cuda_server() -> Path:
    """The CUDA ``llama-server`` (``$LLAMA_SERVER`` or the build script's cache)."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi not found: no NVIDIA driver here")
    path = llama_server_path()
    if path is None:
        pytest.skip("no llama-server: scripts/build-llama-server.sh --cuda builds one")
    if not list(path.parent.glob("libggml-cuda*")):
        pytest.skip(f"{path} is not a CUDA build (no libggml-cuda beside it)")
    return path
