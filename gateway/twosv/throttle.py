"""Back-off after failed codes (SPEC §5): after 5 consecutive failures, refusal for a
back-off that starts at `base` seconds and doubles up to an hour; a success resets it."""

from __future__ import annotations

FREE_FAILURES = 5
MAX_BACKOFF = 3600


def backoff_after(failures: int, base: float) -> float:
    """Seconds to refuse attempts after the `failures`-th consecutive failure."""
    if failures < FREE_FAILURES:
        return 0.0
    return float(min(base * 2 ** (failures - FREE_FAILURES), MAX_BACKOFF))
