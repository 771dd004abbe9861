"""Polling for a condition that another process makes true."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 10, interval: float = 0.05) -> bool:
    """True as soon as PREDICATE is; False if it is still false after TIMEOUT seconds
    (it is asked once more at the end, so a slow last poll still counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
