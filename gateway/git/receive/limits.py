"""What a push's pack may ask of the server: the limits, and their messages."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


class LimitExceeded(ValueError):
    """A pack asks for more than a limit allows; the message names the limit."""


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int = 0  # 0: no limit
    max_inflated_bytes: int = 0
    worker_memory_limit: int = 0  # not checked here: named when a pack runs out of memory

    def check_object(self, size: int, what: str = "object") -> None:
        if self.max_object_bytes and size > self.max_object_bytes:
            raise LimitExceeded(
                f"{what} of {sizes_text(size, self.max_object_bytes)} (max_object_bytes)"
            )

    def check_total(self, total: int) -> None:
        if self.max_inflated_bytes and total > self.max_inflated_bytes:
            raise LimitExceeded(
                f"inflating the pack's objects comes to more than "
                f"{size_text(self.max_inflated_bytes)} (max_push_inflated_bytes)"
            )


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else f"{value:.1f} {unit}"
            )
    return f"{n} bytes"


def sizes_text(size: int, limit: int) -> str:
    """ "N exceeds the limit of M", in bytes where rounding would make them look equal."""
    a, b = size_text(size), size_text(limit)
    if a == b or a.split()[0] == b.split()[0] + ".0":
        a, b = f"{size} bytes", f"{limit} bytes"
    return f"{a} exceeds the limit of {b}"
