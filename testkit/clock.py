"""A clock a test sets by hand, for code that takes `clock=` (2SV, limits)."""

from __future__ import annotations


class Clock:
    """Returns `now` when called; a test moves time on with `clock.now += seconds`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
