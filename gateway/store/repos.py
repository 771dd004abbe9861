"""Repository records (the bare repositories themselves live under DATA/repos)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from .database import Database, IntegrityError, Row
from .db import now


@dataclass(frozen=True)
class Repo:
    id: int
    workspace_id: int
    workspace: str
    name: str  # as created; lookups ignore case
    public: bool
    default_branch: str
    require_2sv: str = "off"  # the workspace's policy
    session_window: int = 15

    @property
    def full_name(self) -> str:
        return f"{self.workspace}/{self.name}"


_SELECT = """
    SELECT r.*, w.name AS workspace, w.require_2sv, w.session_window
    FROM repos r JOIN workspaces w ON w.id = r.workspace_id
"""


def _row(row: Row) -> Repo:
    return Repo(
        row["id"],
        row["workspace_id"],
        row["workspace"],
        row["name"],
        bool(row["public"]),
        row["default_branch"],
        row["require_2sv"],
        row["session_window"],
    )


async def add(
    db: Database,
    workspace_id: int,
    name: str,
    public: bool,
    default_branch: str,
    workspace: str = "",
) -> None:
    try:
        await db.execute(
            "INSERT INTO repos (workspace_id, name, public, default_branch, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (workspace_id, name, int(public), default_branch, now()),
        )
    except IntegrityError:
        raise Refusal(
            f"Repository already exists: {workspace}/{name}"
            if workspace
            else f"Repository already exists: {name}"
        ) from None


async def find(db: Database, workspace: str, name: str) -> Repo | None:
    row = await db.fetch_one(_SELECT + " WHERE w.name = ? AND r.name = ?", (workspace, name))
    return _row(row) if row else None


async def find_by_id(db: Database, repo_id: int) -> Repo | None:
    row = await db.fetch_one(_SELECT + " WHERE r.id = ?", (repo_id,))
    return _row(row) if row else None


async def list_all(db: Database, workspace: str | None = None) -> list[Repo]:
    args: tuple[str, ...]
    if workspace is None:
        query, args = _SELECT + " ORDER BY w.name, r.name", ()
    else:
        query, args = _SELECT + " WHERE w.name = ? ORDER BY r.name", (workspace,)
    rows = await db.fetch_all(query, args)
    return [_row(row) for row in rows]


async def remove(db: Database, repo_id: int) -> None:
    await db.execute("DELETE FROM repos WHERE id = ?", (repo_id,))
