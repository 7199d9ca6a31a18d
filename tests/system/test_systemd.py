"""End to end under the real systemd, journald and polkit (GitHub issue 7).

One bookworm container boots for the whole module (``container`` fixture) with no network, the
shipped units and polkit rule, and a stand-in ``ollama`` that runs our simulator. Tests that
change the setup (drop-ins, a broken config) put it back in ``finally``; every test starts by
waiting for the normal state (:func:`settle`), so the order does not matter.

Nothing here asserts on speed: waits have generous deadlines, and what is asserted is what an
operator sees — unit states, exit statuses, the journal, ``/metrics``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from nspawn import Container
from prometheus_client.parser import text_string_to_metric_families
from stack import (
    CONFIG_PATH,
    CONTROL_URL,
    METRICS_URL,
    MODELS_DIR,
    OLLAMA_UNIT,
    OLLAMA_URL,
    STATE_DIR,
    WATCHDOG_UNIT,
    WATCHDOG_USER,
    config_toml,
)

pytestmark = pytest.mark.system

T = TypeVar("T")

# systemd's catalog id for "Started UNIT" (job type start, result done).
UNIT_STARTED = "MESSAGE_ID=39f53479d3a045ac8e11786248231fbf"
DROP_IN_DIR = f"/etc/systemd/system/{WATCHDOG_UNIT}.d"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None and last is not False:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def scrape(c: Container) -> dict[str, float]:
    """``/metrics`` as {'name{label="v",...}': value}; empty when the exporter does not answer."""
    status, body = c.http("GET", METRICS_URL)
    if status != 200:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


def prop(c: Container, unit: str, name: str) -> str:
    return c.unit_property(unit, name)


def ollama_answers(c: Container) -> bool:
    status, body = c.http("GET", f"{OLLAMA_URL}/api/version", timeout=5)
    return status == 200 and "version" in json.loads(body)


def watchdog_healthy(c: Container) -> bool:
    if prop(c, WATCHDOG_UNIT, "ActiveState") != "active":
        return False
    m = scrape(c)
    return m.get("ollama_up{}") == 1 and m.get('ollama_watchdog_state{state="healthy"}') == 1


def settle(c: Container) -> None:
    """Back to normal: Ollama answering, the watchdog running and calling it healthy."""
    for unit in (OLLAMA_UNIT, WATCHDOG_UNIT):
        if prop(c, unit, "ActiveState") == "failed":
            c.run(["systemctl", "reset-failed", unit])
    c.run(["systemctl", "start", OLLAMA_UNIT], timeout=120)
    wait_for("ollama to answer", lambda: ollama_answers(c))
    c.run(["systemctl", "start", WATCHDOG_UNIT], timeout=120)
    wait_for("the watchdog to report ollama healthy", lambda: watchdog_healthy(c))


def set_fault(c: Container, fault: str) -> None:
    status, body = c.http(
        "POST", f"{CONTROL_URL}/fault", body=json.dumps({"fault": fault}).encode()
    )
    assert status == 200, f"simulator control refused fault {fault}: {status} {body}"


def ollama_starts(c: Container, since: str) -> int:
    """How many times systemd reported ollama.service started since the cursor."""
    return len(c.journal_entries(UNIT_STARTED, f"UNIT={OLLAMA_UNIT}", since_cursor=since))


def test_stand_in_ollama_runs_under_its_unit(container: Container) -> None:
    c = container
    wait_for("ollama.service active", lambda: prop(c, OLLAMA_UNIT, "ActiveState") == "active")
    wait_for("the simulator to answer /api/version", lambda: ollama_answers(c))
    pid = prop(c, OLLAMA_UNIT, "MainPID")
    argv = c.run(["cat", f"/proc/{pid}/cmdline"]).stdout.split("\0")
    # The project's process-matching rule: an element named ollama followed by serve.
    names = [a.rsplit("/", 1)[-1] for a in argv]
    assert any(n == "ollama" and names[i + 1 : i + 2] == ["serve"] for i, n in enumerate(names))
    assert c.run(["ps", "-o", "user=", "-p", pid]).stdout.strip() == "ollama"


def test_watchdog_is_active_only_once_ready_and_states_its_status(container: Container) -> None:
    c = container
    wait_for("ollama to answer", lambda: ollama_answers(c))
    c.run(["systemctl", "stop", WATCHDOG_UNIT], timeout=120)
    assert prop(c, WATCHDOG_UNIT, "Type") == "notify"

    # For Type=notify, `systemctl start` returns only when the service sent READY=1, which the
    # daemon does once /metrics listens: so the very first scrape, with no retry, is answered.
    c.run(["systemctl", "start", WATCHDOG_UNIT], timeout=120)
    assert prop(c, WATCHDOG_UNIT, "ActiveState") == "active"
    status, body = c.http("GET", METRICS_URL)
    assert status == 200
    assert "ollama_watchdog_build_info" in body

    def status_says_up() -> str | None:
        text = prop(c, WATCHDOG_UNIT, "StatusText")
        return text if " up" in text else None

    sentence = wait_for("a STATUS= sentence saying ollama is up", status_says_up, timeout=60)
    assert "ollama" in sentence
    shown = c.run(["systemctl", "status", "--no-pager", WATCHDOG_UNIT], check=False).stdout
    assert "Status: " in shown
    assert "ollama" in shown.split("Status: ", 1)[1].splitlines()[0]


def test_polkit_lets_the_watchdog_user_restart_ollama_and_nothing_else(
    container: Container,
) -> None:
    c = container
    settle(c)
    before = prop(c, OLLAMA_UNIT, "InvocationID")
    allowed = c.run(["systemctl", "restart", OLLAMA_UNIT], user=WATCHDOG_USER, check=False)
    assert allowed.returncode == 0, allowed.stderr
    assert prop(c, OLLAMA_UNIT, "InvocationID") != before

    refused = {
        "stop ollama": ["systemctl", "stop", OLLAMA_UNIT],
        "restart another unit": ["systemctl", "restart", "dbus.service"],
        "restart itself": ["systemctl", "restart", WATCHDOG_UNIT],
        "restart a look-alike": ["systemctl", "restart", "ollama-evil.service"],
    }
    for what, cmd in refused.items():
        r = c.run(cmd, user=WATCHDOG_USER, check=False)
        assert r.returncode != 0, f"{what} was allowed"
        assert "Interactive authentication required" in r.stderr, (what, r.stderr)
    assert prop(c, OLLAMA_UNIT, "ActiveState") == "active"


def test_hung_ollama_is_restarted_and_the_counts_agree(container: Container) -> None:
    c = container
    settle(c)
    since = c.journal_cursor()
    before = scrape(c)
    restarts_before = total(before, "ollama_watchdog_restarts_total")
    failures_before = total(before, "ollama_watchdog_restart_failures_total")
    invocation = prop(c, OLLAMA_UNIT, "InvocationID")

    set_fault(c, "hang")
    # The simulator keeps the fault until it is restarted: only a restart brings health back.
    wait_for(
        "a new ollama.service invocation",
        lambda: prop(c, OLLAMA_UNIT, "InvocationID") != invocation,
        timeout=180,
    )
    wait_for("the watchdog to see ollama healthy again", lambda: watchdog_healthy(c), 180)

    after = scrape(c)
    restarts = total(after, "ollama_watchdog_restarts_total") - restarts_before
    starts = ollama_starts(c, since)
    assert restarts >= 1
    assert starts == restarts, f"systemd started ollama {starts}x, watchdog counts {restarts}"
    assert total(after, "ollama_watchdog_restart_failures_total") == failures_before
    assert after.get("ollama_watchdog_last_restart_timestamp_seconds{}", 0) > 0
    # It was the watchdog (through polkit), not systemd's Restart=, that restarted Ollama.
    assert prop(c, OLLAMA_UNIT, "NRestarts") == "0"
    log = c.journal_messages(unit=WATCHDOG_UNIT, since_cursor=since)
    assert "Interactive authentication required" not in log


def test_frozen_watchdog_is_killed_and_restarted_by_systemd(container: Container) -> None:
    c = container
    settle(c)
    c.write_file(f"{DROP_IN_DIR}/50-system-test-watchdog.conf", "[Service]\nWatchdogSec=5s\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", WATCHDOG_UNIT], timeout=120)
        assert prop(c, WATCHDOG_UNIT, "WatchdogUSec") == "5s"
        # Kept alive while it works: well past WatchdogSec, the same process still runs.
        pid = prop(c, WATCHDOG_UNIT, "MainPID")
        wait_for("the watchdog to report healthy", lambda: watchdog_healthy(c))
        since = c.journal_cursor()
        restarts = int(prop(c, WATCHDOG_UNIT, "NRestarts"))

        c.run(["kill", "-STOP", pid])
        wait_for(
            "a new watchdog process after the freeze",
            lambda: (
                prop(c, WATCHDOG_UNIT, "MainPID") not in {pid, "0"}
                and prop(c, WATCHDOG_UNIT, "ActiveState") == "active"
            ),
            timeout=120,
        )
        log = c.journal_messages(unit=WATCHDOG_UNIT, since_cursor=since)
        assert "Watchdog timeout" in log
        assert int(prop(c, WATCHDOG_UNIT, "NRestarts")) == restarts + 1
        wait_for("the new watchdog to report healthy", lambda: watchdog_healthy(c))
    finally:
        c.run(["rm", "-rf", DROP_IN_DIR])
        c.run(["systemctl", "daemon-reload"])
        c.run(["systemctl", "restart", WATCHDOG_UNIT], timeout=120, check=False)


def test_bad_config_key_fails_with_78_and_is_not_restarted(container: Container) -> None:
    c = container
    settle(c)
    restarts = int(prop(c, WATCHDOG_UNIT, "NRestarts"))
    # A typo an operator makes: "enabeld" in [gpu] (the last section of the file).
    c.write_file(CONFIG_PATH, config_toml(extra='enabeld = "true"\n'))
    try:
        since = c.journal_cursor()
        r = c.run(["systemctl", "restart", WATCHDOG_UNIT], timeout=120, check=False)
        assert r.returncode != 0
        assert prop(c, WATCHDOG_UNIT, "ExecMainStatus") == "78"
        # RestartPreventExitStatus=78: "failed" at once, not "auto-restart" (a restart loop).
        assert prop(c, WATCHDOG_UNIT, "ActiveState") == "failed"
        assert prop(c, WATCHDOG_UNIT, "SubState") == "failed"
        assert int(prop(c, WATCHDOG_UNIT, "NRestarts")) == restarts
        log = c.journal_messages(unit=WATCHDOG_UNIT, since_cursor=since)
        assert "enabeld" in log, "the error line must name the bad key"
    finally:
        c.write_file(CONFIG_PATH, config_toml())
        c.run(["systemctl", "reset-failed", WATCHDOG_UNIT], check=False)
    settle(c)


def test_journald_requests_are_counted_once_across_watchdog_restarts(
    container: Container,
) -> None:
    c = container
    settle(c)

    def show(n: int) -> None:
        # /api/show is a route nobody else calls here; a missing model is still a request.
        for _ in range(n):
            status, _body = c.http(
                "POST", f"{OLLAMA_URL}/api/show", body=b'{"model": "system-test:latest"}'
            )
            assert status in {200, 404}, status

    def shows() -> float:
        return total(scrape(c), "ollama_http_requests_total", method="POST", route="/api/show")

    def version_probes() -> float:
        return total(scrape(c), "ollama_http_requests_total", route="/api/version")

    # The follower is reading once the watchdog's own probes show up as requests.
    wait_for("probe requests counted from the journal", lambda: version_probes() > 0)
    assert shows() == 0
    show(3)
    wait_for("3 /api/show requests counted", lambda: shows() == 3)

    c.run(["systemctl", "stop", WATCHDOG_UNIT], timeout=120)
    show(2)  # while the watchdog is down: must not be lost
    c.run(["systemctl", "start", WATCHDOG_UNIT], timeout=120)
    show(1)
    # The counter restarted from 0 with the process: the 3 from before must not come back.
    wait_for("the 2+1 new requests counted", lambda: shows() >= 3)
    # Only once the follower is provably past the last /api/show line (later probe lines are
    # counted) is the count final: a replay would have gone past 3 by then.
    seen = version_probes()
    wait_for("later probe lines counted", lambda: version_probes() >= seen + 2)
    assert shows() == 3
    cursor = c.run(["sh", "-c", f"cat {STATE_DIR}/*"], check=False).stdout
    assert cursor.strip(), f"no journald cursor kept in {STATE_DIR}"


def test_hardening_confines_the_watchdog_to_its_state_dir(container: Container) -> None:
    c = container
    settle(c)
    pid = prop(c, WATCHDOG_UNIT, "MainPID")
    status = c.run(["cat", f"/proc/{pid}/status"]).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    # CAP_KILL (bit 5) and nothing else: the healing ladder kills a wedged or orphaned runner
    assert int(fields["CapEff"].strip(), 16) == 1 << 5
    assert int(fields["CapBnd"].strip(), 16) == 1 << 5

    uid = c.run(["id", "-u", WATCHDOG_USER]).stdout.strip()
    gid = c.run(["id", "-g", WATCHDOG_USER]).stdout.strip()

    def write_as_watchdog(path: str, as_root: bool = False) -> tuple[int, str]:
        # Inside the service's own mount namespace, where ProtectSystem= etc. apply.
        creds = [] if as_root else ["--setuid", uid, "--setgid", gid]
        r = c.run(
            ["nsenter", f"--target={pid}", "--mount", *creds, "--",
             "sh", "-c", 'echo probe > "$1" && rm -f "$1"', "sh", path],
            check=False,
        )  # fmt: skip
        return r.returncode, r.stderr

    assert write_as_watchdog(f"{STATE_DIR}/system-test-probe") == (0, "")
    outside = ["/etc", "/usr/local", "/opt/ollama-watchdog", "/var/lib", "/var/log", MODELS_DIR]
    for directory in outside:
        code, err = write_as_watchdog(f"{directory}/system-test-probe")
        assert code != 0, f"the watchdog could write to {directory}"
        # Even root in that namespace cannot: the mount itself is read-only, not just the mode.
        code, err = write_as_watchdog(f"{directory}/system-test-probe", as_root=True)
        assert code != 0 and "Read-only file system" in err, (directory, err)


def test_ollama_unit_keeps_its_models_dir_writable(container: Container) -> None:
    """Ollama writes its key pair and pulled models under /usr/share/ollama; the hardening of
    ollama.service must leave that writable (the unit says so in a comment)."""
    c = container
    settle(c)
    pid = prop(c, OLLAMA_UNIT, "MainPID")
    uid = c.run(["id", "-u", "ollama"]).stdout.strip()
    gid = c.run(["id", "-g", "ollama"]).stdout.strip()
    r = c.run(
        ["nsenter", f"--target={pid}", "--mount", "--setuid", uid, "--setgid", gid, "--",
         "sh", "-c", 'echo probe > "$1" && rm -f "$1"', "sh", f"{MODELS_DIR}/system-test-probe"],
        check=False,
    )  # fmt: skip
    assert r.returncode == 0, f"ollama.service cannot write {MODELS_DIR}: {r.stderr}"
