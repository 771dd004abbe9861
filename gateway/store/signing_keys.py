"""Signing keys: the SSH keys an account signs its commits and tags with.

They never log in; a push rule that asks for signed commits checks signatures against
them (gateway/git/signatures.py). One key signs for one account.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from ..names import printable
from ..names import title as checked_title
from ..sshkeys import PublicKey
from . import keys
from .database import Database, Row
from .db import now


@dataclass(frozen=True)
class SigningKey:
    id: int
    account_id: int
    account: str
    fingerprint: str
    algorithm: str
    public_key: str  # the OpenSSH line, without a comment
    title: str
    created_at: int


_SELECT = """
    SELECT s.*, a.name AS account FROM signing_keys s JOIN accounts a ON a.id = s.account_id
"""


def _row(row: Row) -> SigningKey:
    return SigningKey(
        row["id"],
        row["account_id"],
        row["account"],
        row["fingerprint"],
        row["algorithm"],
        row["public_key"],
        row["title"],
        row["created_at"],
    )


async def add(db: Database, account_id: int, key: PublicKey, title: str) -> None:
    """Refused, naming no other account, when the key signs for anyone already or logs
    in to another account (registering someone else's public key would claim their
    signatures), or when the account has a signing key of that title."""
    title = checked_title(title, "signing key title")
    if await find(db, key.fingerprint) is not None:
        raise Refusal(f"Signing key {key.fingerprint} is already registered")
    login = await keys.find(db, key.fingerprint)
    if login is not None and login.account_id != account_id:
        raise Refusal(f"Key {key.fingerprint} belongs to another account")
    if (
        await db.fetch_one(
            "SELECT 1 FROM signing_keys WHERE account_id = ? AND title = ?", (account_id, title)
        )
        is not None
    ):
        raise Refusal(f"A signing key titled {printable(title)!r} exists already")
    await db.execute(
        "INSERT INTO signing_keys (account_id, fingerprint, algorithm, public_key, title,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        (account_id, key.fingerprint, key.algorithm, key.line, title, now()),
    )


async def find(db: Database, fingerprint: str) -> SigningKey | None:
    row = await db.fetch_one(_SELECT + " WHERE s.fingerprint = ?", (fingerprint,))
    return _row(row) if row else None


async def find_own(db: Database, account_id: int, which: str) -> SigningKey | None:
    """One of the account's keys, by fingerprint or by title."""
    row = await db.fetch_one(
        _SELECT + " WHERE s.account_id = ? AND (s.fingerprint = ? OR s.title = ?)",
        (account_id, which, which),
    )
    return _row(row) if row else None


async def list_for(db: Database, account: str | None = None) -> list[SigningKey]:
    args: tuple[str, ...]
    if account is None:
        query, args = _SELECT + " ORDER BY a.name, s.id", ()
    else:
        query, args = _SELECT + " WHERE a.name = ? ORDER BY s.id", (account,)
    return [_row(row) for row in await db.fetch_all(query, args)]


async def for_push(db: Database) -> dict[str, str]:
    """What a push's signatures are checked against, for the worker's job: every
    registered signing key's fingerprint and its account. A disabled account's keys
    are left out: they vouch for nothing new."""
    rows = await db.fetch_all(
        "SELECT s.fingerprint, a.name FROM signing_keys s JOIN accounts a"
        " ON a.id = s.account_id WHERE a.disabled = 0 ORDER BY s.id"
    )
    return {row[0]: row[1] for row in rows}


async def remove(db: Database, key_id: int) -> None:
    await db.execute("DELETE FROM signing_keys WHERE id = ?", (key_id,))
