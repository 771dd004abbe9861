"""Workspaces and their members."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from ..errors import Refusal
from ..kinds import Requirement
from .db import inserted_id, now


@dataclass(frozen=True)
class Workspace:
    id: int
    name: str
    require_2sv: str  # off | on | session
    session_window: int  # minutes


@dataclass(frozen=True)
class Member:
    account: str
    role: str


def _row(row: aiosqlite.Row) -> Workspace:
    return Workspace(row["id"], row["name"], row["require_2sv"], row["session_window"])


async def add(db: aiosqlite.Connection, name: str) -> Workspace:
    try:
        cursor = await db.execute(
            "INSERT INTO workspaces (name, created_at) VALUES (?, ?)", (name, now())
        )
    except aiosqlite.IntegrityError:
        raise Refusal(f"Workspace already exists: {name}") from None
    return Workspace(inserted_id(cursor), name, Requirement.OFF, 15)


async def find(db: aiosqlite.Connection, name: str) -> Workspace | None:
    async with db.execute("SELECT * FROM workspaces WHERE name = ?", (name,)) as cursor:
        row = await cursor.fetchone()
    return _row(row) if row else None


async def get(db: aiosqlite.Connection, name: str) -> Workspace:
    workspace = await find(db, name)
    if workspace is None:
        raise Refusal(f"No such workspace: {name} (create it with: gateway workspace add {name})")
    return workspace


async def list_all(db: aiosqlite.Connection) -> list[Workspace]:
    async with db.execute("SELECT * FROM workspaces ORDER BY name") as cursor:
        return [_row(row) for row in await cursor.fetchall()]


async def members(db: aiosqlite.Connection, workspace_id: int) -> list[Member]:
    async with db.execute(
        "SELECT a.name, m.role FROM members m JOIN accounts a ON a.id = m.account_id"
        " WHERE m.workspace_id = ? ORDER BY a.name",
        (workspace_id,),
    ) as cursor:
        return [Member(row[0], row[1]) for row in await cursor.fetchall()]


async def set_member(
    db: aiosqlite.Connection, workspace_id: int, account_id: int, role: str
) -> None:
    await db.execute(
        "INSERT INTO members (workspace_id, account_id, role) VALUES (?, ?, ?)"
        " ON CONFLICT (workspace_id, account_id) DO UPDATE SET role = excluded.role",
        (workspace_id, account_id, role),
    )


async def remove_member(db: aiosqlite.Connection, workspace_id: int, account_id: int) -> bool:
    cursor = await db.execute(
        "DELETE FROM members WHERE workspace_id = ? AND account_id = ?", (workspace_id, account_id)
    )
    return cursor.rowcount > 0


async def role_of(db: aiosqlite.Connection, workspace_id: int, account_id: int) -> str | None:
    async with db.execute(
        "SELECT role FROM members WHERE workspace_id = ? AND account_id = ?",
        (workspace_id, account_id),
    ) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None


async def set_policy(db: aiosqlite.Connection, workspace_id: int, policy: str, window: int) -> None:
    await db.execute(
        "UPDATE workspaces SET require_2sv = ?, session_window = ? WHERE id = ?",
        (policy, window, workspace_id),
    )


async def memberships(db: aiosqlite.Connection, account_id: int) -> list[tuple[Workspace, str]]:
    async with db.execute(
        "SELECT w.*, m.role FROM members m JOIN workspaces w ON w.id = m.workspace_id"
        " WHERE m.account_id = ? ORDER BY w.name",
        (account_id,),
    ) as cursor:
        return [(_row(row), row["role"]) for row in await cursor.fetchall()]
