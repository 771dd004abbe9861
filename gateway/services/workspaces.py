"""Workspaces: create, list and show them, their members, their repositories' access
keys, and the two-step verification they require of their members."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import events, names
from ..errors import Refusal
from ..kinds import AccessMode, Requirement, Role
from ..names import printable
from ..sshkeys import PublicKey
from ..store import access_keys, accounts, audit, repos, workspaces
from ..store.database import Database
from ..twosv.service import TwoSV

REQUIREMENTS = tuple(str(word) for word in Requirement)  # the words `require-2sv` takes
MIN_WINDOW, MAX_WINDOW = 1, 7 * 24 * 60  # a session window, in minutes


@dataclass(frozen=True)
class WorkspaceView:
    """What `workspace show` tells the operator of one workspace."""

    workspace: workspaces.Workspace
    members: list[workspaces.Member]
    lacking_2sv: set[str]  # members whose account has no two-step verification
    repositories: list[repos.Repo]


@dataclass(frozen=True)
class Membership:
    workspace: str
    account: str
    role: Role | None  # None once the membership ended


@dataclass(frozen=True)
class RequirementChange:
    workspace: str
    before: str
    after: Requirement
    window: int  # minutes


@dataclass(frozen=True)
class AddedAccessKey:
    repository: str
    fingerprint: str
    title: str
    mode: AccessMode


async def get(db: Database, name: str) -> workspaces.Workspace:
    """The workspace of that name, or a refusal naming how to create it."""
    return await workspaces.get(db, names.workspace_name(name))


async def list_all(db: Database) -> list[workspaces.Workspace]:
    return await workspaces.list_all(db)


async def view(db: Database, name: str) -> WorkspaceView:
    workspace = await get(db, name)
    return WorkspaceView(
        workspace,
        await workspaces.members(db, workspace.id),
        set(await members_without_2sv(db, workspace.id)),
        await repos.list_all(db, workspace.name),
    )


async def create(db: Database, name: str, require_2sv: bool, *, actor: str) -> workspaces.Workspace:
    name = names.workspace_name(name)
    workspace = await workspaces.add(db, name)
    await audit.write(db, actor, "workspace.add", name)
    if require_2sv:
        await workspaces.set_policy(db, workspace.id, Requirement.ON, workspace.session_window)
        await audit.write(
            db,
            actor,
            "workspace.require_2sv",
            name,
            detail=f"{Requirement.OFF} -> {Requirement.ON}",
        )
    await db.commit()
    return workspace


# --- members --------------------------------------------------------------------------


async def add_member(
    db: Database, workspace_name: str, account_name: str, role: str, *, actor: str
) -> Membership:
    """Make an account a member, or change its role."""
    workspace = await get(db, workspace_name)
    account = await accounts.get(db, names.account_name(account_name))
    checked = names.role(role)
    await workspaces.set_member(db, workspace.id, account.id, checked)
    await audit.write(db, actor, "member.add", account.name, detail=f"{workspace.name} {checked}")
    await db.commit()
    return Membership(workspace.name, account.name, checked)


async def remove_member(
    db: Database, workspace_name: str, account_name: str, *, actor: str
) -> Membership:
    """End an account's membership; returns it, without a role."""
    workspace = await get(db, workspace_name)
    account = await accounts.get(db, names.account_name(account_name))
    if not await workspaces.remove_member(db, workspace.id, account.id):
        raise Refusal(f"{account.name} is not a member of {workspace.name}")
    await audit.write(db, actor, "member.remove", account.name, detail=workspace.name)
    await db.commit()
    return Membership(workspace.name, account.name, None)


async def members_without_2sv(db: Database, workspace_id: int) -> list[str]:
    lacking = []
    for member in await workspaces.members(db, workspace_id):
        account = await accounts.get(db, member.account)
        if not (await TwoSV(db, None, account.id, account.name).state()).enabled:
            lacking.append(account.name)
    return lacking


# --- the two-step verification a workspace requires -----------------------------------


def check_requirement(word: str, window: int | None) -> Requirement:
    """A requirement word and window as typed, checked (a refusal says what to use)."""
    if word not in REQUIREMENTS:
        raise Refusal(f"Invalid policy: {printable(word)!r} (use on, off or session)")
    if window is not None and not MIN_WINDOW <= window <= MAX_WINDOW:
        raise Refusal(f"Invalid window: {window} minutes (use 1 to {MAX_WINDOW}, i.e. 7 days)")
    return Requirement(word)


async def set_requirement(
    db: Database,
    workspace: workspaces.Workspace,
    word: str,
    window: int | None,
    *,
    actor: str,
) -> RequirementChange:
    """Change a workspace's requirement (and window, if given) and audit who did it.
    Who may do so is the caller's check: the operator, or an admin with a fresh factor."""
    requirement = check_requirement(word, window)
    new_window = window if window is not None else workspace.session_window
    await workspaces.set_policy(db, workspace.id, requirement, new_window)
    await audit.write(
        db,
        actor,
        "workspace.require_2sv",
        workspace.name,
        detail=f"{workspace.require_2sv} -> {requirement}, window {new_window} min",
    )
    await db.commit()
    return RequirementChange(workspace.name, workspace.require_2sv, requirement, new_window)


# --- access keys ----------------------------------------------------------------------


async def add_access_keys(
    db: Database,
    repo: repos.Repo,
    parsed: list[PublicKey],
    title: str | None,
    write: bool,
    *,
    actor: str,
    hooks_dir: Path,
) -> list[AddedAccessKey]:
    """Bind keys to one repository (read-only unless `write`), in one transaction."""
    mode = AccessMode.of(write)
    added = []
    for key in parsed:
        key_title = title or key.comment or f"access-{key.fingerprint[7:15]}"
        await access_keys.add(db, repo.id, key, key_title, write)
        await audit.write(
            db, actor, "access_key.add", repo.full_name, detail=f"{key.fingerprint} {mode}"
        )
        added.append(AddedAccessKey(repo.full_name, key.fingerprint, key_title, mode))
    await db.commit()
    for item in added:
        await events.notify(
            hooks_dir, f"access-key:{repo.full_name}", "access_key.add", detail=item.fingerprint
        )
    return added


async def list_access_keys(db: Database) -> list[access_keys.AccessKey]:
    return await access_keys.list_all(db)


async def remove_access_key(db: Database, fingerprint: str, *, actor: str) -> access_keys.AccessKey:
    removed = await access_keys.remove(db, fingerprint)
    await audit.write(
        db, actor, "access_key.remove", removed.repository, detail=removed.fingerprint
    )
    await db.commit()
    return removed
