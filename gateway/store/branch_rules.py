"""Branch rules: a repository's own (repo_id set) and its workspace's defaults (repo_id
NULL), which every repository of the workspace inherits."""

from __future__ import annotations

from ..decision import RefRule
from .database import Database, Row
from .db import now

_FLAGS = ("no_force", "no_delete", "no_create", "require_2sv_session", "require_signed", "own_keys")


def _row(row: Row) -> RefRule:
    return RefRule(
        row["pattern"],
        tuple(row["push"].split()),
        no_force=bool(row["no_force"]),
        no_delete=bool(row["no_delete"]),
        no_create=bool(row["no_create"]),
        require_2sv_session=bool(row["require_2sv_session"]),
        require_signed=bool(row["require_signed"]),
        own_keys=bool(row["own_keys"]),
        inherited=row["repo_id"] is None,
    )


def _scope(repo_id: int | None) -> tuple[str, tuple[int, ...]]:
    if repo_id is None:
        return "repo_id IS NULL", ()
    return "repo_id = ?", (repo_id,)


async def find(
    db: Database, workspace_id: int, repo_id: int | None, pattern: str
) -> RefRule | None:
    where, args = _scope(repo_id)
    row = await db.fetch_one(
        f"SELECT * FROM branch_rules WHERE workspace_id = ? AND {where} AND pattern = ?",
        (workspace_id, *args, pattern),
    )
    return _row(row) if row else None


async def put(db: Database, workspace_id: int, repo_id: int | None, rule: RefRule) -> None:
    """Add the rule, or replace the one with the same pattern in the same scope."""
    await remove(db, workspace_id, repo_id, rule.pattern)
    await db.execute(
        "INSERT INTO branch_rules (workspace_id, repo_id, pattern, push, "
        + ", ".join(_FLAGS)
        + ", created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            workspace_id,
            repo_id,
            rule.pattern,
            " ".join(rule.push),
            *(int(getattr(rule, flag)) for flag in _FLAGS),
            now(),
        ),
    )


async def remove(db: Database, workspace_id: int, repo_id: int | None, pattern: str) -> bool:
    where, args = _scope(repo_id)
    result = await db.execute(
        f"DELETE FROM branch_rules WHERE workspace_id = ? AND {where} AND pattern = ?",
        (workspace_id, *args, pattern),
    )
    return result.rowcount > 0


async def listed(db: Database, workspace_id: int, repo_id: int | None) -> list[RefRule]:
    """The rules of one scope only, by pattern."""
    where, args = _scope(repo_id)
    return [
        _row(row)
        for row in await db.fetch_all(
            f"SELECT * FROM branch_rules WHERE workspace_id = ? AND {where} ORDER BY pattern",
            (workspace_id, *args),
        )
    ]


async def applying(db: Database, workspace_id: int, repo_id: int) -> list[RefRule]:
    """Every rule a push to the repository answers to: the workspace's defaults, then
    the repository's own."""
    return [
        _row(row)
        for row in await db.fetch_all(
            "SELECT * FROM branch_rules WHERE workspace_id = ? AND (repo_id IS NULL OR repo_id = ?)"
            " ORDER BY repo_id IS NOT NULL, pattern",
            (workspace_id, repo_id),
        )
    ]
