"""Repositories: the record and the bare repository on disk, created and removed
together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import names
from ..errors import Refusal
from ..git import layout
from ..store import audit, branch_rules, repos, workspaces
from ..store.database import Database
from .branch_rules import default_branch_rule


@dataclass(frozen=True)
class RemovedRepo:
    full_name: str
    moved_to: Path | None  # where its data went (the trash directory), if it had any


async def get(db: Database, repo: str) -> repos.Repo:
    """The repository WORKSPACE/NAME, or a refusal saying where to see them."""
    path = names.repo_path(repo)
    found = await repos.find(db, path.workspace, path.name)
    if found is None:
        raise Refusal(f"No such repository: {path} ('gateway repo list' shows them)")
    return found


async def list_all(db: Database, workspace: str | None = None) -> list[repos.Repo]:
    """Every repository, or those of one workspace (which must exist)."""
    if workspace is not None:
        workspace = (await workspaces.get(db, names.workspace_name(workspace))).name
    return await repos.list_all(db, workspace)


async def create(
    db: Database,
    repos_dir: Path,
    repo: str,
    public: bool,
    default_branch: str,
    *,
    actor: str,
) -> names.RepoPath:
    """A new repository: its record and its bare repository on disk, or neither."""
    path = names.repo_path(repo)
    branch = names.branch_name(default_branch)
    workspace = await workspaces.get(db, path.workspace)
    existing = await repos.find(db, workspace.name, path.name)
    if existing is not None:  # names match case-insensitively: say the stored spelling
        raise Refusal(f"Repository already exists: {existing.full_name}")
    # The record and the directory must appear together: insert, create on disk, and
    # commit only once the repository exists.
    await repos.add(db, workspace.id, path.name, public, branch, workspace.name)
    added = await repos.find(db, workspace.name, path.name)
    assert added is not None
    # What the shipped hook did: the default branch is neither deleted nor rewritten,
    # until an admin removes the rule (`branch-rule remove WORKSPACE/NAME BRANCH`).
    await branch_rules.put(db, workspace.id, added.id, default_branch_rule(branch))
    try:
        layout.create(repos_dir, workspace.name, path.name, branch)
    except BaseException:
        await db.rollback()
        raise
    await audit.write(db, actor, "repo.add", str(path), detail="public" if public else "private")
    await db.commit()
    return path


async def remove(
    db: Database, repos_dir: Path, trash_dir: Path, repo: str, *, actor: str
) -> RemovedRepo:
    """Forget a repository and move its data aside (never deleted here)."""
    found = await get(db, repo)
    await repos.remove(db, found.id)
    moved = layout.move_aside(repos_dir, trash_dir, found.workspace, found.name)
    await audit.write(db, actor, "repo.remove", found.full_name, detail=str(moved or ""))
    await db.commit()
    return RemovedRepo(found.full_name, moved)
