"""Never fight an operator, under the real systemd (issue 15 item 7, the nspawn part).

The container of this module (``container`` fixture: bookworm systemd, no network, the shipped
units, the simulator as ``ollama serve``) runs the watchdog with the short probe settings of
``stack.WatchdogSettings``. Three things are shown against real systemd, each with its contrast,
so that none can pass by a watchdog that never acts:

* ``systemctl stop ollama`` is an operator's stop: for two minutes the watchdog shows
  ``maintenance`` and nothing starts Ollama; after ``systemctl start`` a hang in the same setup
  is restarted.
* ``ollama-watchdog maintenance on --for 40s`` (as an operator runs it, with the service's
  config, so the same ``state_dir``): a hang is left alone while the mark holds, and healed once
  it expires.
* A slow stop (``ExecStopPost`` keeps the unit ``deactivating`` for 15 s): an operator's is not
  fought while it runs; the watchdog's own restart of a hang goes through the same slow stop and
  is no operator's stop (never ``maintenance``).

What is asserted is what an operator sees: ``systemctl is-active``, the unit's invocation id and
``STATUS=``, the watchdog's ``/metrics``, the simulator's fault.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from nspawn import Container
from stack import CONFIG_PATH, CONTROL_URL, OLLAMA_UNIT, VENV, WATCHDOG_UNIT
from test_systemd import prop, scrape, set_fault, settle, total, wait_for, watchdog_healthy

pytestmark = pytest.mark.system

#: the issue's figure: an operator's stop holds at least this long (seconds)
HOLD = 120.0
MARK_FOR = 40.0
MAINTENANCE = 'ollama_watchdog_state{state="maintenance"}'


def is_active(c: Container, unit: str) -> str:
    return c.run(["systemctl", "is-active", unit], check=False).stdout.strip()


def fault(c: Container) -> str:
    status, body = c.http("GET", f"{CONTROL_URL}/fault", timeout=5)
    assert status == 200, (status, body)
    return str(json.loads(body)["fault"])


def restarts(samples: dict[str, float]) -> float:
    return total(samples, "ollama_watchdog_restarts_total")


def remediations(samples: dict[str, float]) -> float:
    return total(samples, "ollama_watchdog_remediations_total")


def maintenance(c: Container) -> None:
    """Settle back to normal: no mark left behind by a failed test."""
    c.run(
        [f"{VENV}/bin/ollama-watchdog", "maintenance", "off", "--config", CONFIG_PATH],
        check=False,
    )


def test_stopped_ollama_is_not_started_for_two_minutes(container: Container) -> None:
    c = container
    maintenance(c)
    settle(c)
    before = scrape(c)
    restarts_before, remediations_before = restarts(before), remediations(before)

    c.run(["systemctl", "stop", OLLAMA_UNIT], timeout=120)
    assert is_active(c, OLLAMA_UNIT) == "inactive"
    wait_for("the watchdog to show maintenance", lambda: scrape(c).get(MAINTENANCE) == 1, 60)
    status = prop(c, WATCHDOG_UNIT, "StatusText")
    assert "stopped on purpose" in status, status

    # For the whole two minutes: Ollama stays stopped, the watchdog stays in maintenance and
    # starts nothing (its counters do not move).
    deadline = time.monotonic() + HOLD
    polls = 0
    while time.monotonic() < deadline:
        assert is_active(c, OLLAMA_UNIT) == "inactive", f"ollama was started after {polls} polls"
        m = scrape(c)
        assert m.get(MAINTENANCE) == 1, {k: v for k, v in m.items() if "state" in k}
        assert restarts(m) == restarts_before
        assert remediations(m) == remediations_before
        assert prop(c, WATCHDOG_UNIT, "ActiveState") == "active"
        polls += 1
        time.sleep(2)
    assert polls >= 30  # it was watched for the whole time, not once
    log = c.journal_messages(unit=WATCHDOG_UNIT)
    assert "Interactive authentication required" not in log

    # The operator starts it again: healthy, without a restart by the watchdog.
    c.run(["systemctl", "start", OLLAMA_UNIT], timeout=120)
    wait_for("the watchdog to see ollama healthy again", lambda: watchdog_healthy(c), 120)
    assert restarts(scrape(c)) == restarts_before

    # Contrast, same setup: a hang is no operator's doing, and it is restarted.
    invocation = prop(c, OLLAMA_UNIT, "InvocationID")
    set_fault(c, "hang")
    wait_for(
        "the watchdog to restart the hung ollama",
        lambda: restarts(scrape(c)) == restarts_before + 1,
        timeout=180,
    )
    # counted when decided: the restart itself may still be running
    wait_for(
        "a new ollama.service invocation",
        lambda: prop(c, OLLAMA_UNIT, "InvocationID") != invocation,
        timeout=180,
    )
    wait_for("ollama healthy after the restart", lambda: watchdog_healthy(c), 180)


def test_killed_ollama_is_not_an_operator_stop(container: Container) -> None:
    """SIGKILL leaves the unit failed (Restart= brings it back), never ``maintenance``."""
    c = container
    maintenance(c)
    settle(c)
    pid = prop(c, OLLAMA_UNIT, "MainPID")
    invocation = prop(c, OLLAMA_UNIT, "InvocationID")
    c.run(["kill", "-KILL", pid])
    wait_for(
        "a new ollama process",
        lambda: (
            prop(c, OLLAMA_UNIT, "MainPID") not in {pid, "0"}
            and prop(c, OLLAMA_UNIT, "InvocationID") != invocation
        ),
        timeout=120,
    )
    wait_for("the watchdog to see ollama healthy again", lambda: watchdog_healthy(c), 120)
    log = c.journal_messages(unit=WATCHDOG_UNIT)
    assert "stopped on purpose" not in prop(c, WATCHDOG_UNIT, "StatusText")
    assert "maintenance_on" not in log


def test_maintenance_mark_holds_a_hang_until_it_expires(container: Container) -> None:
    c = container
    maintenance(c)
    settle(c)
    before = scrape(c)
    restarts_before, remediations_before = restarts(before), remediations(before)
    invocation = prop(c, OLLAMA_UNIT, "InvocationID")

    # As an operator runs it: root, the service's config (so the service's state_dir).
    on = c.run(
        [f"{VENV}/bin/ollama-watchdog", "maintenance", "on", "--for", f"{MARK_FOR:.0f}s",
         "--reason", "system test", "--config", CONFIG_PATH],
    )  # fmt: skip
    assert "maintenance on until" in on.stdout, on.stdout
    st = c.run(
        [f"{VENV}/bin/ollama-watchdog", "maintenance", "status", "--json", "--config",
         CONFIG_PATH],
    )  # fmt: skip
    until = float(json.loads(st.stdout)["until"])
    wait_for("the watchdog to show maintenance", lambda: scrape(c).get(MAINTENANCE) == 1, 30)
    m = scrape(c)
    assert m.get("ollama_watchdog_maintenance_until_timestamp_seconds{}") == pytest.approx(until)
    assert "system test" in prop(c, WATCHDOG_UNIT, "StatusText")

    set_fault(c, "hang")
    # While the mark holds (up to a second before it expires): the hang persists, nothing is
    # restarted or remediated, the state stays maintenance.
    polls = 0
    while time.time() < until - 1.0:  # the container shares the host clock
        m = scrape(c)
        assert m.get(MAINTENANCE) == 1, {k: v for k, v in m.items() if "state" in k}
        assert restarts(m) == restarts_before
        assert remediations(m) == remediations_before
        assert prop(c, OLLAMA_UNIT, "InvocationID") == invocation
        assert fault(c) == "hang"
        polls += 1
        time.sleep(1)
    assert polls >= 10
    # Probes saw the hang all along: the mark, not a passing probe, held the watchdog back.
    assert scrape(c).get("ollama_up{}") == 0

    # Expired: the hang is healed by a restart the watchdog counts.
    wait_for(
        "the hang to be healed after the mark expired",
        lambda: restarts(scrape(c)) == restarts_before + 1,
        timeout=180,
    )
    wait_for("ollama healthy after the restart", lambda: watchdog_healthy(c), 180)
    after = scrape(c)
    assert after.get("ollama_watchdog_maintenance_until_timestamp_seconds{}") == 0
    assert prop(c, OLLAMA_UNIT, "InvocationID") != invocation
    assert fault(c) == "none"
    log = c.journal_messages(unit=WATCHDOG_UNIT)
    assert "maintenance_expired" in log
    # The daemon removed the expired mark: status says off (exit 1).
    off = c.run(
        [f"{VENV}/bin/ollama-watchdog", "maintenance", "status", "--config", CONFIG_PATH],
        check=False,
    )
    assert off.returncode == 1, off.stdout


def while_deactivating(
    c: Container, what: str, timeout: float, check: Callable[[dict[str, float]], None]
) -> None:
    """Wait for the Ollama unit to be ``deactivating``, then ``check`` the watchdog's metrics
    once a second for as long as it stays so: at least 5 s (the server is gone meanwhile)."""
    wait_for(what, lambda: prop(c, OLLAMA_UNIT, "ActiveState") == "deactivating", timeout)
    polls = 0
    while prop(c, OLLAMA_UNIT, "ActiveState") == "deactivating":
        check(scrape(c))
        polls += 1
        time.sleep(1)
    assert polls >= 5


def test_a_slow_stop_is_not_fought_while_it_runs(container: Container) -> None:
    """The server is gone while the unit is still ``deactivating`` (runners still exiting, or
    a stop hook): the operator's stop is under way, and nothing may restart it meanwhile."""
    c = container
    maintenance(c)
    drop_in = f"/etc/systemd/system/{OLLAMA_UNIT}.d/50-system-test-slow-stop.conf"
    # after the server has exited, the unit stays deactivating (stop-post) for 15 s
    c.write_file(drop_in, "[Service]\nExecStopPost=/bin/sleep 15\n")
    try:
        c.run(["systemctl", "daemon-reload"])
        settle(c)
        before = scrape(c)
        restarts_before = restarts(before)
        failures_before = total(before, "ollama_watchdog_restart_failures_total")

        def nothing_started(m: dict[str, float]) -> None:
            assert restarts(m) == restarts_before
            assert total(m, "ollama_watchdog_restart_failures_total") == failures_before

        c.run(["systemctl", "stop", "--no-block", OLLAMA_UNIT])
        while_deactivating(c, "the unit to be deactivating", 30, nothing_started)
        assert is_active(c, OLLAMA_UNIT) == "inactive"
        wait_for("the watchdog to show maintenance", lambda: scrape(c).get(MAINTENANCE) == 1, 30)
        m = scrape(c)
        assert restarts(m) == restarts_before
        assert total(m, "ollama_watchdog_restart_failures_total") == failures_before

        # Contrast: the watchdog's own restart of a hung Ollama stops the unit the same slow
        # way (systemctl restart stops first). That is no operator's stop: never maintenance.
        c.run(["systemctl", "start", OLLAMA_UNIT], timeout=120)
        wait_for("the watchdog to see ollama healthy again", lambda: watchdog_healthy(c), 120)
        cursor = c.journal_cursor()
        set_fault(c, "hang")
        def no_maintenance(m: dict[str, float]) -> None:
            assert m.get(MAINTENANCE) != 1, {k: v for k, v in m.items() if "state" in k}

        while_deactivating(c, "the watchdog's restart to stop the unit", 120, no_maintenance)
        wait_for("ollama healthy after the restart", lambda: watchdog_healthy(c), 120)
        assert restarts(scrape(c)) == restarts_before + 1
        events = [json.loads(line) for line in
                  c.journal_messages(unit=WATCHDOG_UNIT, since_cursor=cursor).splitlines()
                  if line.startswith("{")]
        assert "restart_finished" in [e.get("event") for e in events]
        assert "maintenance" not in [e.get("state") for e in events]
    finally:
        c.run(["rm", "-f", drop_in])
        c.run(["systemctl", "daemon-reload"])
    settle(c)
