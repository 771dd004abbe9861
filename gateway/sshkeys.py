"""Parsing OpenSSH public key lines (plain or authorized_keys form)."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import asyncssh

from . import expiry
from .errors import Refusal
from .names import printable

SECURITY_KEY_ALGORITHMS = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")

# The key type, the base64 blob and an optional comment. Of the authorized_keys options
# before them (`no-pty,command="..."`) only `expiry-time` is kept (the key's end, as
# sshd reads it); the others are dropped: the gateway decides for itself what a key may do.
_KEY_RE = re.compile(r"((?:ssh|ecdsa|sk)-[A-Za-z0-9@._-]+)\s+([A-Za-z0-9+/]+={0,3})(?:\s+(.*))?")


def _split_options(text: str) -> tuple[str, str]:
    """(the authorized_keys options field, what follows it); the field may quote spaces."""
    if _KEY_RE.fullmatch(text):
        return "", text
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            return text[:i], text[i:].lstrip()
    return "", text


def _expiry_option(options: str) -> int | None:
    """The `expiry-time="..."` of an options field, in epoch seconds, or None."""
    found = re.search(r'(?:^|,)expiry-time="([^"]*)"', options, re.IGNORECASE)
    return expiry.parse_openssh(found.group(1)) if found else None


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    blob: str  # base64, as in the key line
    comment: str
    fingerprint: str  # SHA256:...
    expires_at: int | None = None  # from an `expiry-time` option

    @property
    def line(self) -> str:
        return f"{self.algorithm} {self.blob}"

    @property
    def is_security_key(self) -> bool:
        return self.algorithm in SECURITY_KEY_ALGORITHMS


def parse_line(line: str) -> PublicKey:
    text = line.strip().lstrip("\ufeff")
    options, rest = _split_options(text)
    match = _KEY_RE.fullmatch(rest)
    if not match:
        raise Refusal(f"Not an OpenSSH public key line: {printable(text, 60)!r}")
    algorithm, blob, comment = match.group(1), match.group(2), (match.group(3) or "").strip()
    try:
        key = asyncssh.import_public_key(f"{algorithm} {blob}")
    except (asyncssh.KeyImportError, ValueError):
        raise Refusal(
            f"Invalid {printable(algorithm, 40)} public key: {printable(text, 60)!r}"
        ) from None
    if key.get_algorithm() != algorithm:
        raise Refusal(f"Key type {printable(algorithm, 40)!r} does not match the key data")
    return PublicKey(
        key.get_algorithm(),
        blob,
        printable(comment, 100),
        key.get_fingerprint("sha256"),
        _expiry_option(options),
    )


def parse_text(text: str) -> list[PublicKey]:
    """Every key line in a file; blank lines and `#` comments are skipped."""
    if "PRIVATE KEY-----" in text:  # the usual first-hour slip; echo none of it
        raise Refusal(
            "This is a private key: give its public half, the .pub file "
            "(e.g. ~/.ssh/id_ed25519.pub), and keep the private key to yourself"
        )
    keys = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys.append(parse_line(line))
    if not keys:
        raise Refusal("No public key found")
    return keys


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key in wire format."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
