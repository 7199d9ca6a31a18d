"""Command line and process life of the simulator: start-up log sequence, signals, shutdown.

``add_arguments``/``main`` are what ``ollama-watchdog simulate`` wires in; ``python -m
ollama_watchdog.simulator`` runs the same. stdout carries gin request lines only.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

from ollama_watchdog.simulator.catalog import Catalog, count_blobs, read_store, write_fake_store
from ollama_watchdog.simulator.control import ControlServer, serve_in_thread
from ollama_watchdog.simulator.faults import FAULTS, Fault, FaultState
from ollama_watchdog.simulator.instance import SimSettings, Simulator
from ollama_watchdog.simulator.logformat import format_go_duration, human_bytes2
from ollama_watchdog.simulator.logsink import LogSink
from ollama_watchdog.simulator.protocol import KeepAliveError, parse_keep_alive
from ollama_watchdog.simulator.router import ApiServer
from ollama_watchdog.simulator.runners import install_runner_scripts
from ollama_watchdog.simulator.scheduler import (
    ERA_GO_RUNNER,
    ERA_LLAMA_SERVER,
    ERAS,
    RealRunner,
    Scheduler,
    host_memory,
)

DEFAULT_VERSION = {ERA_LLAMA_SERVER: "0.32.15", ERA_GO_RUNNER: "0.24.0"}
_ORIGINS = (
    "[http://localhost https://localhost http://localhost:* https://localhost:* http://127.0.0.1"
    " https://127.0.0.1 http://127.0.0.1:* https://127.0.0.1:* http://0.0.0.0 https://0.0.0.0"
    " http://0.0.0.0:* https://0.0.0.0:* app://* file://* tauri://* vscode-webview://*"
    " vscode-file://*]"
)
# A Go panic: the last thing a crashed `ollama serve` writes; Go exits with status 2.
_PANIC = (
    "panic: runtime error: invalid memory address or nil pointer dereference\n"
    "[signal SIGSEGV: segmentation violation code=0x1 addr=0x18 pc=0x55d0c1a3b2f4]\n"
    "\n"
    "goroutine 2417 [running]:\n"
    "github.com/ollama/ollama/server.(*Scheduler).processPending(0xc0001a2000,"
    " {0x55d0c2b1e0a8, 0xc00012a0a0})\n"
    "\tgithub.com/ollama/ollama/server/sched.go:213 +0x2f4\n"
    "created by github.com/ollama/ollama/server.(*Scheduler).Run in goroutine 1\n"
    "\tgithub.com/ollama/ollama/server/sched.go:120 +0x6e\n"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's options (shared by ``ollama-watchdog simulate`` and ``-m``)."""
    parser.add_argument("--listen", default="127.0.0.1:11434", metavar="HOST:PORT",
                        help="API address (port 0 picks a free one; default %(default)s)")
    parser.add_argument("--control", default=None, metavar="HOST:PORT",
                        help="fault control endpoint (GET/POST /fault); off when not given")
    parser.add_argument("--fault", default="none", choices=FAULTS,
                        help="fault in force from the start (default %(default)s)")
    parser.add_argument("--fault-delay", type=float, default=5.0, metavar="SECONDS",
                        help="delay of the 'slow' fault (default %(default)s)")
    parser.add_argument("--ollama-version", default=None, metavar="VERSION",
                        help="version reported by /api/version (default 0.32.15, or 0.24.0"
                             " with --era go-runner)")
    parser.add_argument("--era", default=ERA_LLAMA_SERVER, choices=ERAS,
                        help="runner generation whose log lines are written")
    parser.add_argument("--timing-form", default="line", choices=("line", "block"),
                        help="llama-server print_timing form (default %(default)s)")
    parser.add_argument("--models", type=int, default=3, metavar="N",
                        help="number of fake models (default %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=None, metavar="DIR",
                        help="list the models of a real Ollama store instead of fake ones")
    parser.add_argument("--work-dir", type=Path, default=None, metavar="DIR",
                        help="where runner scripts and the fake store go (default: a temp dir)")
    parser.add_argument("--log-file", type=Path, default=None, metavar="FILE",
                        help="append both log streams to FILE (reopened after rotation)")
    parser.add_argument("--ready-file", type=Path, default=None, metavar="FILE",
                        help="written (JSON: pid, url, control_url) once serving")
    parser.add_argument("--token-delay", type=float, default=0.01, metavar="SECONDS",
                        help="time per generated token (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=12, metavar="N",
                        help="tokens per completion without num_predict (default %(default)s)")
    parser.add_argument("--llama-server", type=Path, default=None, metavar="PATH",
                        help="run loaded models with this real llama.cpp llama-server (the"
                             " v0.30+ runner; scripts/build-llama-server.sh builds one)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FILE.gguf",
                        help="install FILE.gguf in the store as model NAME (repeatable);"
                             " replaces the fake models")
    parser.add_argument("--gpu-layers", type=int, default=None, metavar="N",
                        help="llama-server's -ngl for real runners (e.g. 999 on a GPU)")
    parser.add_argument("--keep-alive", default=os.environ.get("OLLAMA_KEEP_ALIVE", "5m"),
                        metavar="DURATION",
                        help="default keep_alive (default: $OLLAMA_KEEP_ALIVE or 5m)")


def _model_argument(text: str) -> tuple[str, Path]:
    """``NAME=FILE.gguf`` → (name, path)."""
    name, sep, file = text.partition("=")
    if not sep or not name or not file:
        raise ValueError(f"--model {text!r}: want NAME=FILE.gguf")
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"--model {text!r}: {file} is not a file")
    return name, path


def parse_address(text: str) -> tuple[str, int, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` → (host, port, address family)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid address {text!r}: want HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return host, int(port_text), family


def _show_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _env_map(settings: SimSettings, listen: str, models_dir: Path) -> str:
    """The ``server config`` env map: Go's ``%v`` of a map, keys sorted."""
    keep_alive = settings.keep_alive
    values = {
        "CUDA_VISIBLE_DEVICES": "", "GGML_VK_VISIBLE_DEVICES": "", "GPU_DEVICE_ORDINAL": "",
        "HIP_VISIBLE_DEVICES": "", "HSA_OVERRIDE_GFX_VERSION": "", "HTTPS_PROXY": "",
        "HTTP_PROXY": "", "NO_PROXY": "", "ROCR_VISIBLE_DEVICES": "", "http_proxy": "",
        "https_proxy": "", "no_proxy": "",
        "OLLAMA_CONTEXT_LENGTH": "0", "OLLAMA_DEBUG": "INFO",
        "OLLAMA_DEBUG_LOG_REQUESTS": "false", "OLLAMA_EDITOR": "",
        "OLLAMA_FLASH_ATTENTION": "false", "OLLAMA_GPU_OVERHEAD": "0",
        "OLLAMA_HOST": f"http://{listen}", "OLLAMA_IGPU_ENABLE": "",
        "OLLAMA_KEEP_ALIVE": format_go_duration(keep_alive if keep_alive != float("inf")
                                                else ((1 << 63) - 1) / 1e9),
        "OLLAMA_KV_CACHE_TYPE": "", "OLLAMA_LLM_LIBRARY": "", "OLLAMA_LOAD_TIMEOUT": "5m0s",
        "OLLAMA_MAX_LOADED_MODELS": "0", "OLLAMA_MAX_QUEUE": "512",
        "OLLAMA_MODELS": str(models_dir), "OLLAMA_NOHISTORY": "false",
        "OLLAMA_NOPRUNE": "false", "OLLAMA_NO_CLOUD": "false", "OLLAMA_NUM_PARALLEL": "1",
        "OLLAMA_ORIGINS": _ORIGINS, "OLLAMA_REMOTES": "[ollama.com]",
        "OLLAMA_SCHED_SPREAD": "false", "OLLAMA_VULKAN": "true",
    }
    if settings.era == ERA_LLAMA_SERVER:
        values.update({"LLAMA_ARG_FIT": "", "LLAMA_ARG_FIT_TARGET": "",
                       "OLLAMA_GO_TEMPLATE": "true", "OLLAMA_MAX_TRANSFER_STREAMS": "4"})
    else:
        values.update({"OLLAMA_MULTIUSER_CACHE": "false", "OLLAMA_NEW_ENGINE": "false"})
    for key in values:
        # Plain pass-through variables show what this process really has.
        if key in os.environ and key not in ("OLLAMA_HOST", "OLLAMA_MODELS",
                                             "OLLAMA_KEEP_ALIVE"):
            values[key] = os.environ[key].strip().strip("\"'")
    return "map[" + " ".join(f"{key}:{values[key]}" for key in sorted(values)) + "]"


def _default_context() -> int:
    try:
        configured = int(os.environ.get("OLLAMA_CONTEXT_LENGTH", "0"))
    except ValueError:
        configured = 0
    return configured if configured > 0 else 4096  # the CPU (<23 GiB VRAM) tier


def _startup_lines(sink: LogSink, settings: SimSettings, listen: str, models_dir: Path,
                   blobs: int) -> None:
    """FACTS.md §2.4 up to and including the Listening line."""
    sink.slog("INFO", "routes.go:1951", "server config",
              ("env", _env_map(settings, listen, models_dir)))
    if settings.version_tuple >= (0, 16, 2):
        sink.slog("INFO", "routes.go:1958", "Ollama cloud disabled: false")
    sink.slog("INFO", "images.go:919", f"total blobs: {blobs}")
    sink.slog("INFO", "images.go:926", "total unused blobs removed: 0")
    sink.slog("INFO", "routes.go:2008", f"Listening on {listen} (version {settings.version})")


def _discovery_lines(sink: LogSink) -> None:
    total, available, _ = host_memory()
    sink.slog("INFO", "runner.go:60", "discovering available GPUs...")
    sink.slog("INFO", "types.go:42", "inference compute", ("id", "cpu"), ("library", "cpu"),
              ("compute", ""), ("name", "cpu"), ("description", "cpu"), ("libdirs", "ollama"),
              ("driver", ""), ("pci_id", ""), ("type", ""), ("total", human_bytes2(total)),
              ("available", human_bytes2(available)))
    sink.slog("INFO", "routes.go:2054", "vram-based default context",
              ("total_vram", "0 B"), ("default_num_ctx", _default_context()))


def _write_ready(path: Path, payload: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def main(args: argparse.Namespace) -> int:
    """Run the simulator until SIGTERM/SIGINT (exit 0) or a ``crash`` fault (exit 2)."""
    try:
        host, port, family = parse_address(args.listen)
        control_addr = parse_address(args.control) if args.control else None
        keep_alive = parse_keep_alive(args.keep_alive, 300.0)
    except (ValueError, KeepAliveError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    era: str = args.era
    real: RealRunner | None = None
    if args.llama_server is not None:
        if era != ERA_LLAMA_SERVER:
            print("Error: --llama-server runs the v0.30+ era: drop --era go-runner",
                  file=sys.stderr)
            return 2
        if not os.access(args.llama_server, os.X_OK):
            print(f"Error: --llama-server {args.llama_server}: not an executable file;"
                  " build one with scripts/build-llama-server.sh", file=sys.stderr)
            return 2
        real = RealRunner(args.llama_server.resolve(), args.gpu_layers)
    try:
        extra_models = [_model_argument(text) for text in args.model]
    except ValueError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    settings = SimSettings(
        version=args.ollama_version or DEFAULT_VERSION[era], era=era,
        timing_form=args.timing_form, token_delay=max(args.token_delay, 0.0),
        default_tokens=max(args.tokens, 0), keep_alive=keep_alive,
        loopback_only=host in ("127.0.0.1", "::1", "localhost"),
    )
    faults = FaultState(Fault(args.fault, args.fault_delay))
    own_work_dir = args.work_dir is None
    work_dir: Path = Path(tempfile.mkdtemp(prefix="ollama-sim-")) if own_work_dir else args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)

    def cleanup_work_dir() -> None:
        if own_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    sink = LogSink(args.log_file)
    stop = threading.Event()
    scheduler_box: list[Scheduler] = []

    def crash_now() -> None:
        if scheduler_box:
            scheduler_box[0].kill_all_now()
        sink.raw(_PANIC)
        cleanup_work_dir()
        os._exit(2)

    models_dir = args.models_dir if args.models_dir else work_dir / "models"
    if not args.models_dir:
        write_fake_store(models_dir, 0 if extra_models else max(args.models, 0))
    if extra_models:
        # here, not at the top: ``python -m ollama_watchdog.simulator.llamamodel`` imports
        # this package first, and must find that module not yet imported
        from ollama_watchdog.simulator.llamamodel import install_model
    for name, gguf in extra_models:
        try:
            install_model(models_dir, name, gguf)
        except (OSError, ValueError) as error:
            print(f"Error: --model {name}={gguf}: {error}", file=sys.stderr)
            cleanup_work_dir()
            return 2
    models = read_store(models_dir)
    llama_server, go_runner = install_runner_scripts(work_dir)
    scheduler = Scheduler(sink, era, llama_server, go_runner, _default_context(), real)
    scheduler_box.append(scheduler)
    sim = Simulator(settings, models_dir, Catalog(models), scheduler, faults, sink)
    try:
        api = ApiServer((host, port), sim, family)
    except OSError as error:
        reason = "address already in use" if error.errno == errno.EADDRINUSE else error.strerror
        print(f"Error: listen tcp {_show_address(host, port)}: bind: {reason}", file=sys.stderr)
        cleanup_work_dir()
        return 1
    listen = _show_address(host, api.server_address[1])
    _startup_lines(sink, settings, listen, models_dir, count_blobs(models_dir))
    if faults.current.name == "crash":
        crash_now()
    _discovery_lines(sink)

    def on_fault(fault: Fault) -> None:
        if fault.name == "crash":
            crash_now()
        elif fault.name == "runner_crash":
            scheduler.crash_all()

    control: ControlServer | None = None
    if control_addr is not None:
        chost, cport, cfamily = control_addr
        control = ControlServer((chost, cport), faults, on_fault, cfamily, scheduler.describe)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    def reopen(signum: int, frame: FrameType | None) -> None:
        sink.reopen()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reopen)
    scheduler.start()
    serve_in_thread(api, "sim-api")
    if control is not None:
        serve_in_thread(control, "sim-control")
    if faults.current.name == "runner_crash":
        scheduler.crash_all()
    if args.ready_file is not None:
        control_url = None
        if control is not None:
            control_url = f"http://{_show_address(chost, control.server_address[1])}"
        _write_ready(args.ready_file, {"pid": os.getpid(), "url": f"http://{listen}",
                                       "control_url": control_url})
    while not stop.wait(0.5):
        pass
    # Shutdown: free hung requests, stop listening, kill runner children.
    sim.stopping.set()
    faults.set(faults.current)
    api.shutdown()
    api.server_close()
    if control is not None:
        control.shutdown()
        control.server_close()
    scheduler.stop_all()
    sink.close()
    cleanup_work_dir()
    return 0
