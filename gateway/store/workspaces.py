"""Workspaces and their members."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from ..kinds import Requirement
from .database import Database, IntegrityError, Row
from .db import now


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


def _row(row: Row) -> Workspace:
    return Workspace(row["id"], row["name"], row["require_2sv"], row["session_window"])


async def add(db: Database, name: str) -> Workspace:
    try:
        workspace_id = await db.insert(
            "INSERT INTO workspaces (name, created_at) VALUES (?, ?)", (name, now())
        )
    except IntegrityError:
        raise Refusal(f"Workspace already exists: {name}") from None
    return Workspace(workspace_id, name, Requirement.OFF, 15)


async def find(db: Database, name: str) -> Workspace | None:
    row = await db.fetch_one("SELECT * FROM workspaces WHERE name = ?", (name,))
    return _row(row) if row else None


async def get(db: Database, name: str) -> Workspace:
    workspace = await find(db, name)
    if workspace is None:
        raise Refusal(f"No such workspace: {name} (create it with: gateway workspace add {name})")
    return workspace


async def list_all(db: Database) -> list[Workspace]:
    rows = await db.fetch_all("SELECT * FROM workspaces ORDER BY name")
    return [_row(row) for row in rows]


async def members(db: Database, workspace_id: int) -> list[Member]:
    rows = await db.fetch_all(
        "SELECT a.name, m.role FROM members m JOIN accounts a ON a.id = m.account_id"
        " WHERE m.workspace_id = ? ORDER BY a.name",
        (workspace_id,),
    )
    return [Member(row[0], row[1]) for row in rows]


async def set_member(db: Database, workspace_id: int, account_id: int, role: str) -> None:
    await db.execute(
        "INSERT INTO members (workspace_id, account_id, role) VALUES (?, ?, ?)"
        " ON CONFLICT (workspace_id, account_id) DO UPDATE SET role = excluded.role",
        (workspace_id, account_id, role),
    )


async def remove_member(db: Database, workspace_id: int, account_id: int) -> bool:
    result = await db.execute(
        "DELETE FROM members WHERE workspace_id = ? AND account_id = ?", (workspace_id, account_id)
    )
    return result.rowcount > 0


async def role_of(db: Database, workspace_id: int, account_id: int) -> str | None:
    row = await db.fetch_one(
        "SELECT role FROM members WHERE workspace_id = ? AND account_id = ?",
        (workspace_id, account_id),
    )
    return row[0] if row else None


async def set_policy(db: Database, workspace_id: int, policy: str, window: int) -> None:
    await db.execute(
        "UPDATE workspaces SET require_2sv = ?, session_window = ? WHERE id = ?",
        (policy, window, workspace_id),
    )


async def memberships(db: Database, account_id: int) -> list[tuple[Workspace, str]]:
    rows = await db.fetch_all(
        "SELECT w.*, m.role FROM members m JOIN workspaces w ON w.id = m.workspace_id"
        " WHERE m.account_id = ? ORDER BY w.name",
        (account_id,),
    )
    return [(_row(row), row["role"]) for row in rows]
