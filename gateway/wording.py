"""What both the operator's CLI and the SSH commands print, worded in one place: a login
key's line, the keys left after a removal, a workspace, its members and its 2SV
requirement, the 2SV hints. Plain functions from values to text; nothing here reads the database."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from . import expiry
from .decision import RefRule
from .kinds import KeyKind, Requirement
from .names import shown
from .services.branch_rules import WouldRefuse
from .store.keys import StoredKey
from .store.signing_keys import SigningKey
from .store.workspaces import Member, Workspace
from .twosv.service import State

# --- login keys -----------------------------------------------------------------------


def login_key(key: StoredKey, in_use: str = "") -> str:
    """One login key on one line, for its owner (`keys`) and the operator's CLI."""
    kind = "security key" if key.kind == KeyKind.SECURITY_KEY else "key"
    added = time.strftime("%Y-%m-%d", time.gmtime(key.created_at))
    this = "  (this login)" if key.fingerprint == in_use else ""
    return (
        f"{key.fingerprint}  {key.algorithm}  {kind}, added {added} by {key.source}"
        f"{''.join(', ' + part for part in key_life(key, time.time()))}  "
        f"{shown(key.title)}{this}"
    )


def signing_key(key: SigningKey) -> str:
    """One signing key on one line, for its owner (`signing-key list`) and the CLI."""
    added = expiry.shown_day(key.created_at)
    return f"{key.fingerprint}  {key.algorithm}  added {added}  {shown(key.title)}"


def key_life(key: StoredKey, now: float) -> list[str]:
    """`expires 2027-01-31 00:00 UTC` or `EXPIRED ...`, and `last used 2026-12-01` or
    `never used`: what an operator weeding out stale keys looks for."""
    parts = []
    if key.expires_at is not None:
        word = "EXPIRED" if key.expired(now) else "expires"
        parts.append(f"{word} {expiry.shown_time(key.expires_at)}")
    if key.last_used_at is None:
        parts.append("never used")
    else:
        parts.append(f"last used {expiry.shown_day(key.last_used_at)}")
    return parts


def login_key_lines(found: Sequence[StoredKey], in_use: str = "") -> list[str]:
    return ["  " + login_key(key, in_use) for key in found]


def keys_left(account: str, left: Sequence[StoredKey]) -> list[str]:
    """After a key is removed: what still logs in to the account (a stolen key's holder
    may have added keys of their own), and how to stop them all."""
    lines = [
        f"{account} still has {len(left)} key(s) that log in:"
        if left
        else f"{account} has no key left that logs in."
    ]
    lines += login_key_lines(left)
    if any(k.kind == KeyKind.SECURITY_KEY for k in left):
        lines.append(
            "Security keys are removed by their owner (security-key remove, with a "
            f"code); to stop every login at once: gateway account disable {account}"
        )
    return lines


# --- workspaces and their 2SV requirement ---------------------------------------------


def policy(word: str, window: int) -> str:
    if word == Requirement.SESSION:
        return f"session (a verified two-step session, {window} min window)"
    return str(word)


def policy_changed(name: str, word: str, window: int) -> str:
    return f'Workspace "{name}" now requires: {policy(word, window)}.'


def lacking_2sv(names: list[str], applied: bool) -> str:
    """Who does not meet a policy of `on` or `session`: after it applied, or before."""
    loses = (
        "cannot use its private repositories or push"
        if applied
        else "would lose access to its private repositories and pushes"
    )
    return (
        f"Members without two-step verification, who {loses} until they turn it on: "
        f"{', '.join(names)}"
    )


def preview(lacking: list[str], applies: bool) -> list[str]:
    """Before a policy changes (or instead, in a dry run): who it would shut out."""
    if lacking:
        return [lacking_2sv(lacking, applied=False)]
    return ["Every member has two-step verification."] if applies else []


def dry_run(workspace: Workspace) -> str:
    return f"Dry run: {workspace.name} stays at require-2sv={workspace.require_2sv}."


def show(workspace: Workspace, members: list[Member], lacking: set[str] | None) -> list[str]:
    """`workspace show`: with `lacking` (to admins and the operator), each member's 2SV."""
    lines = [
        f"workspace:    {workspace.name}",
        f"require-2sv:  {policy(workspace.require_2sv, workspace.session_window)}",
        f"members:      {len(members)}",
    ]
    for member in members:
        note = ""
        if lacking is not None:
            note = "  2SV off" if member.account in lacking else "  2SV on"
            if member.account in lacking and workspace.require_2sv != Requirement.OFF:
                note += " (does not meet the policy)"
        lines.append(f"  {member.account}\t{member.role}{note}")
    return lines


# --- two-step verification hints ------------------------------------------------------


def twosv_state(state: State, ssh_command: Callable[[str], str]) -> list[str]:
    """The account's 2SV state, and how to turn it on when it is off (greeting, status)."""
    lines = [state.describe()]
    if not state.enabled:
        lines.append(f"Turn it on with: {ssh_command('2sv enable')}")
    return lines


def few_codes_left(left: int, ssh_command: Callable[[str], str]) -> str:
    """Said when fewer than two recovery codes are left."""
    return (
        f"Warning: only {left} recovery codes left. Get a new set with: "
        f"{ssh_command('recovery-codes regenerate')}"
    )


# --- branch rules ---------------------------------------------------------------------


def branch_rule(rule: RefRule) -> str:
    """One rule on one line: its full pattern, then its options as `add` takes them."""
    where = "  (workspace default)" if rule.inherited else ""
    return f"{rule.pattern}  {' '.join(rule.options())}{where}"


def branch_rules(scope: str, rules: Sequence[RefRule]) -> list[str]:
    if not rules:
        return [f"No branch rules on {scope}."]
    return [f"Branch rules on {scope}:", *("  " + branch_rule(r) for r in rules)]


def branch_rule_added(scope: str, rule: RefRule, replaced: bool) -> str:
    return f"{'Replaced' if replaced else 'Added'} branch rule on {scope}: {branch_rule(rule)}"


def branch_rule_removed(scope: str, rule: RefRule) -> str:
    return f"Removed branch rule on {scope}: {branch_rule(rule)}"


def would_refuse(found: Sequence[WouldRefuse], rule: RefRule) -> list[str]:
    """`--dry-run`: the recent ref updates the rule would have refused."""
    lines = [
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(w.at))} {shown(w.account)} "
        f"{shown(w.repository)} {shown(w.ref)} {w.kind}: {shown(w.reason)}"
        for w in found
    ]
    lines.append(
        f"{len(found)} ref update(s) of recent pushes would have been refused by this rule."
        if found
        else "No recent push would have been refused by this rule."
    )
    if rule.require_signed:
        lines.append("(--require-signed is not replayed: the audit log holds no signatures.)")
    lines.append("Dry run: nothing changed.")
    return lines
