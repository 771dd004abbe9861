"""The one place that decides whether a repository operation may go ahead (SPEC §6).

A pure function over plain data: the caller gathers the facts (who, with which key, which
repository, the workspace's 2SV policy, the identity's 2SV state), `decide` answers with
Allow or Deny and the exact message. No command checks repository permissions on its
own. (Managing a workspace's policy is not a repository operation: `commands/workspace.py`
checks the admin role and the admin's own 2SV itself, as SPEC §6 asks.)

A push is decided twice: for the repository here (`decide`, a write), then per ref in
the worker (`decide_ref`), with the branch rules and the pusher's facts the server
gathered into the job: the same module, whatever process runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

from . import refpatterns
from .kinds import WRITE_ROLES, KeyKind, Requirement, Role
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
    return _within(twosv.session_verified_at, repo.session_window_minutes, now)


# --- ref-level decisions: branch rules, per ref of a push ------------------------------

ACCESS_KEY = "access-key"  # Pusher.key_kind of an access key (it has no KeyKind)


class UpdateKind(StrEnum):
    """What a push does to one ref. FORCE is any change of an existing ref that is not
    a commit moving to a descendant of itself (a rewrite, a tag moved, a non-commit)."""

    CREATE = "create"
    DELETE = "delete"
    FAST_FORWARD = "fast-forward"
    FORCE = "force"


@dataclass(frozen=True)
class RefRule:
    """A branch rule, as stored and as the worker's job carries it."""

    pattern: str  # full, checked (refpatterns.parse)
    push: tuple[str, ...] = ()  # who may update: roles, accounts, `key:FP`; (): anyone
    no_force: bool = False
    no_delete: bool = False
    no_create: bool = False
    require_2sv_session: bool = False
    require_signed: bool = False
    own_keys: bool = False  # with require_signed: only the pusher's own signing keys
    inherited: bool = False  # a workspace default, not the repository's own

    def applies_to(self, ref: str) -> bool:
        return refpatterns.matches(self.pattern, ref)

    def options(self) -> list[str]:
        """The rule as `branch-rule add` options, in a fixed order."""
        words = [w for who in self.push for w in ("--push", who)]
        flags = (
            (self.no_force, "--no-force"),
            (self.no_delete, "--no-delete"),
            (self.no_create, "--no-create"),
            (self.require_2sv_session, "--require-2sv-session"),
            (self.require_signed, "--require-signed"),
            (self.own_keys, "--own-keys"),
        )
        return words + [flag for on, flag in flags if on]


@dataclass(frozen=True)
class Pusher:
    """Who pushes, as far as branch rules need it: gathered by the server, carried in
    the worker's job, recorded with each push in the audit log (for `--dry-run`)."""

    account: str = ""
    role: str = ""  # the workspace role; "write" for an access key with write
    key_fingerprint: str = ""
    key_kind: str = KeyKind.LOGIN  # or ACCESS_KEY
    session_verified_at: float = 0.0  # the key's `2sv verify`; 0: none
    session_window_minutes: int = 15


def pusher(identity: Identity, repo: RepoFacts, twosv: TwoSVFacts) -> Pusher:
    if identity.is_access_key:
        role, kind = (Role.WRITE if identity.access_write else ""), ACCESS_KEY
    else:
        role, kind = repo.role or "", identity.key_kind
    return Pusher(
        identity.account,
        role,
        identity.key_fingerprint,
        kind,
        twosv.session_verified_at or 0.0,
        repo.session_window_minutes,
    )


def may_push(who: tuple[str, ...], person: Pusher) -> bool:
    """A role names that role and those above it (`write`: write and admin); an access
    key with write holds the write role; `key:FP` names one key; anything else an
    account (`account:NAME` for an account called like a role)."""
    for entry in who:
        if entry in (Role.WRITE, Role.ADMIN):
            if person.role == Role.ADMIN or person.role == entry:
                return True
        elif entry.startswith("key:"):
            if entry[4:] == person.key_fingerprint:
                return True
        elif entry.removeprefix("account:") == person.account and person.key_kind != ACCESS_KEY:
            return True
    return False


def decide_ref(
    person: Pusher,
    rules: tuple[RefRule, ...],
    ref: str,
    kind: UpdateKind,
    now: float,
    unsigned: str | None = None,
    ssh: str = "ssh git@HOST",
) -> Allow | Deny:
    """One ref of a push, against every rule that matches it: all their restrictions
    apply. `unsigned` is the signature check's refusal (a commit id and why), asked for
    only where a matching rule requires signatures. The Deny's first line is the ref's
    `ng` reason; any further lines reach the user as `remote:` lines."""
    for rule in (r for r in rules if r.applies_to(ref)):
        name = f"rule {rule.pattern}"
        if rule.push and not may_push(rule.push, person):
            return Deny(f"{name}: only {', '.join(rule.push)} may push", "not in the push list")
        if rule.no_delete and kind is UpdateKind.DELETE:
            return Deny(f"{name}: deletion not allowed", "deletion")
        if rule.no_create and kind is UpdateKind.CREATE:
            return Deny(f"{name}: creation not allowed", "creation")
        if rule.no_force and kind is UpdateKind.FORCE:
            return Deny(f"{name}: force-push not allowed (not a fast-forward)", "force-push")
        if rule.require_2sv_session and not _session_live(person, now):
            if person.key_kind == ACCESS_KEY:
                return Deny(
                    f"{name}: needs a two-step session, which an access key cannot open",
                    "2SV session required; access key",
                )
            return Deny(
                f"{name}: needs a two-step session\n"
                f"{ref} needs an open two-step session for the key in use. "
                f"Open one with: {ssh} 2sv verify (or log in with a security key)",
                "2SV session required; none open",
            )
        if rule.require_signed and unsigned is not None and kind is not UpdateKind.DELETE:
            return Deny(f"{name}: {unsigned}", "signature required")
    return Allow()


def _session_live(person: Pusher, now: float) -> bool:
    if person.key_kind == ACCESS_KEY:
        return False  # no account, so no `2sv verify`
    if person.key_kind == KeyKind.SECURITY_KEY:
        return True  # the login itself needed the key's touch
    return _within(person.session_verified_at or None, person.session_window_minutes, now)


def _within(verified: float | None, window_minutes: int, now: float) -> bool:
    return verified is not None and verified <= now < verified + window_minutes * 60
