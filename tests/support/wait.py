"""The one poll-until helper of the tests: wait generously, fail only if it never happens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | bool | None],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.05,
) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    Shared, noisy machines make timings loose: the timeout is generous and only a condition that
    never comes true fails the test (``AssertionError`` naming ``what``).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what}")
        time.sleep(interval)
