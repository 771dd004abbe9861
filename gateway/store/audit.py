"""The audit log: one row per decision and per change. Never holds a secret."""

from __future__ import annotations

from dataclasses import dataclass

from .database import Database
from .db import now


@dataclass(frozen=True)
class Entry:
    id: int
    at: int
    actor: str
    action: str
    target: str
    outcome: str
    detail: str


async def write(
    db: Database,
    actor: str,
    action: str,
    target: str = "",
    outcome: str = "ok",
    detail: str = "",
) -> None:
    await db.execute(
        "INSERT INTO audit (at, actor, action, target, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (now(), actor, action, target, outcome, detail),
    )


async def read(db: Database, account: str | None, limit: int) -> list[Entry]:
    args: tuple[str | int, ...]
    if account is None:
        query, args = "SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)
    else:
        # What the account did, and what was done to it.
        query = "SELECT * FROM audit WHERE actor = ? OR target = ? ORDER BY id DESC LIMIT ?"
        args = (account, account, limit)
    rows = await db.fetch_all(query, args)
    return [Entry(*tuple(row)) for row in reversed(rows)]
