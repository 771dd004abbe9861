"""Dates of a key's lifecycle: `key add --expires DATE`, the `expiry-time` option of an
authorized_keys line (OpenSSH's own syntax, so a keydir file means the same to sshd), the
`--unused-since 90d` age, and how a moment is shown."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from .errors import Refusal, UsageError
from .names import printable

_AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_OPENSSH_TIME = re.compile(r"(\d{8})(\d{4}(\d{2})?)?(Z?)")


def parse_date(text: str, now: float) -> int:
    """`--expires`: an ISO date (the key stops at its start, 00:00 UTC) or datetime (UTC
    unless it names its zone); a moment in the past is refused, since it could only
    add a key that never works."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"--expires {printable(text, 40)!r} is not a date: give YYYY-MM-DD or "
            "YYYY-MM-DDTHH:MM[:SS][+HH:MM]"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    at = int(moment.timestamp())
    if at <= now:
        raise UsageError(f"--expires {shown_time(at)} is in the past")
    return at


def parse_openssh(value: str) -> int:
    """OpenSSH's `expiry-time="YYYYMMDD[HHMM[SS]][Z]"`: local time unless it ends in Z,
    as sshd reads it."""
    match = _OPENSSH_TIME.fullmatch(value)
    if not match:
        raise Refusal(
            f"expiry-time={printable(value, 40)!r} is not YYYYMMDD[HHMM[SS]][Z] (as in sshd)"
        )
    digits = match.group(1) + (match.group(2) or "0000")
    digits += "" if match.group(3) else "00"
    try:
        parsed = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise Refusal(f"expiry-time={printable(value, 40)!r} is not a real date") from None
    if match.group(4):
        return int(datetime(*parsed[:6], tzinfo=UTC).timestamp())
    return int(time.mktime(parsed))


def parse_age(text: str) -> int:
    """`90d`, `12h`, `2w`, `30m`: a length of time in seconds."""
    match = re.fullmatch(r"(\d{1,6})([mhdw])", text.strip())
    if not match:
        raise UsageError(
            f"{printable(text, 40)!r} is not an age: give a number and m, h, d or w (90d)"
        )
    return int(match.group(1)) * _AGE_UNITS[match.group(2)]


def shown_time(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def shown_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))
