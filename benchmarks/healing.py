"""The remediation ladder against a plain server restart (issue 15's benchmark; run on demand).

Same wedge, same models, both paths in one run, interleaved: the simulator with real llama.cpp
``llama-server`` runners for two tiny models (A and B, both loaded), under the demo's supervisor
(systemd's ``Restart=always``; the restart command kills the simulator by its pid file, so a
restart is a real one: every stream cut, every model cold-loaded again). The watchdog probes
liveness every 500 ms and A deeply every second (3 s timeout, ``failure_threshold`` 2) and follows
the simulator's log. Two steady clients stream generations, one against A and one against B,
from before the wedge until after recovery. The wedge: A's runner is SIGSTOPped.

Measured per trial:

* time to recovery: SIGSTOP to the first passing deep probe after it (the watchdog's
  ``ollama_probe_success{probe="generate"}`` back to 1) with A loaded again in a new runner;
* of which detection (SIGSTOP to the watchdog's decision, from its log event) and mending
  (decision to recovery);
* client requests broken, per client: ``cut`` (a stream answered 200 that then failed or ended
  without ``done``: in flight when it broke) and ``refused`` (failed before an answer began:
  connection refused, an error status); a client pauses 0.5 s before its next request.

Paths: ``ladder`` (``[healing] ladder = true``: unload A, then kill its runner, then restart) and
``restart`` (``ladder = false``: the server restart of before). Reported: per trial, and the
median per path.

    python benchmarks/healing.py [--trials 3] [--models 2] [--size 600K] [--gpu-layers N]

``--model-dir DIR`` keeps the models (and the trials' work dirs, for hard links) there and
reuses them in a later run: 4 x 8 GiB take minutes to write and to hash. Each trial's model store
is seeded with hard links to the GGUFs under their digests, hashed once per run, so a trial's
first start does not hash them again (setup, outside what is measured).

``--models N``: N models loaded and in use (A plus N-1 others, one client each): a restart
cold-loads every one of them again, one after another (Ollama's scheduler, and the
simulator's, load one model at a time), the ladder only A. ``--gpu-layers`` offloads to a GPU
(a CUDA build of llama-server); ``--deep-timeout`` is the deep probe's timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.daemon import DaemonProcess  # noqa: E402
from support.llama import llama_server_path  # noqa: E402
from support.realrunner import healing_config, supervised_simulator  # noqa: E402

from ollama_watchdog.commands.demo import SimulatorSupervisor  # noqa: E402
from ollama_watchdog.simulator.llamamodel import (  # noqa: E402
    _place_blob,
    _sha256_file,
    params_for_size,
    parse_size,
    write_llama_gguf,
)

A = "tiny-a:latest"


def model_names(n: int) -> list[str]:
    """A, B, then tiny-c, tiny-d, ...: A is the one wedged."""
    return [f"tiny-{chr(ord('a') + i)}:latest" for i in range(n)]

#: a stream of the steady clients must show its next chunk within this, else it is broken
CLIENT_TIMEOUT = 30.0
RECOVERY_LIMIT = 120.0
#: the default; 2 s had the watchdog restart a server that was still starting, again and again
STARTUP_GRACE = 30.0


class Client(threading.Thread):
    """Streams generations against one model back to back; counts the broken ones."""

    def __init__(self, url: str, model: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.model = model
        self.stop = threading.Event()
        self.ok = 0
        #: streams that were answered (200) and then failed or ended without done: cut
        self.cut = 0
        #: requests that failed before an answer began (refused, an error status)
        self.refused = 0

    def run(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            body = {"model": self.model, "prompt": "tell me more", "keep_alive": "1h",
                    "options": {"num_predict": 24}}
            done = answered = False
            try:
                with session.post(self.url + "/api/generate", json=body, stream=True,
                                  timeout=(5, CLIENT_TIMEOUT)) as r:
                    answered = r.status_code == 200
                    if answered:
                        for line in r.iter_lines():
                            if line and json.loads(line).get("done"):
                                done = True
            except (requests.RequestException, ValueError):
                done = False
            if done:
                self.ok += 1
                continue
            if answered:
                self.cut += 1
            else:
                self.refused += 1
            time.sleep(0.5)  # a client's retry pause


def control(sup: SimulatorSupervisor) -> list[dict[str, Any]]:
    r = requests.get(f"http://{sup.control}/runners", timeout=5)
    r.raise_for_status()
    return list(r.json()["runners"])


def runner_pid(sup: SimulatorSupervisor, model: str) -> int | None:
    try:
        live = [r for r in control(sup) if r["model"] == model and r["alive"]]
    except (requests.RequestException, ValueError, KeyError):
        return None
    return int(live[0]["pid"]) if live else None


def wait(pred: Any, what: str, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def decided_at(stderr: str) -> float:
    """Wall time of the watchdog's first decision to act (its log event's timestamp)."""
    for line in stderr.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("event") in ("remediation_decided",
                                                        "restart_decided"):
            stamp = str(ev["timestamp"]).replace("Z", "+00:00")
            return datetime.datetime.fromisoformat(stamp).timestamp()
    raise RuntimeError("no decision in the watchdog's log")


def save_logs(keep: Path, stem: str, watchdog: str, ollama: bytes, wedged_at: float | None) -> None:
    """The trial's logs in ``keep``: the watchdog's, the simulator's and the wedge's time."""
    keep.mkdir(parents=True, exist_ok=True)
    (keep / f"{stem}-watchdog.log").write_text(watchdog)
    (keep / f"{stem}-ollama.log").write_bytes(ollama)
    (keep / f"{stem}-wedge.txt").write_text(f"{wedged_at}\n" if wedged_at else "no wedge\n")


def _make_model(path: Path, size: int, seed: int) -> str:
    """Write one model unless it is there already; its sha256 hex."""
    digest_file = path.with_suffix(".sha256")
    if not (path.exists() and digest_file.exists()):
        n_embd, n_layer, n_ff = params_for_size(size)
        write_llama_gguf(path, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, seed=seed)
        digest_file.write_text(_sha256_file(path) + "\n")
    return digest_file.read_text().strip()


def make_models(where: Path, names: list[str], size: int) -> dict[str, tuple[Path, str]]:
    """name -> (GGUF, sha256 hex) in ``where``: written and hashed once, reused when there.

    Missing models are written in parallel, one process each (the random weights are CPU
    bound: 4 x 8 GiB one after another take minutes)."""
    paths = [where / f"{name.split(':')[0]}-{size}.gguf" for name in names]
    with ProcessPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(_make_model, paths, [size] * len(names), range(len(names))))
    return {name: (path, digest) for name, path, digest in zip(names, paths, digests, strict=True)}


def seed_store(sup: SimulatorSupervisor, models: dict[str, tuple[Path, str]]) -> None:
    """Place the GGUFs in the simulator's blob store under their digests, as its install does
    (a hard link on one file system): its install then trusts the blob that is the very file
    instead of hashing it."""
    blobs = sup.simdir / "models" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    for path, digest in models.values():
        _place_blob(blobs, path, digest)


def trial(
    tmp: Path,
    llama: Path,
    models: dict[str, tuple[Path, str]],
    ladder: bool,
    gpu_layers: int | None = None,
    deep_timeout: str = "3s",
    keep: Path | None = None,
) -> dict[str, Any]:
    extra = ("--gpu-layers", str(gpu_layers)) if gpu_layers is not None else ()
    sup = supervised_simulator(tmp / "sup", llama, {m: p for m, (p, _) in models.items()}, *extra)
    seed_store(sup, models)
    url = f"http://{sup.listen}"
    cfg = healing_config(sup, tmp, A, startup_grace=f"{STARTUP_GRACE:g}s",
                         deep_timeout=deep_timeout, ladder=ladder)
    sup.start(ready_timeout=30.0)
    clients: list[Client] = []
    try:
        wait(sup.readyfile.exists, "the simulator", 30)
        for model in models:
            requests.post(url + "/api/generate", timeout=60, json={
                "model": model, "prompt": "load", "stream": False, "keep_alive": "1h",
                "options": {"num_predict": 2}}).raise_for_status()
        started = time.monotonic()
        with DaemonProcess(cfg, tmp) as d:
            wedged_at: float | None = None
            try:
                wait(lambda: d.value("ollama_probe_success", probe="generate") == 1.0
                     and d.value("ollama_watchdog_state", state="healthy") == 1.0,
                     "a healthy watchdog", 60, 0.2)
                clients = [Client(url, m) for m in models]
                for c in clients:
                    c.start()
                time.sleep(3)  # steady traffic before the wedge
                # the start-up grace (30 s, counted from the watchdog's start) must be over, or
                # detection measures the grace, not the probes
                time.sleep(max(0.0, STARTUP_GRACE + 1.0 - (time.monotonic() - started)))
                before = {c.model: (c.ok, c.cut, c.refused) for c in clients}
                server = int(sup.pidfile.read_text())
                a_pid = runner_pid(sup, A)
                assert a_pid is not None
                t0, t0_wall = time.monotonic(), time.time()
                wedged_at = t0_wall
                os.kill(a_pid, signal.SIGSTOP)
                # the probe gauge stays 1 until the first deep probe times out: see it fall first
                wait(lambda: d.value("ollama_probe_success", probe="generate") == 0.0,
                     "the deep probe failing", RECOVERY_LIMIT)

                def recovered() -> bool:
                    if d.value("ollama_probe_success", probe="generate") != 1.0:
                        return False
                    pid = runner_pid(sup, A)
                    return pid is not None and pid != a_pid

                wait(recovered, "recovery", RECOVERY_LIMIT)
                ttr = time.monotonic() - t0
                time.sleep(3)  # the clients see the recovered server
                for c in clients:
                    c.stop.set()
                for c in clients:
                    c.join(CLIENT_TIMEOUT + 10)
                cut = {c.model: c.cut - before[c.model][1] for c in clients}
                refused = {c.model: c.refused - before[c.model][2] for c in clients}
                ok = {c.model: c.ok - before[c.model][0] for c in clients}
                metrics = d.metrics()
                actions = {
                    dict(labels)["action"]: v for (name, labels), v in metrics.items()
                    if name == "ollama_watchdog_remediations_total" and v
                }
                restarted = int(sup.pidfile.read_text()) != server
                decided = decided_at(d.stderr()) - t0_wall
            finally:
                # kept whatever happened: a failed trial is when they are needed most
                if keep is not None:
                    save_logs(keep, f"{tmp.name}-{'ladder' if ladder else 'restart'}",
                              d.stderr(), sup.logfile.read_bytes(), wedged_at)
    finally:
        for c in clients:
            c.stop.set()
        sup.stop()
        with contextlib.suppress(ProcessLookupError, UnboundLocalError, TypeError):
            os.kill(a_pid, signal.SIGCONT)
    return {"path": "ladder" if ladder else "restart", "ttr_s": round(ttr, 2),
            "detect_s": round(decided, 2), "mend_s": round(ttr - decided, 2),
            "cut": cut, "refused": refused, "completed": ok, "actions": actions,
            "server_restarted": restarted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--size", type=parse_size, default=600 * 1024,
                        help="each model's size (600K, 1G: powers of 1024); a restart reloads "
                        "every model, so larger models widen the gap")  # fmt: skip
    parser.add_argument("--models", type=int, default=2, help="models loaded and in use (>= 2)")
    parser.add_argument("--gpu-layers", type=int, default=None,
                        help="layers to offload (a CUDA llama-server; 999: all)")  # fmt: skip
    parser.add_argument("--deep-timeout", default="3s", help="the deep probe's timeout")
    parser.add_argument("--model-dir", type=Path, default=None, metavar="DIR",
                        help="write the models here once and reuse them")  # fmt: skip
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy each trial's watchdog and simulator logs here")  # fmt: skip
    opts = parser.parse_args()
    llama = llama_server_path()
    if llama is None:
        print("llama-server not built: run scripts/build-llama-server.sh", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    names = model_names(max(2, opts.models))
    if opts.model_dir is not None:
        opts.model_dir.mkdir(parents=True, exist_ok=True)
    # the trials' dirs beside the models: the seeded blobs are hard links, one file system
    with tempfile.TemporaryDirectory(dir=opts.model_dir) as tmpdir:
        tmp = Path(tmpdir)
        models = make_models(opts.model_dir or tmp, names, opts.size)
        for i in range(opts.trials):
            for ladder in (True, False):  # interleaved: the machine's load hits both alike
                r = trial(tmp / f"t{i}-{int(ladder)}", llama, models, ladder,
                          opts.gpu_layers, opts.deep_timeout, opts.keep_logs)  # fmt: skip
                print(json.dumps(r), flush=True)
                results.append(r)
    summary: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                               f"Python {platform.python_version()}",
                               "load": os.getloadavg()[0], "models": len(names),
                               "size": opts.size, "gpu_layers": opts.gpu_layers,
                               "deep_timeout": opts.deep_timeout}
    for path in ("ladder", "restart"):
        rs = [r for r in results if r["path"] == path]
        summary[path] = {
            "ttr_median_s": statistics.median(r["ttr_s"] for r in rs),
            "detect_median_s": statistics.median(r["detect_s"] for r in rs),
            "mend_median_s": statistics.median(r["mend_s"] for r in rs),
            "cut_median": {m: statistics.median(r["cut"][m] for r in rs) for m in names},
            "refused_median": {m: statistics.median(r["refused"][m] for r in rs)
                               for m in names},
            "others_broken_median": statistics.median(
                sum(r["cut"][m] + r["refused"][m] for m in names[1:]) for r in rs),
        }
    summary["ratio"] = round(summary["ladder"]["ttr_median_s"]
                             / summary["restart"]["ttr_median_s"], 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
