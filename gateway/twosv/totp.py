"""TOTP per RFC 6238 (SHA-1, 6 digits, 30 s steps, one step of drift each way).

pyotp generates the codes; the gateway decides what it accepts: only six ASCII digits
(spaces removed; pyotp alone would let full-width digits through), compared in constant
time, and it reports which time step matched so that a step is never accepted twice.
"""

from __future__ import annotations

import hmac
import re
from urllib.parse import quote

import pyotp

DIGITS = 6
STEP_SECONDS = 30
DRIFT_STEPS = 1
_CODE_RE = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    """A 160-bit secret from the OS CSPRNG, base32 as authenticator apps expect it."""
    return pyotp.random_base32(length=32)


def normalise(typed: str) -> str | None:
    """Six ASCII digits with spaces removed, or None when it cannot be a code at all."""
    code = typed.replace(" ", "")
    return code if _CODE_RE.fullmatch(code) and code.isascii() else None


def time_step(now: float) -> int:
    return int(now // STEP_SECONDS)


def matching_step(
    secret: str, code: str, now: float, *, digits: int = DIGITS, drift: int = DRIFT_STEPS
) -> int | None:
    """The time step (HOTP counter) whose code equals `code`, within the drift window."""
    hotp = pyotp.HOTP(secret, digits=digits)
    current = time_step(now)
    found = None
    for step in range(current - drift, current + drift + 1):
        # Check every step so the time taken does not depend on which one matched.
        if hmac.compare_digest(hotp.at(step), code) and found is None:
            found = step
    return found


def hotp_matches(secret: str, code: str, counter: int, *, digits: int = DIGITS) -> bool:
    return hmac.compare_digest(pyotp.HOTP(secret, digits=digits).at(counter), code)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """Only what apps need: the label `issuer:account` (apps take the issuer from it) and
    the secret, last, where the QR code can carry it compactly (gateway/qr.py). Digits,
    period and algorithm are the defaults, so they are left out."""
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    return f"otpauth://totp/{label}?secret={secret}"
