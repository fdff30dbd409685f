"""Polling until something is true, in one place (the waits of the core and the sandbox).

Waits that would hold an Airflow worker slot for long belong in sensors (reschedule or deferrable
mode); this helper is for the short waits inside one step: a port opening, a standby streaming.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(check: Callable[[], T], *, timeout: float, interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy or `timeout` seconds have passed; returns its last
    result (falsy after a timeout), so the caller says what a timeout means."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
