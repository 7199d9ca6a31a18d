"""``ollama-watchdog doctor``: each rule on plain data, then the whole checklist on a live setup."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support.daemon import DaemonProcess, quick_config, write_config
from support.facts import REAL_LOGS
from support.sim import SimulatorProcess
from support.tools import free_port

from ollama_watchdog.commands import doctor
from ollama_watchdog.commands.doctor import Finding, Level, Listener
from ollama_watchdog.exporter.scrape import Samples
from ollama_watchdog.ollama import env as ollama_env
from ollama_watchdog.ollama.api import LoadedModel
from ollama_watchdog.store import ModelStore

SERVER_ARGV = ("/usr/local/bin/ollama", "serve")


def levels(findings: list[Finding]) -> list[Level]:
    return [f.level for f in findings]


# --------------------------------------------------------------------------------------------
# environment and parameters


def test_invented_variable_is_flagged_with_the_real_knob() -> None:
    env = {"OLLAMA_HOST": "127.0.0.1", "OLLAMA_GPU_MEMORY_FRACTION": "0.9", "PATH": "/usr/bin"}
    [finding] = doctor.judge_env(env, "test")
    assert finding.level is Level.WARN
    assert finding.text.startswith("OLLAMA_GPU_MEMORY_FRACTION is not an Ollama variable")
    assert "OLLAMA_GPU_OVERHEAD" in finding.fix


def test_removed_and_misspelt_variables_are_flagged() -> None:
    env = {"OLLAMA_RUNNERS_DIR": "/x", "OLLAMA_KEEPALIVE": "5m", "OLLAMA_GPU_PRECISION": "fp16"}
    found = doctor.judge_env(env, "test")
    assert levels(found) == [Level.WARN] * 3
    texts = " ".join(f.text for f in found)
    assert "OLLAMA_RUNNERS_DIR was removed" in texts
    assert "OLLAMA_KEEPALIVE is not an Ollama variable" in texts
    assert any("OLLAMA_KV_CACHE_TYPE" in f.fix for f in found)


def test_the_shipped_drop_in_uses_only_real_variables() -> None:
    # systemd/ollama.service.d/tuning.conf is what we tell operators to copy
    dropin = Path(__file__).parents[2] / "systemd/ollama.service.d/tuning.conf"
    env = {}
    for line in dropin.read_text().splitlines():
        if line.startswith(("Environment=", "#Environment=")):
            key = line.split("=", 2)[1].strip('"')
            env[key] = "x"
    assert len(env) >= 8
    assert levels(doctor.judge_env(env, "drop-in")) == [Level.OK]


def test_unit_environment_is_read_from_systemctl_show_and_files(tmp_path: Path) -> None:
    envfile = tmp_path / "ollama.env"
    envfile.write_text('# comment\nOLLAMA_NUM_PARALLEL="4"\nOLLAMA_FOO=1\n')
    props = {
        "Environment": 'PATH=/usr/bin "OLLAMA_ORIGINS=http://a b" OLLAMA_HOST=0.0.0.0:11434',
        "EnvironmentFiles": f"{envfile} (ignore_errors=no)",
    }
    env = doctor.unit_environ(props)
    assert env == {
        "PATH": "/usr/bin",
        "OLLAMA_ORIGINS": "http://a b",
        "OLLAMA_HOST": "0.0.0.0:11434",
        "OLLAMA_NUM_PARALLEL": "4",
        "OLLAMA_FOO": "1",
    }


def test_modelfile_parameters_ignored_or_rejected() -> None:
    modelfile = '''FROM llama3.2
# PARAMETER tfs_z 1   (a comment, not an instruction)
PARAMETER temperature 0.7
parameter Mirostat 2
PARAMETER num_gpu 99
SYSTEM """
PARAMETER numa true
"""
PARAMETER tfs_z 1.0
'''
    names = ollama_env.modelfile_parameter_names(modelfile)
    assert names == ["temperature", "Mirostat", "num_gpu", "tfs_z"]
    found = doctor.judge_parameters({}, {"Modelfile": names})
    assert [(f.level, f.text) for f in found] == [
        (Level.WARN, "Modelfile Modelfile: PARAMETER Mirostat is ignored"),
        (Level.FAIL, "Modelfile Modelfile: PARAMETER tfs_z makes `ollama create` fail"),
    ]
    assert "0.7.0" in found[0].fix and "0.5.2" in found[1].fix


def test_stored_parameters_are_only_warnings() -> None:
    found = doctor.judge_parameters({"old:latest": ["use_mlock", "tfs_z", "stop"]}, {})
    assert levels(found) == [Level.WARN, Level.WARN]
    assert doctor.judge_parameters({"ok:latest": ["stop", "num_ctx"]}, {})[0].level is Level.OK


# --------------------------------------------------------------------------------------------
# service, port, api, gpu, exposure, logs


def test_service_states() -> None:
    ok = doctor.judge_service("ollama.service", {"ActiveState": "active", "SubState": "running",
                                                 "NRestarts": "0"}, "")  # fmt: skip
    assert ok.level is Level.OK and ok.text == "ollama.service is active (running), 0 restarts"
    flapping = doctor.judge_service(
        "ollama.service", {"ActiveState": "active", "SubState": "running", "NRestarts": "7"}, ""
    )
    assert flapping.level is Level.WARN and "restarted 7 times" in flapping.text
    failed = doctor.judge_service(
        "ollama.service", {"ActiveState": "failed", "SubState": "failed", "NRestarts": "5"}, ""
    )
    assert failed.level is Level.FAIL and "journalctl -u ollama.service" in failed.fix
    absent = doctor.judge_service("ollama.service", {"LoadState": "not-found"}, "")
    assert absent.level is Level.FAIL and "not installed" in absent.text
    assert doctor.judge_service("x", None, "no bus").level is Level.WARN


def test_port_held_by_something_else_fails() -> None:
    other = [Listener("127.0.0.1", 4242, ("/usr/bin/python3", "-m", "http.server", "11434"))]
    finding = doctor.judge_port(11434, other)
    assert finding.level is Level.FAIL
    assert finding.text == "port 11434 is held by python3 (pid 4242), not ollama serve"
    assert doctor.judge_port(11434, []).level is Level.FAIL
    good = doctor.judge_port(11434, [Listener("127.0.0.1", 7, SERVER_ARGV)])
    assert good.level is Level.OK and "pid 7" in good.text


def real_lines(marker: str) -> list[str]:
    if not REAL_LOGS.exists():
        pytest.skip(f"{REAL_LOGS} not present")
    return [line for line in REAL_LOGS.read_text().splitlines() if marker in line]


def test_gpu_seen_by_nvml_but_ollama_on_cpu_fails() -> None:
    cpu = [line for line in real_lines('msg="inference compute"') if "library=cpu" in line]
    compute = doctor.inference_compute(cpu[:1])
    assert compute[0]["library"] == "cpu" and compute[0]["total"] == "125.7 GiB"
    found = doctor.judge_gpu("auto", ["NVIDIA A10G"], "", compute)
    assert levels(found) == [Level.OK, Level.FAIL]
    assert "Ollama runs on the CPU (125.7 GiB RAM) although NVML sees 1 GPUs" in found[1].text
    assert "CUDA_VISIBLE_DEVICES" in found[1].fix


def test_gpu_used_by_ollama_is_ok() -> None:
    gpu = [line for line in real_lines('msg="inference compute"') if "library=cuda" in line]
    compute = doctor.inference_compute(gpu[:1])
    found = doctor.judge_gpu("auto", ["NVIDIA GeForce RTX 2080 Ti"], "", compute)
    assert levels(found) == [Level.OK, Level.OK]
    assert found[1].text == "Ollama uses cuda NVIDIA GeForce RTX 2080 Ti (11.0 GiB)"


def test_only_the_last_start_counts_for_gpu_discovery() -> None:
    gpu = next(line for line in real_lines('msg="inference compute"') if "library=cuda" in line)
    cpu = next(line for line in real_lines('msg="inference compute"') if "library=cpu" in line)
    restart = 'time=2025-02-23T14:25:35.473+01:00 level=INFO msg="server config" env="map[]"'
    compute = doctor.inference_compute([gpu, restart, cpu])
    assert [c["library"] for c in compute] == ["cpu"]


def test_no_driver_is_a_state_not_a_failure_unless_required() -> None:
    assert levels(doctor.judge_gpu("auto", None, "NVML Shared Library Not Found", None)) == [
        Level.SKIP
    ]
    assert levels(doctor.judge_gpu("true", None, "NVML Shared Library Not Found", None)) == [
        Level.FAIL
    ]


def test_exposure_rules() -> None:
    wildcard = [Listener("0.0.0.0", 1, SERVER_ARGV)]
    loopback = [Listener("127.0.0.1", 1, SERVER_ARGV)]
    listen = "127.0.0.1:9778"
    [open_port] = doctor.judge_exposure(11434, wildcard, None, "table inet filter {}", listen, "")
    assert open_port.level is Level.WARN and "without authentication" in open_port.text
    assert "nginx" in open_port.fix
    ruleset = "table inet filter {\n chain input {\n  tcp dport 11434 ip saddr != 10.0.0.0/8 drop\n"
    [guarded] = doctor.judge_exposure(11434, wildcard, None, ruleset, listen, "")
    assert guarded.level is Level.OK
    [local] = doctor.judge_exposure(11434, loopback, None, None, listen, "")
    assert local.level is Level.OK
    # not running, but the unit would bind every address
    [planned] = doctor.judge_exposure(11434, [], "0.0.0.0:11434", None, listen, "")
    assert planned.level is Level.WARN
    found = doctor.judge_exposure(11434, loopback, None, None, "0.0.0.0:9778", "")
    assert levels(found) == [Level.OK, Level.WARN]
    assert "the exporter listens on 0.0.0.0:9778 with neither TLS nor basic auth" in found[1].text
    assert levels(doctor.judge_exposure(11434, loopback, None, None, ":9778", "/etc/w.yml")) == [
        Level.OK
    ]


def test_log_errors_show_the_last_ones() -> None:
    errors = real_lines("level=ERROR")
    assert len(errors) >= 2
    noise = ["llama_model_load: loaded meta data", "[GIN] 2024/07/21 - 15:52:51 | 200 | 0s |"]
    finding = doctor.judge_log_errors([*noise, *errors], "")
    assert finding.level is Level.WARN
    assert finding.text.startswith(f"{len(errors)} errors in the last {len(errors) + 2} log lines")
    assert "level=ERROR" in finding.text
    clean = doctor.judge_log_errors(noise, "")
    assert clean.level is Level.OK
    assert doctor.judge_log_errors(None, "[logs] source = none").level is Level.SKIP


def test_nothing_to_check_is_skipped_not_ok() -> None:
    assert doctor.judge_parameters({}, {})[0].level is Level.SKIP
    assert doctor.judge_log_errors([], "").level is Level.SKIP


def state_samples(state: str, **extra: float) -> Samples:
    samples: Samples = {
        ("ollama_watchdog_state", (("state", s),)): 1.0 if s == state else 0.0
        for s in ("healthy", "degraded", "restarting", "backoff", "gave_up", "disabled",
                  "maintenance")
    }  # fmt: skip
    samples[("ollama_up", ())] = extra.pop("up", 1.0)
    samples[("ollama_watchdog_restarts_total", (("reason", "liveness"),))] = 2.0
    for name, value in extra.items():
        samples[(f"ollama_watchdog_{name}", ())] = value
    return samples


URL = "http://127.0.0.1:9778/metrics"


def test_watchdog_states_judged() -> None:
    [ok] = doctor.judge_watchdog(URL, state_samples("healthy"), "", 0)
    assert (ok.level, ok.text) == (
        Level.OK, "state healthy: Ollama passes its probes (2 restarts since it started)"
    )
    [gave_up] = doctor.judge_watchdog(URL, state_samples("gave_up"), "", 0)
    assert gave_up.level is Level.FAIL and "no longer restarts Ollama" in gave_up.text
    assert "systemctl restart ollama-watchdog" in gave_up.fix
    [disabled] = doctor.judge_watchdog(URL, state_samples("disabled"), "", 0)
    assert disabled.level is Level.WARN and "enabled = true" in disabled.fix
    [maint] = doctor.judge_watchdog(
        URL, state_samples("maintenance", maintenance_until_timestamp_seconds=1000 + 1800), "", 1000
    )
    assert maint.level is Level.WARN and "the mark expires in 30 min" in maint.text
    assert "ollama-watchdog maintenance off" in maint.fix


def test_watchdog_seeing_ollama_down_or_dry_run_is_flagged() -> None:
    found = doctor.judge_watchdog(URL, state_samples("degraded", up=0.0, dry_run=1.0), "", 0)
    assert levels(found) == [Level.WARN, Level.FAIL, Level.WARN]
    assert found[1].text == "the watchdog sees Ollama down (ollama_up 0)"
    assert "--dry-run is on" in found[2].text


def deep_samples(ok: float, seconds: float) -> Samples:
    samples = state_samples("healthy")
    samples[("ollama_probe_success", (("probe", "generate"),))] = ok
    samples[("ollama_probe_duration_seconds", (("probe", "generate"),))] = seconds
    return samples


def test_a_deep_probe_passing_close_to_its_timeout_is_flagged() -> None:
    found = doctor.judge_watchdog(URL, deep_samples(1.0, 52.0), "", 0, deep_timeout=60.0)
    assert levels(found) == [Level.OK, Level.WARN]
    assert found[1].text.startswith(
        "the last deep probe passed in 52.0 s, 87% of probe.deep_timeout (60 s)"
    )
    assert "deep_timeout to at least twice the slowest answer (here 104s" in found[1].fix


@pytest.mark.parametrize(("ok", "seconds", "deep_timeout"), [
    (1.0, 47.0, 60.0),  # 78%: margin enough
    (0.0, 60.0, 60.0),  # failed: the state and the probe items say so, not this one
    (1.0, 59.0, None),  # no deep model configured
])  # fmt: skip
def test_a_deep_probe_with_margin_failed_or_absent_is_not_flagged(
    ok: float, seconds: float, deep_timeout: float | None
) -> None:
    found = doctor.judge_watchdog(URL, deep_samples(ok, seconds), "", 0, deep_timeout)
    assert levels(found) == [Level.OK]


def test_watchdog_not_answering_or_not_a_watchdog() -> None:
    [down] = doctor.judge_watchdog(URL, None, "connection refused", 0)
    assert down.level is Level.FAIL
    assert down.text == f"the watchdog does not answer at {URL}: connection refused"
    [other] = doctor.judge_watchdog(URL, {("up", ()): 1.0}, "", 0)
    assert other.level is Level.WARN and "no single ollama_watchdog_state" in other.text


def test_exporter_url_from_listen() -> None:
    assert doctor.exporter_url("127.0.0.1:9778") == "http://127.0.0.1:9778/metrics"
    assert doctor.exporter_url(":9779") == "http://127.0.0.1:9779/metrics"
    assert doctor.exporter_url("0.0.0.0:9778") == "http://127.0.0.1:9778/metrics"
    assert doctor.exporter_url("[::]:9778") == "http://[::1]:9778/metrics"


def loaded(name: str, size: int, vram: int) -> LoadedModel:
    return LoadedModel(name, size, vram, "sha256:" + "0" * 64, None, 4096)


def test_placement_gpu_partial_and_cpu_fallback() -> None:
    gib = 1024**3
    found = doctor.judge_placement(
        [loaded("a:1b", 2 * gib, 2 * gib), loaded("b:8b", 10 * gib, 6 * gib),
         loaded("c:3b", 3 * gib, 0)],
        "", 2, "",
    )  # fmt: skip
    assert levels(found) == [Level.OK, Level.WARN, Level.FAIL]
    assert found[0].text == "a:1b: all on GPU (2.0 GiB)"
    assert found[1].text.startswith("b:8b: 60% on GPU, the rest on the CPU")
    assert "although this host has 2 GPUs: silent CPU fallback" in found[2].text
    assert "systemctl restart ollama" in found[2].fix
    [cpu_host] = doctor.judge_placement([loaded("c:3b", 3 * gib, 0)], "", None, "no GPU seen")
    assert cpu_host.level is Level.OK and cpu_host.text == "c:3b: on the CPU (3.0 GiB); no GPU seen"
    assert levels(doctor.judge_placement([], "", 1, "")) == [Level.SKIP]
    assert levels(doctor.judge_placement(None, "refused (connection refused)", 1, "")) == [
        Level.SKIP
    ]


def test_render_and_exit_code() -> None:
    findings = [
        Finding("api", Level.OK, "fine"),
        Finding("env", Level.WARN, "X is not an Ollama variable", "remove X"),
        Finding("gpu", Level.SKIP, "no NVML"),
    ]
    text = doctor.render(findings)
    assert text.splitlines() == [
        "[ OK ] api  fine",
        "[WARN] env  X is not an Ollama variable",
        "            fix: remove X",
        "[SKIP] gpu  no NVML",
        "1 OK, 1 WARN, 0 FAIL, 1 skipped",
    ]
    assert doctor.exit_code(findings) == 1
    assert doctor.exit_code([Finding("a", Level.SKIP, "")]) == 0
    assert doctor.exit_code([*findings, Finding("b", Level.FAIL, "")]) == 2
    doc = json.loads(doctor.render_json(findings))
    assert doc == {
        "status": "WARN",
        "exit_code": 1,
        "counts": {"SKIP": 1, "OK": 1, "WARN": 1, "FAIL": 0},
        "findings": [
            {"item": "api", "level": "OK", "text": "fine", "fix": ""},
            {"item": "env", "level": "WARN", "text": "X is not an Ollama variable",
             "fix": "remove X"},
            {"item": "gpu", "level": "SKIP", "text": "no NVML", "fix": ""},
        ],
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# the whole checklist, on a running "ollama serve" (the simulator), a real store and its log


def write_model(root: Path, name: str, params: dict[str, object]) -> None:
    def blob(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = blob(json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", **blob(b"GGUF" + name.encode())},
        {"mediaType": "application/vnd.ollama.image.params", **blob(json.dumps(params).encode())},
    ]
    manifest = {"schemaVersion": 2, "config": {"mediaType": "x", **config}, "layers": layers}
    path = root / "manifests/registry.ollama.ai/library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[SimulatorProcess, Path]]:
    models = tmp_path / "models"
    write_model(models, "oldtune", {"mirostat": 2, "temperature": 0.2})
    write_model(models, "fresh", {"stop": ["<|eot_id|>"]})
    log = tmp_path / "ollama.log"
    env = {**os.environ, "OLLAMA_GPU_MEMORY_FRACTION": "0.9"}
    sim = SimulatorProcess(
        tmp_path / "sim", ["--models-dir", str(models)], log_file=log, as_ollama=True, env=env
    )
    with sim:
        yield sim, tmp_path


def run_doctor(
    tmp_path: Path, sim: SimulatorProcess, *extra: str, exporter: str = ""
) -> tuple[int, str]:
    """doctor on the live setup; ``exporter``: the watchdog's listen address (default a free
    port where nothing runs, so that no other process on this host is judged)."""
    config = write_config(
        tmp_path / "doctor.toml",
        {
            "ollama": {"url": sim.url, "timeout": "3s", "models_dir": str(tmp_path / "models"),
                       "unit": "ollama-test.service"},
            "exporter": {"listen": exporter or f"127.0.0.1:{free_port()}"},
            "logs": {"source": "file", "path": str(sim.log_file)},
            "gpu": {"enabled": "false"},
        },
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "doctor", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stderr == ""
    return proc.returncode, proc.stdout


def line_of(out: str, tag: str, item: str) -> str:
    matches = [x for x in out.splitlines() if x.startswith(f"[{tag}] {item} ")]
    assert matches, f"no [{tag}] {item} line in:\n{out}"
    return matches[0]


def test_doctor_on_a_live_server(live: tuple[SimulatorProcess, Path]) -> None:
    sim, tmp_path = live
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text("FROM llama3.2\nPARAMETER tfs_z 1.0\nPARAMETER num_ctx 8192\n")
    # make the server log a real runner failure
    model = next(
        m["name"] for m in requests.get(sim.url + "/api/tags", timeout=10).json()["models"]
    )
    sim.set_fault("runner_crash")
    requests.post(sim.url + "/api/generate", json={"model": model, "prompt": "x"}, timeout=30)
    sim.clear_fault()
    sim.wait_for_log("level=ERROR")

    code, out = run_doctor(tmp_path, sim, "--modelfile", str(modelfile))
    assert code == 2  # the Modelfile's tfs_z is a FAIL
    port = sim.url.rsplit(":", 1)[1]
    assert f"ollama serve (pid {sim.pid}) listens on 127.0.0.1:{port}" in line_of(
        out, " OK ", "port"
    )
    assert "Ollama 0.32.15 answers at" in line_of(out, " OK ", "api")
    # two weights, two params, one config shared by both (same bytes, same digest)
    assert "2 models, 5 referenced blobs all present" in line_of(out, " OK ", "blobs")
    env = line_of(out, "WARN", "env")
    assert f"OLLAMA_GPU_MEMORY_FRACTION is not an Ollama variable: Ollama ignores it " \
           f"(environment of pid {sim.pid})" in env  # fmt: skip
    assert "model oldtune:latest: PARAMETER mirostat is ignored" in line_of(
        out, "WARN", "parameters"
    )
    assert "PARAMETER tfs_z makes `ollama create` fail" in line_of(out, "FAIL", "parameters")
    assert "Ollama listens on loopback only" in line_of(out, " OK ", "exposure")
    assert "level=ERROR" in line_of(out, "WARN", "log")
    assert line_of(out, "SKIP", "gpu")
    # the crashed runner left nothing loaded; no watchdog runs on the configured port
    assert "no model is loaded: nothing to place" in line_of(out, "SKIP", "placement")
    assert "the watchdog does not answer at http://127.0.0.1:" in line_of(out, "FAIL", "watchdog")
    assert "fix: " in out
    assert out.splitlines()[-1].endswith(" WARN, 2 FAIL, 2 skipped")


def test_doctor_when_ollama_is_down_and_the_store_damaged(
    live: tuple[SimulatorProcess, Path],
) -> None:
    sim, tmp_path = live
    store = ModelStore(tmp_path / "models")
    scan = store.scan()
    victim = scan.manifests[0].layers[0]
    store.blob_path(victim.digest).unlink()
    sim.stop()
    exporter = f"127.0.0.1:{free_port()}"
    code, out = run_doctor(tmp_path, sim, exporter=exporter)
    assert code == 2
    assert line_of(out, "FAIL", "port").endswith(f"nothing listens on port {sim.port}")
    assert "failed: refused" in line_of(out, "FAIL", "api")
    blobs = line_of(out, "FAIL", "blobs")
    assert (
        f"1 referenced blobs absent, 0 of the wrong size (models: {scan.manifests[0].name})"
        in blobs
    )
    # the same checklist as JSON: the same items, levels and exit code
    json_code, json_out = run_doctor(tmp_path, sim, "--json", exporter=exporter)
    doc = json.loads(json_out)
    assert json_code == doc["exit_code"] == 2 and doc["status"] == "FAIL"
    tags = {"SKIP": "SKIP", "OK": " OK ", "WARN": "WARN", "FAIL": "FAIL"}
    for f in doc["findings"]:
        assert line_of(out, tags[f["level"]], f["item"]).endswith(f["text"])
    assert len(doc["findings"]) == len(out.splitlines()) - 1 - out.count("fix: ")


def test_doctor_without_a_unit_skips_systemd_and_says_why(
    live: tuple[SimulatorProcess, Path],
) -> None:
    sim, tmp_path = live
    config = write_config(
        tmp_path / "nounit.toml",
        {
            "ollama": {"url": sim.url, "unit": "", "models_dir": str(tmp_path / "models")},
            "gpu": {"enabled": "false"},
        },
    )
    proc = subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "[logs] source = file" in line_of(proc.stdout, "SKIP", "log")
    assert "[ollama] unit is empty" in line_of(proc.stdout, "SKIP", "service")
    assert "Ollama 0.32.15 answers at" in line_of(proc.stdout, " OK ", "api")


def test_doctor_reads_the_watchdogs_own_state_and_the_models_placement(
    live: tuple[SimulatorProcess, Path],
) -> None:
    sim, tmp_path = live
    model = requests.get(sim.url + "/api/tags", timeout=10).json()["models"][0]["name"]
    requests.post(
        sim.url + "/api/generate", json={"model": model, "prompt": "x", "stream": False},
        timeout=30,
    ).raise_for_status()  # fmt: skip
    # a real watchdog daemon, told not to act: its state is `disabled`, a WARN with the fix
    cfg = quick_config(sim.url, tmp_path / "wd")
    (tmp_path / "wd").mkdir()
    with DaemonProcess(cfg, tmp_path / "wd") as daemon:
        daemon.wait_value("ollama_up", 1.0)
        code, out = run_doctor(tmp_path, sim, exporter=cfg["exporter"]["listen"])
    watchdog = line_of(out, "WARN", "watchdog")
    assert "state disabled: [watchdog] enabled = false: nothing restarts a hung Ollama" in watchdog
    assert "fix: set [watchdog] enabled = true" in out
    # the simulator reports size_vram 0: on the CPU, and doctor was told not to look for GPUs
    assert f"{model}: on the CPU (" in line_of(out, " OK ", "placement")
    assert "[gpu] enabled = false" in line_of(out, " OK ", "placement")
    assert code == 1  # WARNs only (service, models-dir owner, env, parameters, watchdog)


# --------------------------------------------------------------------------------------------
# hostile input: no unit and Ollama down, a FIFO as the log, a 1 GB manifest


def doctor_subprocess(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # the timeout guards against a hang (the FIFO): the checklist itself takes a second
    return subprocess.run(
        [sys.executable, "-m", "ollama_watchdog", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def huge_manifest(models: Path) -> str:
    path = models / "manifests/registry.ollama.ai/library/huge/latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
    return "registry.ollama.ai/library/huge/latest"


def test_doctor_without_a_unit_while_ollama_is_down_and_the_store_hostile(
    tmp_path: Path,
) -> None:
    """No unit and nothing listening used to raise UnboundLocalError (props); a 1 GB manifest
    was read whole; a FIFO as the log path hung the checklist in open()."""
    models = tmp_path / "models"
    write_model(models, "fine", {"temperature": 0.2})
    relpath = huge_manifest(models)
    fifo = tmp_path / "ollama.log"
    os.mkfifo(fifo)
    port = free_port()  # nothing listens there
    config = write_config(
        tmp_path / "doctor.toml",
        {
            "ollama": {"url": f"http://127.0.0.1:{port}", "timeout": "1s", "unit": "",
                       "models_dir": str(models)},
            "logs": {"source": "file", "path": str(fifo)},
            "gpu": {"enabled": "false"},
        },
    )  # fmt: skip
    proc = doctor_subprocess(config)
    assert proc.stderr == ""  # no traceback
    assert proc.returncode == 2
    out = proc.stdout
    assert "[ollama] unit is empty" in line_of(out, "SKIP", "service")
    assert "failed: refused" in line_of(out, "FAIL", "api")
    assert "neither the process nor the unit readable" in line_of(out, "SKIP", "env")
    assert f"cannot read {fifo}: it is a FIFO, not a regular file" in line_of(out, "SKIP", "log")
    blobs = line_of(out, "FAIL", "blobs")
    assert f"manifest {relpath} is unreadable (manifest too large (has {1 << 30} bytes" in blobs


def test_doctor_without_a_unit_while_ollama_is_down(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "doctor.toml",
        {
            "ollama": {"url": f"http://127.0.0.1:{free_port()}", "timeout": "1s", "unit": "",
                       "models_dir": str(tmp_path / "models")},
            "logs": {"source": "none"},
            "gpu": {"enabled": "false"},
        },
    )  # fmt: skip
    proc = doctor_subprocess(config)
    assert proc.stderr == ""
    assert proc.returncode == 2
    assert "neither the process nor the unit readable" in line_of(proc.stdout, "SKIP", "env")
