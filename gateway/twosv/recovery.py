"""Recovery codes: 10 characters of 5 bits each (50 bits), shown as `xxxxx-xxxxx`."""

from __future__ import annotations

import secrets

# Crockford-style alphabet: no i, l, o, u, so codes survive being read aloud or written down.
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
LENGTH = 10


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def display(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


def normalise(typed: str) -> str | None:
    """Case-insensitive, with or without the hyphen (and spaces); None if it cannot be one."""
    code = typed.strip().lower().replace("-", "").replace(" ", "")
    if len(code) != LENGTH or not code.isascii() or any(ch not in ALPHABET for ch in code):
        return None
    return code
