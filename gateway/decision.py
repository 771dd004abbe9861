"""The one place that decides whether a repository operation may go ahead (SPEC §6).

A pure function over plain data: the caller gathers the facts (who, with which key, which
repository, the workspace's 2SV policy, the identity's 2SV state), `decide` answers with
Allow or Deny and the exact message. No command checks repository permissions on its
own. (Managing a workspace's policy is not a repository operation: `commands/workspace.py`
checks the admin role and the admin's own 2SV itself, as SPEC §6 asks.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .kinds import WRITE_ROLES, KeyKind, Requirement
from .names import printable


class Action(Enum):
    READ = "read"
    WRITE = "write"


@dataclass(frozen=True)
class Certificate:
    """The OpenSSH user certificate a login was made with (its signature verified, its
    CA trusted): what logs and the audit log name it by, and when it stops."""

    key_id: str  # as the CA wrote it: shown escaped
    serial: int
    principal: str  # the principal that named the account
    valid_before: float  # epoch seconds

    @property
    def label(self) -> str:
        return f'certificate "{printable(self.key_id, 100)}" serial {self.serial}'


@dataclass(frozen=True)
class Identity:
    """Who is connected: an account, or an access key bound to one repository."""

    account: str  # the account name; for an access key, a label for logs
    account_id: int  # 0 for an access key
    key_fingerprint: str
    key_title: str
    key_kind: str = KeyKind.LOGIN  # SECURITY_KEY: the login itself was a second factor
    access_repo_id: int | None = None  # set for access keys only
    access_write: bool = False
    # Set for a certificate login: key_fingerprint is then the certified key's, which is
    # what its two-step session belongs to.
    certificate: Certificate | None = None

    @property
    def is_access_key(self) -> bool:
        return self.access_repo_id is not None


@dataclass(frozen=True)
class TwoSVFacts:
    """The identity's two-step state, as far as the decision needs it."""

    enabled: bool = False
    session_verified_at: float | None = None  # `2sv verify` with the key in use


@dataclass(frozen=True)
class RepoFacts:
    """What is known of the repository the user asked for."""

    asked_as: str  # WORKSPACE/NAME as the user typed it (normalised), for messages
    exists: bool
    repo_id: int = 0
    full_name: str = ""  # canonical WORKSPACE/NAME when it exists
    public: bool = False
    role: str | None = None  # the identity's role in the repository's workspace
    workspace: str = ""
    require_2sv: str = Requirement.OFF
    session_window_minutes: int = 15


@dataclass(frozen=True)
class Allow:
    pass


@dataclass(frozen=True)
class Deny:
    message: str  # shown after "ERROR: "; may hold a second line saying how to comply
    reason: str  # short, for the audit log


def decide(
    identity: Identity,
    twosv: TwoSVFacts,
    repo: RepoFacts,
    action: Action,
    now: float,
    ssh: str = "ssh git@HOST",
) -> Allow | Deny:
    """`ssh` is how users reach the gateway (`ssh -p 2222 git@host`), for instructions."""
    not_found = Deny(f"Repository not found: {repo.asked_as}", "not found or not readable")
    if identity.is_access_key:
        if not repo.exists or repo.repo_id != identity.access_repo_id:
            return not_found
        if action is Action.WRITE and not identity.access_write:
            return Deny(
                f"Permission to {repo.full_name} denied to access key "
                f'"{printable(identity.key_title)}" (read-only).',
                "read-only access key",
            )
        return Allow()  # access keys are not subject to the 2SV policy
    if not (repo.exists and (repo.public or repo.role is not None)):
        # Missing and unreadable look the same, so names of private repositories never leak.
        return not_found
    if action is Action.WRITE and repo.role not in WRITE_ROLES:
        return Deny(
            f"Permission to {repo.full_name} denied to {identity.account}.", "no write role"
        )
    if requirement_applies(repo, action):
        if not twosv.enabled:
            return Deny(
                f'Workspace "{repo.workspace}" requires two-step verification.\n'
                f"Turn it on with: {ssh} 2sv enable",
                "workspace requires 2SV; account has none",
            )
        if repo.require_2sv == Requirement.SESSION and not session_open(identity, twosv, repo, now):
            return Deny(
                f'Workspace "{repo.workspace}" requires a verified two-step session.\n'
                f"Open one with: {ssh} 2sv verify\n" + session_key_hint(identity),
                "workspace requires a 2SV session; none open for this key",
            )
    return Allow()


def requirement_applies(repo: RepoFacts, action: Action) -> bool:
    """Whether the workspace's 2SV policy bears on this action (public reads stay open)."""
    return repo.require_2sv != Requirement.OFF and (action is Action.WRITE or not repo.public)


def session_key_hint(identity: Identity) -> str:
    """A session belongs to one key, and plain `ssh` may offer another than Git did: say
    which key needs it (the client's file name is not known here)."""
    return (
        f'It must be opened with the key used here: "{printable(identity.key_title)}" '
        f"({identity.key_fingerprint}); if ssh offers another key first, add -i with "
        "this key's file."
    )


def session_open(identity: Identity, twosv: TwoSVFacts, repo: RepoFacts, now: float) -> bool:
    if identity.key_kind == KeyKind.SECURITY_KEY:
        return True  # logging in with a security key needed its touch: a second factor
    verified = twosv.session_verified_at
    return verified is not None and verified <= now < verified + repo.session_window_minutes * 60
