"""SSH keys of accounts, looked up by SHA256 fingerprint through a unique index."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from ..kinds import KeyKind
from ..names import title as checked_title
from ..sshkeys import PublicKey
from .database import Database, Row
from .db import now

# Seconds between two writes of one key's last use.
LAST_USE_INTERVAL = 60


@dataclass(frozen=True)
class StoredKey:
    id: int
    account_id: int
    account: str
    account_disabled: bool
    fingerprint: str
    algorithm: str
    public_key: str
    title: str
    kind: str
    source: str
    created_at: int
    expires_at: int | None = None  # epoch seconds; from then on the key cannot log in
    last_used_at: int | None = None

    def expired(self, at: float) -> bool:
        return self.expires_at is not None and at >= self.expires_at


_SELECT = """
    SELECT k.*, a.name AS account, a.disabled AS account_disabled
    FROM ssh_keys k JOIN accounts a ON a.id = k.account_id
"""


def _row(row: Row) -> StoredKey:
    return StoredKey(
        row["id"],
        row["account_id"],
        row["account"],
        bool(row["account_disabled"]),
        row["fingerprint"],
        row["algorithm"],
        row["public_key"],
        row["title"],
        row["kind"],
        row["source"],
        row["created_at"],
        row["expires_at"],
        row["last_used_at"],
    )


async def where_used(db: Database, fingerprint: str) -> str | None:
    """Who holds a key already, for the operator ("account bob", "the access key of
    acme/widgets"); never shown over SSH, where it would name someone else's account."""
    existing = await find(db, fingerprint)
    if existing is not None:
        return f"it logs in to account {existing.account}"
    row = await db.fetch_one(
        "SELECT w.name || '/' || r.name FROM access_keys k JOIN repos r ON r.id = k.repo_id"
        " JOIN workspaces w ON w.id = r.workspace_id WHERE k.fingerprint = ?",
        (fingerprint,),
    )
    return f"it is the access key of repository {row[0]}" if row else None


async def add(
    db: Database,
    account_id: int,
    key: PublicKey,
    title: str,
    source: str = "cli",
    kind: str = KeyKind.LOGIN,
    say_where: bool = False,
    expires_at: int | None = None,
) -> None:
    title = checked_title(title)
    where = await where_used(db, key.fingerprint)
    if where is not None:
        raise Refusal(
            f"Key {key.fingerprint} is already in use" + (f": {where}" if say_where else "")
        )
    await db.execute(
        "INSERT INTO ssh_keys (account_id, fingerprint, algorithm, public_key, title, kind,"
        " source, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            account_id,
            key.fingerprint,
            key.algorithm,
            key.line,
            title,
            kind,
            source,
            now(),
            expires_at,
        ),
    )


async def find(db: Database, fingerprint: str) -> StoredKey | None:
    row = await db.fetch_one(_SELECT + " WHERE k.fingerprint = ?", (fingerprint,))
    return _row(row) if row else None


async def list_for(db: Database, account: str | None = None) -> list[StoredKey]:
    args: tuple[str, ...]
    if account is None:
        query, args = _SELECT + " ORDER BY a.name, k.id", ()
    else:
        query, args = _SELECT + " WHERE a.name = ? ORDER BY k.id", (account,)
    rows = await db.fetch_all(query, args)
    return [_row(row) for row in rows]


async def unused_since(db: Database, before: int) -> list[StoredKey]:
    """Keys not used since `before` (never used ones added before it too): stale keys."""
    rows = await db.fetch_all(
        _SELECT + " WHERE COALESCE(k.last_used_at, k.created_at) < ? ORDER BY a.name, k.id",
        (before,),
    )
    return [_row(row) for row in rows]


async def set_expiry(db: Database, fingerprint: str, expires_at: int | None) -> None:
    await db.execute(
        "UPDATE ssh_keys SET expires_at = ? WHERE fingerprint = ?", (expires_at, fingerprint)
    )


async def mark_used(db: Database, fingerprint: str, at: int) -> bool:
    """Record a login; a no-op (False) if one was recorded in the last minute, which keeps
    processes that cannot share memory (sshd's forced commands) to one write a minute."""
    result = await db.execute(
        "UPDATE ssh_keys SET last_used_at = ? WHERE fingerprint = ?"
        " AND (last_used_at IS NULL OR last_used_at <= ?)",
        (at, fingerprint, at - LAST_USE_INTERVAL),
    )
    return result.rowcount == 1


async def remove(db: Database, fingerprint: str) -> StoredKey:
    key = await find(db, fingerprint)
    if key is None:
        raise Refusal(f"No such key: {fingerprint}")
    await db.execute("DELETE FROM ssh_keys WHERE id = ?", (key.id,))
    await db.execute("DELETE FROM twosv_sessions WHERE key_fingerprint = ?", (fingerprint,))
    return key


async def set_kind(db: Database, fingerprint: str, kind: str) -> None:
    await db.execute("UPDATE ssh_keys SET kind = ? WHERE fingerprint = ?", (kind, fingerprint))


async def demote_security_keys(db: Database, account_id: int) -> None:
    """Security keys stop being a 2SV method but still log in, as plain keys."""
    await db.execute(
        "UPDATE ssh_keys SET kind = 'auth' WHERE account_id = ? AND kind = 'security-key'",
        (account_id,),
    )
