"""Access keys: an SSH key bound to one repository, with no account (CI, deploys)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from ..names import title as checked_title
from ..sshkeys import PublicKey
from . import keys
from .database import Database, Row
from .db import now


@dataclass(frozen=True)
class AccessKey:
    id: int
    repo_id: int
    repository: str  # WORKSPACE/NAME
    fingerprint: str
    algorithm: str
    title: str
    write: bool


_SELECT = """
    SELECT k.*, w.name || '/' || r.name AS repository FROM access_keys k
    JOIN repos r ON r.id = k.repo_id JOIN workspaces w ON w.id = r.workspace_id
"""


def _row(row: Row) -> AccessKey:
    return AccessKey(
        row["id"],
        row["repo_id"],
        row["repository"],
        row["fingerprint"],
        row["algorithm"],
        row["title"],
        bool(row["write"]),
    )


async def add(db: Database, repo_id: int, key: PublicKey, title: str, write: bool) -> None:
    title = checked_title(title, "access key title")
    # One fingerprint, one owner: never both an account key and an access key.
    # Only the operator adds access keys, so the refusal may say who holds the key.
    where = await keys.where_used(db, key.fingerprint)
    if where is not None:
        raise Refusal(f"Key {key.fingerprint} is already in use: {where}")
    await db.execute(
        "INSERT INTO access_keys (repo_id, fingerprint, algorithm, public_key, title, write,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (repo_id, key.fingerprint, key.algorithm, key.line, title, int(write), now()),
    )


async def find(db: Database, fingerprint: str) -> AccessKey | None:
    row = await db.fetch_one(_SELECT + " WHERE k.fingerprint = ?", (fingerprint,))
    return _row(row) if row else None


async def list_all(db: Database) -> list[AccessKey]:
    rows = await db.fetch_all(_SELECT + " ORDER BY repository, k.id")
    return [_row(row) for row in rows]


async def remove(db: Database, fingerprint: str) -> AccessKey:
    found = await find(db, fingerprint)
    if found is None:
        raise Refusal(f"No such access key: {fingerprint}")
    await db.execute("DELETE FROM access_keys WHERE id = ?", (found.id,))
    return found
