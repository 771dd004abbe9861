"""The one place that decides whether a repository operation may go ahead.

A pure function over plain data: the caller gathers the facts (who, which repository,
which role), `decide` answers. No command checks permissions on its own. The workspace
2SV policy (SPEC §6) will add its facts and rules here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Identity:
    account: str
    account_id: int
    key_fingerprint: str
    key_title: str
    key_kind: str = "auth"  # "security-key": the login itself was a second factor


@dataclass(frozen=True)
class RepoFacts:
    """What is known of the repository the user asked for."""

    asked_as: str  # WORKSPACE/NAME as the user typed it (normalised), for messages
    exists: bool
    full_name: str = ""  # canonical WORKSPACE/NAME when it exists
    public: bool = False
    role: str | None = None  # the identity's role in the repository's workspace


@dataclass(frozen=True)
class Allow:
    pass


@dataclass(frozen=True)
class Deny:
    message: str
    reason: str  # short, for the audit log


WRITE_ROLES = ("write", "admin")


def decide(identity: Identity, repo: RepoFacts, action: Action, now: float) -> Allow | Deny:
    can_read = repo.exists and (repo.public or repo.role is not None)
    if not can_read:
        # Missing and unreadable look the same, so names of private repositories never leak.
        return Deny(f"Repository not found: {repo.asked_as}", "not found or not readable")
    if action is Action.WRITE and repo.role not in WRITE_ROLES:
        return Deny(f"Permission to {repo.full_name} denied to {identity.account}.", "no write role")
    return Allow()
