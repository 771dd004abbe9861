"""Branch rules: add (or replace), list and remove them for a repository (WORKSPACE/NAME)
or as a workspace's defaults (WORKSPACE), and `--dry-run`: which recent pushes a rule
would have refused, read back from the audit log's facts.

Who may manage them is the caller's check: the operator, or a workspace admin (with a
fresh second factor for a change, commands/branch_rule.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .. import names, refpatterns
from ..decision import Deny, Pusher, RefRule, UpdateKind, decide_ref
from ..errors import Refusal
from ..kinds import Role
from ..store import accounts, audit, branch_rules, repos, workspaces
from ..store.database import Database

MAX_PUSHERS = 20
FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
DRY_RUN_PUSHES = 200  # how far back --dry-run reads, in pushes


@dataclass(frozen=True)
class Scope:
    """Where rules live: one repository, or (repo None) a workspace's defaults."""

    workspace: workspaces.Workspace
    repo: repos.Repo | None

    @property
    def repo_id(self) -> int | None:
        return None if self.repo is None else self.repo.id

    @property
    def label(self) -> str:
        return self.repo.full_name if self.repo else self.workspace.name


@dataclass(frozen=True)
class RuleChange:
    scope: str
    rule: RefRule
    replaced: RefRule | None


@dataclass(frozen=True)
class WouldRefuse:
    at: int
    account: str
    repository: str
    ref: str
    kind: str
    reason: str


def default_branch_rule(branch: str) -> RefRule:
    """The rule every new repository starts with (the old shipped hook's protection)."""
    return RefRule("refs/heads/" + branch, no_force=True, no_delete=True)


async def scope(db: Database, target: str) -> Scope:
    """WORKSPACE/NAME, or WORKSPACE for its defaults; a refusal if it does not exist."""
    if "/" in target:
        path = names.repo_path(target)
        repo = await repos.find(db, path.workspace, path.name)
        if repo is None:
            raise Refusal(f"No such repository: {path}")
        return Scope(await workspaces.get(db, repo.workspace), repo)
    return Scope(await workspaces.get(db, names.workspace_name(target)), None)


async def make_rule(
    db: Database,
    pattern: str,
    push: list[str],
    *,
    no_force: bool = False,
    no_delete: bool = False,
    no_create: bool = False,
    require_2sv_session: bool = False,
    require_signed: bool = False,
    own_keys: bool = False,
) -> RefRule:
    """A rule from the words typed, every one checked (accounts must exist)."""
    full = refpatterns.parse(pattern)
    if own_keys and not require_signed:
        raise Refusal("--own-keys goes with --require-signed")
    who = await _pushers(db, push)
    rule = RefRule(
        full,
        who,
        no_force=no_force,
        no_delete=no_delete,
        no_create=no_create,
        require_2sv_session=require_2sv_session,
        require_signed=require_signed,
        own_keys=own_keys,
    )
    if not rule.options():
        raise Refusal(
            "A rule must restrict something: give --push WHO, --no-force, --no-delete, "
            "--no-create, --require-2sv-session or --require-signed"
        )
    return rule


async def _pushers(db: Database, words: list[str]) -> tuple[str, ...]:
    """`--push` entries: write or admin (a role and those above it), key:SHA256:...,
    an account (account:NAME for an account named like a role)."""
    if len(words) > MAX_PUSHERS:
        raise Refusal(f"At most {MAX_PUSHERS} --push entries")
    found: list[str] = []
    for word in words:
        if word == Role.READ:
            raise Refusal("--push read: members with the read role cannot push at all")
        if word in (Role.WRITE, Role.ADMIN):
            entry = word
        elif word.startswith("key:"):
            if not FINGERPRINT_RE.fullmatch(word[4:]):
                raise Refusal(
                    f"Invalid key in --push: {names.printable(word, 60)!r} (key:SHA256:...)"
                )
            entry = word
        else:
            name = names.account_name(word.removeprefix("account:"))
            if await accounts.find(db, name) is None:
                raise Refusal(f"No such account in --push: {name}")
            entry = f"account:{name}" if name in names.ROLES else name
        if entry not in found:
            found.append(entry)
    return tuple(found)


async def add(db: Database, where: Scope, rule: RefRule, *, actor: str) -> RuleChange:
    """Add the rule, or replace the scope's rule for the same pattern, audited."""
    before = await branch_rules.find(db, where.workspace.id, where.repo_id, rule.pattern)
    await branch_rules.put(db, where.workspace.id, where.repo_id, rule)
    detail = f"{rule.pattern} {' '.join(rule.options())}"
    if before is not None:
        detail += f" (was: {' '.join(before.options())})"
    await audit.write(db, actor, "branch_rule.add", where.label, detail=detail)
    await db.commit()
    return RuleChange(where.label, rule, before)


async def remove(db: Database, where: Scope, pattern: str, *, actor: str) -> RuleChange:
    full = refpatterns.parse(pattern)
    before = await branch_rules.find(db, where.workspace.id, where.repo_id, full)
    if before is None:
        raise Refusal(f"No rule for {full} on {where.label} ('branch-rule list' shows them)")
    await branch_rules.remove(db, where.workspace.id, where.repo_id, full)
    await audit.write(
        db,
        actor,
        "branch_rule.remove",
        where.label,
        detail=f"{full} {' '.join(before.options())}",
    )
    await db.commit()
    return RuleChange(where.label, before, before)


async def listed(db: Database, where: Scope) -> list[RefRule]:
    """A repository's rules with the workspace's defaults it inherits, or a workspace's
    defaults."""
    if where.repo is None:
        return await branch_rules.listed(db, where.workspace.id, None)
    return await branch_rules.applying(db, where.workspace.id, where.repo.id)


async def dry_run(db: Database, where: Scope, rule: RefRule) -> list[WouldRefuse]:
    """The ref updates of recent pushes (to the repository, or to any of the workspace's)
    that `rule` alone would have refused, oldest first. Signatures are not in the log:
    `--require-signed` is not replayed (the caller says so)."""
    if where.repo is not None:
        targets = [where.repo.full_name]
    else:
        targets = [r.full_name for r in await repos.list_all(db, where.workspace.name)]
    found = []
    for entry in reversed(await audit.recent(db, "repo.push", targets, DRY_RUN_PUSHES)):
        pusher, updates = _facts(entry.facts)
        for ref, kind in updates:
            verdict = decide_ref(pusher, (rule,), ref, kind, float(entry.at))
            if isinstance(verdict, Deny):
                reason = verdict.message.split("\n")[0]
                found.append(WouldRefuse(entry.at, entry.actor, entry.target, ref, kind, reason))
    return found


def _facts(text: str) -> tuple[Pusher, list[tuple[str, UpdateKind]]]:
    """A repo.push row's facts; rows written before they were recorded have none."""
    try:
        facts = json.loads(text)
        pusher = Pusher(**facts["pusher"])
        pairs = [(str(ref), str(kind)) for ref, kind in facts["updates"]]
    except (ValueError, TypeError, KeyError):
        return Pusher(), []
    kinds = {str(k) for k in UpdateKind}  # "": a kind the push did not work out
    return pusher, [(ref, UpdateKind(kind)) for ref, kind in pairs if kind in kinds]
