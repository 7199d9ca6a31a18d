"""Runner failures in the log: what a line means, in every era, and one count per fault.

The real files are verbatim copies of the team's collections (``shared/ollama/real-logs.txt``
and ``shared/ollama/llama-server-real.txt``) in ``tests/fixtures/ollama/``. Each excerpt is fed
through :class:`LogCounters` the way the logs collector feeds a log, and read back the way a
scrape reads ``ollama_runner_errors_total{kind}``. The expected counts were written by reading
each excerpt (the comment says why), not by running the parser. The other sequences are built
from the shapes of real reports (named where they come from) for eras and backends the files
do not have, behind every prefix a log can have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from support.facts import REAL_LOGS
from support.registry import registry_of

from ollama_watchdog.collectors.logs.counters import LogCounters
from ollama_watchdog.ollama.logparse import (
    RUNNER_ERROR_KINDS,
    LogStream,
    Message,
    Request,
    parse_line,
    reset_stream,
    runner_fault,
)

LLAMA_SERVER_REAL = REAL_LOGS.with_name("llama-server-real.txt")

OOM, GPU, LOAD, TIMEOUT = "out_of_memory", "gpu_error", "load_failed", "load_timeout"
CRASH, REQUEST = "runner_terminated", "completion_failed"


@pytest.fixture(autouse=True)
def _fresh_stream() -> None:
    """Each test starts a log of its own: no runner fault of an earlier test is in progress."""
    reset_stream()


def errors_of(batches: list[list[str]]) -> dict[str, int]:
    """``ollama_runner_errors_total`` by kind (non-zero ones) after feeding these batches."""
    reset_stream()  # a log of its own
    counters = LogCounters()
    reg = registry_of(counters.families)
    for batch in batches:
        counters.feed(batch)
    counts = {}
    for kind in RUNNER_ERROR_KINDS:
        value = reg.get_sample_value("ollama_runner_errors_total", {"kind": kind})
        assert value is not None
        if value:
            counts[kind] = int(value)
    return counts


def errors(lines: list[str]) -> dict[str, int]:
    return errors_of([lines])


def blocks(path: Path, header: str) -> dict[str, list[str]]:
    """Excerpt id -> its log lines; ``header`` matches an excerpt's first line."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        head = re.match(header, line)
        if head:
            current = out.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    return out


def real_log_excerpts() -> dict[str, list[str]]:
    """real-logs.txt: excerpt id -> lines (its source/context header and separators dropped)."""
    out = {}
    for key, lines in blocks(REAL_LOGS, r"===== \[(\d+)\]").items():
        body = lines[next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1 :]
        out[key] = [line for line in body if not line.startswith("---- (")]
    return out


def llama_server_runs() -> dict[str, list[str]]:
    """llama-server-real.txt: run -> its output (the notes before the first run dropped, and
    run C's note in parentheses under its header)."""
    runs = blocks(LLAMA_SERVER_REAL, r"===== run (\w+):")
    return {run: [x for x in lines if not x.startswith("(/health")] for run, lines in runs.items()}


# --- the real files -------------------------------------------------------------------------

REAL_EXPECTED: dict[str, dict[str, int]] = {
    # log.Printf era: 'error starting llama runner: llama runner process has terminated' is
    # the verdict on one load; 'llama runner stopped successfully' is not a failure
    "01": {LOAD: 1},
    "02": {},  # requests only
    "04": {},  # requests and systemd's restart lines
    "05": {},  # start-up and a 404
    "07": {},  # long requests and clients going away
    "08": {},  # 403s, start-up, offload
    "10": {},  # a load that is still waiting ('status="llm server error"' is a status)
    "11": {},
    "13": {},  # ggml_cuda_init / load_backend found devices: no failure
    "14": {},
    "16": {},  # 503s
    "17": {},  # 500s after long hangs: requests, not runner lines
    # one fault: 'llama runner terminated' (exit status 0xc0000409) counts it; the verdict
    # 'error loading llama server' quoting the GGML_ASSERT is the same load of the same runner
    "19": {CRASH: 1},
    "20": {},  # the tail of a goroutine dump: frames only, no failure line in it
    # 'signal: killed' during the load: no runner line before it, so the verdict counts it;
    # not out of memory (a kill -9 looks the same)
    "22": {LOAD: 1},
    "23": {LOAD: 1},  # 'signal: terminated' during the load
    "25": {},  # the CLI's 'Error: 500 ...' and the Windows app's own lines
    # 'cudaMalloc failed: out of memory' counts; 'error loading model: unable to allocate',
    # 'exception loading model', 'terminate called', 'what():' and the server's 'error loading
    # llama server' quoting the cudaMalloc failure are the same fault
    "26": {OOM: 1},
    # docker compose prefix: cudaMalloc OOM, then 'error loading model: unable to allocate
    # CUDA0 buffer', 'failed to load model', 'panic: unable to load model' and its goroutine
    # dump, all the same fault
    "28": {OOM: 1},
    # host RAM: two 'failed to allocate ... buffer' lines, 'error loading model', 'failed to
    # load model', a Go panic: one fault
    "29": {OOM: 1},
    # the scheduler refused the load for lack of system memory ('Load failed', an INFO line);
    # the WARN before it is not counted
    "31": {OOM: 1},
    "32": {},  # the curl body and a WARN cut by the pager: no counted message
    "34": {},
    # the server's own GPU query failed ('error looking up nvidia GPU memory'), with C output
    # glued in front of it
    "35": {GPU: 1},
    "37": {},
    "38": {},
    "40": {},
    "41": {},
    "43": {},
    "44": {},
    "46": {},  # systemd's restart loop: the server, not a runner
    "47": {},
    "49": {},  # the Windows tray app's own crash loop
    "50": {},  # 'Error: listen tcp ...: bind: address already in use' (the CLI)
    "52": {},  # client-side error strings ('model requires more system memory' in a client log)
}

RUN_EXPECTED: dict[str, dict[str, int]] = {
    # loads, three completions, a client gone away; the SIGSEGV from outside printed nothing
    # ('failed to fit params' is not printed in this run; timing lines are not failures)
    "A": {},
    # a real CUDA OOM at context creation: 'cudaMalloc failed: out of memory' counts; 'failed
    # to allocate CUDA0 buffer', 'llama_init_from_model: failed to initialize the context',
    # 'failed to create context' (twice), 'failed to create_context', 'cleaning up before
    # exit' and 'exiting due to model loading error' are the same fault. Before it, 'failed to
    # fit params to free device memory: ..., abort' is llama.cpp's fit step giving up, not a
    # failure: the load goes on
    "B": {OOM: 1},
    "C": {},  # a healthy CPU run ending in SIGTERM (exit 0)
    # host RAM: 'ggml_aligned_malloc: insufficient memory' counts; the two 'failed to
    # allocate' lines and the llama-server chain after them are the same fault
    "D": {OOM: 1},
}


def test_every_excerpt_has_an_expectation() -> None:
    assert sorted(real_log_excerpts()) == sorted(REAL_EXPECTED)
    assert sorted(llama_server_runs()) == sorted(RUN_EXPECTED)


@pytest.mark.parametrize("excerpt", sorted(REAL_EXPECTED))
def test_real_logs_excerpt(excerpt: str) -> None:
    assert errors(real_log_excerpts()[excerpt]) == REAL_EXPECTED[excerpt]


@pytest.mark.parametrize("run", sorted(RUN_EXPECTED))
def test_llama_server_run(run: str) -> None:
    assert errors(llama_server_runs()[run]) == RUN_EXPECTED[run]


def total(expected: dict[str, dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for counts in expected.values():
        for kind, n in counts.items():
            out[kind] = out.get(kind, 0) + n
    return out


def test_llama_server_file_whole() -> None:
    """The four runs as one log, in the order they ran: two faults, each counted once."""
    lines = [line for run in llama_server_runs().values() for line in run]
    assert errors(lines) == total(RUN_EXPECTED) == {OOM: 2}


def test_real_logs_file_whole() -> None:
    """All excerpts back to back in one log count what each counts alone (nothing of one
    excerpt's fault swallows the next one's)."""
    lines = [line for excerpt in real_log_excerpts().values() for line in excerpt]
    assert errors(lines) == total(REAL_EXPECTED) == {LOAD: 3, CRASH: 1, OOM: 4, GPU: 1}


def test_excerpts_through_parse_line_back_to_back() -> None:
    """The process's own stream (``parse_line``, no reset between excerpts) counts the same."""
    for key, lines in [*real_log_excerpts().items(), *llama_server_runs().items()]:
        kinds: dict[str, int] = {}
        for line in lines:
            event = parse_line(line)
            if isinstance(event, Message) and event.error_kind:
                kinds[event.error_kind] = kinds.get(event.error_kind, 0) + 1
        assert kinds == {**REAL_EXPECTED, **RUN_EXPECTED}[key], key


@pytest.mark.parametrize("excerpt", ["26", "28", "29", "19"])
def test_batch_cuts_do_not_change_the_count(excerpt: str) -> None:
    """A follower hands over lines in any batches (journald: one at a time)."""
    lines = real_log_excerpts()[excerpt]
    assert errors_of([[line] for line in lines]) == REAL_EXPECTED[excerpt]
    assert errors_of([lines[:3], lines[3:5], lines[5:]]) == REAL_EXPECTED[excerpt]


# --- other eras and backends ----------------------------------------------------------------


def slog(level: str, msg: str, **attrs: str) -> str:
    rest = "".join(f" {key}={json.dumps(value)}" for key, value in attrs.items())
    return f'time=2026-12-02T10:00:00.000Z level={level} source=x.go:1 msg="{msg}"{rest}'


START = slog("INFO", "starting llama-server", cmd="/usr/lib/ollama/llama-server --model m")
GO_START = slog("INFO", "starting llama server", cmd="/usr/lib/ollama/runners/cuda_v12/x")
TERMINATED_V030 = slog("ERROR", "llama-server terminated", error="exit status 1", exit="1")
TERMINATED_GO = slog("ERROR", "llama runner terminated", error="exit status 2")
POST_PREDICT = slog("ERROR", "post predict", error='Post "http://127.0.0.1:39451/completion": EOF')
COMPLETION_ERROR = slog("ERROR", "llama-server completion error", error="EOF")
GIN_500 = '[GIN] 2026/12/02 - 10:00:00 | 500 |  1.5308332s |       127.0.0.1 | POST     "/api/chat"'

# llama-server v0.30+, CUDA OOM at context creation (the real run B, its failure part)
V030_CUDA_OOM = [
    "llama_context:  CUDA_Host  output buffer size =     0.00 MiB",
    "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 6250000.00 MiB on device 0: "
    "cudaMalloc failed: out of memory",
    "ggml_backend_buft_alloc_buffer_n_default: failed to allocate CUDA0 buffer of size "
    "6553600000000",
    "llama_init_from_model: failed to initialize the context: failed to allocate buffer for "
    "kv cache",
    "cmn  common_init_: failed to create context with model 'small.gguf'",
    "cmn  common_init_: failed to create context with model 'small.gguf'",
    "srv    load_model: failed to create_context with model 'small.gguf'",
    "srv    operator(): operator(): cleaning up before exit...",
    "srv  llama_server: exiting due to model loading error",
]
V030_LOAD_FAILED = slog(
    "INFO",
    "Load failed",
    model="/m",
    error="llama-server process has terminated: exit status 1: llama_init_from_model: failed "
    "to initialize the context: failed to allocate buffer for kv cache",
)
V030_RETRY = slog(
    "WARN", "llama-server load failed; reducing automatic context and retrying once", model="/m"
)

ERAS: dict[str, tuple[list[str], dict[str, int]]] = {
    # v0.30+: the runner's OOM, then Ollama's death notice and the scheduler's verdict
    "llama-server OOM at load, with Ollama's notices": (
        [START, *V030_CUDA_OOM, TERMINATED_V030, V030_LOAD_FAILED, GIN_500],
        {OOM: 1},
    ),
    # the same with the OOM retry: the second runner loads (one fault) or fails again (two)
    "llama-server OOM, retry succeeds": (
        [
            START,
            *V030_CUDA_OOM,
            TERMINATED_V030,
            V030_LOAD_FAILED,
            V030_RETRY,
            START,
            "srv  llama_server: model loaded",
            slog("INFO", "llama-server started in 2.51 seconds"),
        ],
        {OOM: 1},
    ),
    "llama-server OOM, retry fails too": (
        [
            START,
            *V030_CUDA_OOM,
            TERMINATED_V030,
            V030_LOAD_FAILED,
            V030_RETRY,
            START,
            *V030_CUDA_OOM,
            TERMINATED_V030,
            V030_LOAD_FAILED,
            GIN_500,
        ],
        {OOM: 2},
    ),
    # v0.30+ at run time: CUDA's report, ggml's abort line and backtrace, then Ollama
    "llama-server CUDA error while serving": (
        [
            "CUDA error: an illegal memory access was encountered",
            "  current device: 0, in function ggml_backend_cuda_synchronize at "
            "/build/ggml/src/ggml-cuda/ggml-cuda.cu:2628",
            "  cudaStreamSynchronize(cuda_ctx->stream())",
            "/build/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error",
            "/usr/lib/ollama/libggml-base.so(+0x16c8b)[0x7f3a5e216c8b]",
            "/usr/lib/ollama/libggml-base.so(ggml_abort+0x11f)[0x7f3a5e21706f]",
            slog("ERROR", "llama-server terminated", error="signal: aborted (core dumped)"),
            COMPLETION_ERROR,
            COMPLETION_ERROR,
            GIN_500,
        ],
        {GPU: 1},
    ),
    # v0.30+ runtime OOM: report, Ollama's completion error and its runtime OOM reaction
    "llama-server CUDA OOM while serving": (
        [
            "CUDA error: out of memory",
            "  current device: 0, in function ggml_cuda_pool_malloc at ggml-cuda.cu:433",
            "  cudaMalloc((void **) &ptr, look_ahead_size)",
            "/build/ggml/src/ggml-cuda/ggml-cuda.cu:88: CUDA error",
            COMPLETION_ERROR,
            slog(
                "WARN",
                "runtime OOM detected; expiring loaded models to clear memory before next request",
                model="m",
            ),
            TERMINATED_V030,
        ],
        {OOM: 1},
    ),
    # v0.30+: a new-form assertion (file:line: GGML_ASSERT(...) failed) and the gdb backtrace
    "llama-server GGML_ASSERT": (
        [
            "/build/ggml/src/ggml.c:1885: GGML_ASSERT(a->ne[2] == b->ne[0]) failed",
            "[New LWP 48211]",
            "[Thread debugging using libthread_db enabled]",
            '#1  0x00007f3a5e21706f in ggml_abort (file=0x7f3a "ggml.c", line=1885) at ggml.c:180',
            "[Inferior 1 (process 48190) detached]",
            slog("ERROR", "llama-server terminated", error="signal: aborted (core dumped)"),
            COMPLETION_ERROR,
        ],
        {CRASH: 1},
    ),
    # Go runner 0.5.x, shape of ollama#8377: CUDA OOM while serving, then SIGSEGV and the dump
    "Go runner CUDA OOM then SIGSEGV": (
        [
            "CUDA error: out of memory",
            "  current device: 1, in function alloc at llama/ggml-cuda/ggml-cuda.cu:370",
            "  cuMemCreate(&handle, reserve_size, &prop, 0)",
            "llama/ggml-cuda/ggml-cuda.cu:96: CUDA error",
            "SIGSEGV: segmentation violation",
            "PC=0x7cfdb17efe57 m=0 sigcode=1 addr=0x20b203fd0",
            "signal arrived during cgo execution",
            "goroutine 19 gp=0xc0001b01c0 m=0 mp=0x5cfc8ff8e1a0 [syscall]:",
            "runtime.cgocall(0x5cfc8f9a87d0, 0xc000081b90)",
            "        runtime/cgocall.go:167 +0x4b fp=0xc000081b68 sp=0xc000081b30 "
            "pc=0x5cfc8f75cb2b",
            "github.com/ollama/ollama/llama._Cfunc_llama_decode(0x7cfd30c5b730, {0x200, 0x0})",
            "        _cgo_gotypes.go:556 +0x4f fp=0xc000081b90 sp=0xc000081b68 pc=0x5cfc8f80a3cf",
            POST_PREDICT,
            POST_PREDICT,
            TERMINATED_GO,
            GIN_500,
        ],
        {OOM: 1},
    ),
    # 0.1.28 on Windows, shape of ollama#3237: old-form assertion after the report
    "Go runner 0.1.x CUDA OOM, old GGML_ASSERT": (
        [
            "CUDA error: out of memory",
            "  current device: 0, in function ggml_cuda_pool_malloc_vmm at "
            "C:\\Users\\u\\git\\ollama\\llm\\llama.cpp\\ggml-cuda.cu:8583",
            "  cuMemCreate(&handle, reserve_size, &prop, 0)",
            "GGML_ASSERT: C:\\Users\\u\\git\\ollama\\llm\\llama.cpp\\ggml-cuda.cu:256: "
            '!"CUDA error"',
            slog(
                "ERROR",
                "error loading llama server",
                error="llama runner process no longer running: 3221226505 CUDA error: out of "
                "memory",
            ),
        ],
        {OOM: 1},
    ),
    # ROCm, shape of ollama#11123 (0.9): not about memory, whatever HSA says after it
    "Go runner ROCm error": (
        [
            "ROCm error: invalid device function",
            "  current device: 0, in function ggml_cuda_compute_forward at "
            "//ml/backend/ggml/ggml/src/ggml-cuda/ggml-cuda.cu:2362",
            "  err",
            "//ml/backend/ggml/ggml/src/ggml-cuda/ggml-cuda.cu:75: ROCm error",
            "Memory critical error by agent node-0 (Agent handle: 0x561adbeb8a80) on address "
            "0x7f401b600000. Reason: Memory in use.",
            "SIGABRT: abort",
            "PC=0x7f407936711c m=7 sigcode=18446744073709551610",
            "signal arrived during cgo execution",
            TERMINATED_GO,
        ],
        {GPU: 1},
    ),
    # ROCm out of memory, old wording (ollama#738, 0.1.29): CUDA's report names hipMalloc
    "ROCm OOM, hipMalloc": (
        [
            "CUDA error: out of memory",
            "  current device: 1, in function ggml_cuda_pool_malloc_leg at "
            "/go/src/github.com/jmorganca/ollama/llm/llama.cpp/ggml-cuda.cu:8584",
            "  hipMalloc((void **) &ptr, look_ahead_size)",
            "GGML_ASSERT: /go/src/github.com/jmorganca/ollama/llm/llama.cpp/ggml-cuda.cu:256: "
            '!"CUDA error"',
        ],
        {OOM: 1},
    ),
    "ROCm buffer at load": (
        [
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 7920.00 MiB on device 0: "
            "cudaMalloc failed: out of memory",
            "llama_model_load: error loading model: unable to allocate ROCm0 buffer",
            "llama_model_load_from_file_impl: failed to load model",
            "panic: unable to load model: /root/.ollama/models/blobs/sha256-aa",
        ],
        {OOM: 1},
    ),
    # Vulkan (llama.cpp#15256 and the C++ exception form)
    "Vulkan OOM": (
        [
            "ggml_vulkan: Device memory allocation of size 118497280 failed.",
            "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
            "double free or corruption (out)",
        ],
        {OOM: 1},
    ),
    "Vulkan OOM as an exception": (
        [
            "terminate called after throwing an instance of 'vk::OutOfDeviceMemoryError'",
            "  what():  vk::Device::allocateMemory: ErrorOutOfDeviceMemory",
            "SIGABRT: abort",
        ],
        {OOM: 1},
    ),
    "Vulkan lost device": (
        [
            "terminate called after throwing an instance of 'vk::DeviceLostError'",
            "  what():  vk::Queue::submit: ErrorDeviceLost",
        ],
        {GPU: 1},
    ),
    # Metal, Go-runner era: the failed command buffer repeats with its reason after each
    "Metal OOM, repeated": (
        [
            "ggml_metal_graph_compute: command buffer 3 failed with status 5",
            "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
            "ggml_metal_graph_compute: command buffer 3 failed with status 5",
            "error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
        ],
        {OOM: 1},
    ),
    # a Go panic in the runner, its signal line and goroutine dump, then Ollama's notices
    "Go runner nil dereference": (
        [
            "panic: runtime error: invalid memory address or nil pointer dereference",
            "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x55d2c3e4a1b2]",
            "",
            "goroutine 7 [running]:",
            "github.com/ollama/ollama/runner/ollamarunner.(*Server).run(0xc0000c8000)",
            "\tgithub.com/ollama/ollama/runner/ollamarunner/runner.go:355 +0x1d",
            "created by github.com/ollama/ollama/runner/ollamarunner.Execute in goroutine 1",
            "\tgithub.com/ollama/ollama/runner/ollamarunner/runner.go:940 +0x8c5",
            TERMINATED_GO,
            POST_PREDICT,
        ],
        {CRASH: 1},
    ),
    # the Go runtime itself ran out of memory
    "Go runtime out of memory": (
        [
            "fatal error: runtime: out of memory",
            "",
            "runtime stack:",
            "runtime.throw({0x1a3e2f1?, 0x0?})",
            "\truntime/panic.go:1023 +0x5c fp=0x7ffd3c2 sp=0x7ffd3c1 pc=0x43f2bc",
        ],
        {OOM: 1},
    ),
    # a CPU without the instructions the runner was built for
    "SIGILL": (
        [
            "SIGILL: illegal instruction",
            "PC=0x7f1b2c3d m=0 sigcode=2",
            "signal arrived during cgo execution",
            "goroutine 1 gp=0xc000002380 m=0 mp=0x1e5a3c0 [syscall, locked to thread]:",
            TERMINATED_GO,
        ],
        {CRASH: 1},
    ),
    # Windows: the Go runtime reports an exception, not a signal
    "Windows exception": (
        [
            "Exception 0xc0000005 0x0 0x0 0x7ffb1c2d3e4f",
            "PC=0x7ffb1c2d3e4f",
            "signal arrived during external code execution",
            TERMINATED_GO,
        ],
        {CRASH: 1},
    ),
    # glibc's assert() in llama.cpp (the program name in front of it)
    "C assertion": (
        [
            "ollama_llama_server: /go/src/github.com/ollama/ollama/llm/llama.cpp/src/"
            "llama-vocab.cpp:1234: int llama_vocab::token_to_piece(): Assertion `piece' failed.",
            TERMINATED_GO,
        ],
        {CRASH: 1},
    ),
    "C++ bad_alloc": (
        [
            "terminate called after throwing an instance of 'std::bad_alloc'",
            "  what():  std::bad_alloc",
        ],
        {OOM: 1},
    ),
    # an unknown architecture: llama.cpp's chain, then the verdict quoting it (0.1.3x-0.5)
    "model the runner cannot load": (
        [
            "llama_model_load: error loading model: error loading model vocabulary: unknown "
            "pre-tokenizer type: 'qwen2'",
            "llama_load_model_from_file: exception loading model",
            "terminate called after throwing an instance of 'std::runtime_error'",
            "  what():  error loading model vocabulary: unknown pre-tokenizer type: 'qwen2'",
            slog(
                "ERROR",
                "error loading llama server",
                error="llama runner process has "
                "terminated: signal: aborted (core dumped) error loading model vocabulary",
            ),
        ],
        {LOAD: 1},
    ),
    # llama.cpp's own server before 0.4 logged JSON
    "JSON-logging runner cannot load": (
        [
            '{"function":"load_model","level":"ERR","line":410,"model":"/root/.ollama/models/'
            'blobs/sha256-aa","msg":"unable to load model","tid":"1","timestamp":1712345678}',
            slog(
                "ERROR",
                "error loading llama server",
                error="llama runner process has terminated: exit status 1",
            ),
        ],
        {LOAD: 1},
    ),
    # 2023 (0.1.9, shape of ollama#1083): the report, Ollama's log.Printf echo, the verdict
    "log.Printf era CUDA error": (
        [
            "2023/11/11 16:02:42 llama.go:415: starting llama runner",
            "CUDA error 3 at /go/src/github.com/jmorganca/ollama/llm/llama.cpp/gguf/"
            "ggml-cuda.cu:5661: initialization error",
            "current device: 0",
            "2023/11/11 16:02:43 llama.go:430: 3 at /go/src/github.com/jmorganca/ollama/llm/"
            "llama.cpp/gguf/ggml-cuda.cu:5661: initialization error",
            "2023/11/11 16:02:43 llama.go:438: error starting llama runner: llama runner "
            "process has terminated",
            "2023/11/11 16:02:43 llama.go:504: llama runner stopped successfully",
        ],
        {GPU: 1},
    ),
    # a GPU that would not initialise: the runner goes on on the CPU and loads
    "CUDA init failure, CPU fallback": (
        [
            "ggml_cuda_init: failed to initialize CUDA: CUDA driver version is insufficient "
            "for CUDA runtime version",
            "load_backend: loaded CUDA backend from /usr/lib/ollama/cuda_v13/libggml-cuda.so",
            "llama_model_loader: loaded meta data with 20 key-value pairs and 75 tensors",
            slog("INFO", "llama runner started in 3.10 seconds"),
        ],
        {GPU: 1},
    ),
    # the load stalled past OLLAMA_LOAD_TIMEOUT
    "load timeout": (
        [
            GO_START,
            slog(
                "ERROR",
                "error loading llama server",
                error="timed out waiting for llama runner to start - progress 0.95 - ",
            ),
        ],
        {TIMEOUT: 1},
    ),
    # v0.30+: Ollama's own word for an OOM the runner reported while starting
    "llama-server reported out-of-memory": (
        [
            START,
            slog(
                "INFO",
                "Load failed",
                model="/m",
                error="llama-server reported "
                "out-of-memory during startup: failed to allocate compute buffers",
            ),
        ],
        {OOM: 1},
    ),
}

PREFIXES: dict[str, str] = {
    "bare": "",
    "journald": "Dec 02 10:00:00 gpu-host ollama[1234]: ",
    "journald, localised month": "de des. 02 10:00:00 gpu-host ollama[1234]: ",
    "journald, Chinese month": "12月 02 10:00:00 gpu-host ollama[1234]: ",
    "syslog with priority": "<30>Dec  2 10:00:00 gpu-host ollama[1234]: ",
    "syslog without pid": "Dec  2 10:00:00 gpu-host ollama: ",
    "syslog, RFC 3339": "2026-12-02T10:00:00.123456+00:00 gpu-host ollama[1234]: ",
    "docker": "2026-12-02T10:00:00.123456789Z ",
    "kubernetes CRI": "2026-12-02T10:00:00.123456789Z stderr F ",
    "docker compose": "ollama-1  | ",
    "Docker Desktop": "2025-03-06 11:42:21 ",
}


def in_json(line: str) -> str:
    """The line as a GUI wrapper logs it, inside a JSON string (real-logs.txt [19])."""
    return '{"level":50,"time":1752516972565,"msg":' + json.dumps(line + "\n") + "}"


def behind(prefix: str) -> Callable[[str], str]:
    return lambda line: prefix + line


FORMS: dict[str, Callable[[str], str]] = {
    **{name: behind(prefix) for name, prefix in PREFIXES.items()},
    "JSON wrapper": in_json,
}


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("era", sorted(ERAS))
def test_one_count_per_fault_in_every_era_and_prefix(era: str, form: str) -> None:
    lines, expected = ERAS[era]
    assert errors([FORMS[form](line) for line in lines]) == expected


FAULT_LINES = sorted(
    {line for lines, _ in ERAS.values() for line in lines if runner_fault(line) is not None}
)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_prefix_does_not_change_what_a_line_means(form: str) -> None:
    assert len(FAULT_LINES) > 40
    for line in FAULT_LINES:
        assert runner_fault(FORMS[form](line)) == runner_fault(line), line


# --- lines that are no failure --------------------------------------------------------------

NOT_FAULTS = [
    # llama-server's normal output (real, llama-server-real.txt)
    "slot print_timing: id  0 | task 0 |        eval time =     105.47 ms /   120 tokens "
    "(    0.89 ms per token,  1128.27 tokens per second)",
    "       eval time =    5729.20 ms /    96 tokens (   60.31 ms per token,    16.58 tokens "
    "per second)",
    "load_tensors: offloaded 9/9 layers to GPU",
    "llama_context: n_ctx_seq (4096) > n_ctx_train (2048) -- possible training context overflow",
    "cmn  common_param: common_params_print_info: verbosity = 4 (adjust with the `-lv N` CLI arg)",
    "common_fit_params: failed to fit params to free device memory: n_gpu_layers already set "
    "by user to 999, abort",
    "common_params_fit_impl: cannot meet free memory target of 1024 MiB, need to reduce device "
    "memory by 7476884 MiB",
    "common_memory_breakdown_print: | memory breakdown [MiB] |  total     free    self   model",
    "srv  update_slots: all slots are idle",
    # words that look like errors, harmlessly
    "srv  update_slots: id  0 | task 7 | n_err = 0, n_ok = 12",
    "print_info: general.name          = error-bot",
    "llama_model_loader: - kv   1:                               general.name str              "
    "= CUDA error: out of memory",
    "print_info: EOG token             = 2 'panic: '",
    "srv    send_error: task id = 3, error: the request exceeds the available context size",
    'srv  log_server_r: request:  {"prompt": "panic: CUDA error: out of memory"}',
    "nvmlDeviceGetSerial failed: 3",
    "cuda driver library failed to get device context 2",
    "[GPU-0e3f2440-290b-0b48-4d15-8b43b8638f30] CUDA freeMem 23877 mb",
    "ggml_metal_init: allocating",
    'rocblaslt error: Cannot read "TensileLibrary_lazy_gfx1200.dat": No such file or directory',
    # a host without a GPU is not a GPU error
    "ggml_cuda_init: failed to initialize CUDA: no CUDA-capable device is detected",
    "ggml_cuda_init: failed to initialize ROCm: no ROCm-capable device is detected",
    # llama.cpp gets over this one itself (Ollama waits it out, llm/status.go)
    "ggml_backend_sched_reserve: compute buffer allocation failed, retrying without pipeline "
    "parallelism",
    # the CLI, not the server
    "Error: listen tcp 127.0.0.1:11434: bind: address already in use",
    "Error: 500 Internal Server Error: llama-server process has terminated: exit status 1: "
    "cudaMalloc failed: out of memory",
    # Go stack frames and dump headers
    "runtime.sigpanic()",
    "panic({0x55d2c3f0a2e0?, 0xc000012345?})",
    "\truntime/panic.go:770 +0x132 fp=0xc00004f6c8 sp=0xc00004f618 pc=0x55d2c3a1b2c2",
    "goroutine 1 [running]:",
    "created by runtime.gcBgMarkStartWorkers in goroutine 1",
    # Metal's failed command buffer alone: the line after it says why
    "ggml_metal_graph_compute: command buffer 0 failed with status 5",
]


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("line", NOT_FAULTS)
def test_lines_that_are_no_failure(line: str, form: str) -> None:
    assert runner_fault(FORMS[form](line)) is None
    assert errors([FORMS[form](line)]) == {}


def test_a_model_named_error_bot_and_prompts_never_count() -> None:
    lines = [
        slog("INFO", "starting llama-server", cmd="/usr/lib/ollama/llama-server --model m "
             "--log-verbosity 4 --alias error-bot"),
        slog("DEBUG", "chat request", prompt="panic: CUDA error: out of memory\nGGML_ASSERT"),
        '[GIN] 2026/12/02 - 10:00:00 | 404 |      1.2ms |  10.0.0.1 | GET      "/panic: x"',
        "llama_model_loader: - kv   1: general.name str = error-bot",
    ]  # fmt: skip
    assert errors(lines) == {}
    assert isinstance(parse_line(lines[2]), Request)


def test_no_failure_text_reaches_a_label() -> None:
    counters = LogCounters()
    counters.feed(
        [
            "CUDA error: SECRET out of memory SECRET",
            "panic: SECRET",
            slog("ERROR", "error loading llama server", error="SECRET unable to allocate"),
        ]
    )
    assert b"SECRET" not in generate_latest(registry_of(counters.families))


# --- the server's errors: what error= says --------------------------------------------------


@pytest.mark.parametrize("msg", ["error loading llama server", "Load failed"])
@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # a buffer that could not be allocated is memory, in whatever words
        ("llama runner process has terminated: error loading model: unable to allocate CUDA0 "
         "buffer", OOM),
        ("llama runner process has terminated: error loading model: unable to allocate ROCm0 "
         "buffer", OOM),
        ("llama-server process has terminated: exit status 1: llama_init_from_model: failed to "
         "initialize the context: failed to allocate buffer for kv cache", OOM),
        ("llama runner process has terminated: ggml_vulkan: Device memory allocation of size "
         "118497280 failed.", OOM),
        ("llama runner process has terminated: vk::Device::allocateMemory: "
         "ErrorOutOfDeviceMemory", OOM),
        ("llama runner process has terminated: std::bad_alloc", OOM),
        ("llama runner process has terminated: CUDA error: out of memory", OOM),
        ("llama runner process has terminated: mmap failed: Cannot allocate memory", OOM),
        ("model requires more system memory (5.5 GiB) than is available (3.4 GiB)", OOM),
        # anything else is a load failure, or a timeout
        ("llama runner process has terminated: signal: killed", LOAD),
        ("llama runner process has terminated: error loading model: unknown model "
         "architecture: 'gemma3'", LOAD),
        ("llama runner process has terminated: GGML_ASSERT(tensor->op == GGML_OP_UNARY) failed",
         LOAD),
        ("timed out waiting for llama runner to start - progress 0.95 - ", TIMEOUT),
    ],
)  # fmt: skip
def test_what_a_server_error_says(msg: str, error: str, kind: str) -> None:
    assert errors([slog("ERROR", msg, error=error)]) == {kind: 1}


# --- one fault, one count: the rule ---------------------------------------------------------


def test_each_runner_death_counts() -> None:
    """A process dies once: two death notices with nothing between them are two runners."""
    assert errors([TERMINATED_GO, TERMINATED_GO]) == {CRASH: 2}
    assert errors([TERMINATED_V030, slog("ERROR", "error loading llama server",
                                         error="llama-server process has terminated")]) == {CRASH: 1}  # fmt: skip  # noqa: E501


def test_each_verdict_counts() -> None:
    """A load gets one verdict: two verdicts are two loads."""
    verdict = slog("ERROR", "error loading llama server", error="llama runner process has "
                   "terminated: signal: killed")  # fmt: skip
    assert errors([verdict, verdict]) == {LOAD: 2}


def test_a_refusal_after_a_crash_is_another_failure() -> None:
    """The scheduler's refusal involves no runner: it never belongs to the fault before it."""
    refusal = slog("INFO", "Load failed", model="/m", error="model requires more system "
                   "memory (5.5 GiB) than is available (3.4 GiB)")  # fmt: skip
    assert errors(["panic: runtime error: index out of range", refusal]) == {CRASH: 1, OOM: 1}
    assert errors([TERMINATED_GO, POST_PREDICT, refusal]) == {CRASH: 1, OOM: 1}


def test_requests_of_one_crash_count_once_in_any_order() -> None:
    crash = ["panic: runtime error: slice bounds out of range [:5] with capacity 4"]
    assert errors([*crash, POST_PREDICT, POST_PREDICT, TERMINATED_GO]) == {CRASH: 1}
    # a request that lost its runner ("EOF") says the runner died, before Ollama reaps it
    assert errors([POST_PREDICT, *crash, TERMINATED_GO, POST_PREDICT]) == {CRASH: 1}
    assert errors([COMPLETION_ERROR, TERMINATED_V030]) == {CRASH: 1}
    # a request the runner answered with an error is a failed request, once per fault
    refused = slog("ERROR", "llama-server completion error", error="context size exceeded")
    assert errors([refused, refused]) == {REQUEST: 1}
    assert errors([refused, "slot print_timing: id 0 | task 2 | prompt eval time = 1.00 ms / "
                   "2 tokens", refused]) == {REQUEST: 2}  # fmt: skip
    # a load's verdict after requests the runner served is another runner's load
    verdict = slog("ERROR", "error loading llama server", error="exit status 1")
    assert errors([refused, verdict]) == {REQUEST: 1, LOAD: 1}


def test_a_second_report_is_a_second_failure() -> None:
    """A dying runner writes its CUDA report (or buffer allocation failure) once."""
    report = "CUDA error: an illegal memory access was encountered"
    assert errors([report, "ggml-cuda.cu:88: CUDA error", report]) == {GPU: 2}
    assert errors(["panic: runtime error", V030_CUDA_OOM[1]]) == {CRASH: 1, OOM: 1}


@pytest.mark.parametrize(
    "between",
    [
        START,
        GO_START,
        slog("INFO", "starting runner", cmd="/usr/bin/ollama runner --model m"),
        slog("INFO", "llama runner started in 29.96 seconds"),
        slog("INFO", "llama-server started in 2.51 seconds"),
        slog("INFO", "server config", env="map[]"),
        slog("INFO", "starting go runner"),
        "2023/11/11 16:02:42 llama.go:415: starting llama runner",
        "llama_model_loader: loaded meta data with 20 key-value pairs and 75 tensors",
        "srv  llama_server: initializing ...",
        "srv  llama_server: model loaded",
        "slot print_timing: id  0 | task 9 | prompt eval time =  7.67 ms /  5 tokens (1.53 ms)",
        "srv  update_slots: all slots are idle",
    ],
)
def test_a_new_or_healthy_runner_ends_the_fault(between: str) -> None:
    crash = "panic: runtime error: invalid memory address or nil pointer dereference"
    assert errors([crash, crash]) == {CRASH: 1}  # the same dump, as far as anyone can tell
    assert errors([crash, between, crash]) == {CRASH: 2}


def test_streams_are_independent() -> None:
    """Two logs read side by side: each has its own fault in progress."""
    one, two = LogStream(), LogStream()
    crash = "panic: runtime error"
    assert one.parse(crash) == Message("error", error_kind=CRASH)
    assert two.parse(crash) == Message("error", error_kind=CRASH)
    assert one.parse(crash) is None
    assert one.parse(TERMINATED_GO) == Message("error")  # a notice of the fault counted
    one.forget()
    assert one.parse(crash) == Message("error", error_kind=CRASH)
    # the process's own stream is a third one
    assert parse_line(crash) == Message("error", error_kind=CRASH)


def test_request_lines_never_touch_the_stream() -> None:
    stream = LogStream()
    stream.parse("panic: x")
    assert stream.parse(GIN_500) == Request("POST", "/api/chat", 500, 1.5308332)
    assert stream.seen is not None


@given(st.text(max_size=200), st.sampled_from(sorted(PREFIXES.values())))
def test_any_text_means_a_known_kind_or_nothing(text: str, prefix: str) -> None:
    kind = runner_fault(prefix + text)
    assert kind is None or kind in RUNNER_ERROR_KINDS
    event = LogStream().parse(prefix + text)
    assert not isinstance(event, Message) or event.error_kind in (None, *RUNNER_ERROR_KINDS)
