"""Gathering the facts that `decision.decide` needs, from the store."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import decision
from .certificates import CertificateFacts, Trust
from .git.receive.signed import SigningKey
from .names import RepoPath, printable
from .store import access_keys, accounts, branch_rules, keys, repos, workspaces
from .store import signing_keys as signing_keys_store
from .store import twosv as twosv_store
from .store.database import Database
from .twosv.service import TwoSV


async def identity_for_key(db: Database, fingerprint: str) -> decision.Identity | None:
    """Who a verified key is: an enabled account's unexpired key or an access key; None
    otherwise. Callers must have checked the key's signature (asyncssh here, sshd behind
    OpenSSH)."""
    stored = await keys.find(db, fingerprint)
    if stored is not None:
        if stored.account_disabled or stored.expired(time.time()):
            return None
        return decision.Identity(
            stored.account, stored.account_id, stored.fingerprint, stored.title, stored.kind
        )
    bound = await access_keys.find(db, fingerprint)
    if bound is None:
        return None
    return decision.Identity(
        f"access-key:{bound.title}",
        0,
        bound.fingerprint,
        bound.title,
        access_repo_id=bound.repo_id,
        access_write=bound.write,
    )


async def identity_for_certificate(
    db: Database, trust: Trust, facts: CertificateFacts, peer_host: str | None
) -> tuple[decision.Identity | None, str]:
    """Who a user certificate is, or why it may not log in (a reason for the log): the
    trust policy (`peer_host` None where sshd enforces `source-address` itself), then the
    first principal naming an enabled account. Callers must have checked the login's
    signature by the certified key (the transport here, sshd behind OpenSSH)."""
    if not trust.enabled:
        return None, "cert-no-trusted-ca"
    refusal = trust.refusal(facts, peer_host, time.time())
    if refusal is not None:
        return None, refusal
    disabled = False
    for principal in facts.principals:
        account = await accounts.find(db, principal)
        if account is not None and not account.disabled:
            certificate = decision.Certificate(
                facts.key_id, facts.serial, principal, facts.valid_before
            )
            title = f"certificate {printable(facts.key_id, 100)}"
            return decision.Identity(
                account.name, account.id, facts.key_fingerprint, title, certificate=certificate
            ), ""
        disabled = disabled or account is not None
    return None, "account-disabled" if disabled else "cert-unknown-principal"


async def still_valid(db: Database, identity: decision.Identity) -> bool:
    """Whether the key a session logged in with still stands as it did (not removed,
    account not disabled, same binding). Checked for each session of a connection, and
    again right before anything changes state, since a prompt can wait for minutes."""
    if identity.is_access_key:
        bound = await access_keys.find(db, identity.key_fingerprint)
        return (
            bound is not None
            and bound.repo_id == identity.access_repo_id
            and bound.write == identity.access_write
        )
    if identity.certificate is not None:
        return await _certificate_still_valid(db, identity)
    stored = await keys.find(db, identity.key_fingerprint)
    return (
        stored is not None
        and not stored.account_disabled
        and not stored.expired(time.time())
        and stored.account_id == identity.account_id
        and stored.kind == identity.key_kind
    )


async def _certificate_still_valid(db: Database, identity: decision.Identity) -> bool:
    """A certificate login stands while its account is enabled and the certificate is
    within its validity (revocation closes the connection: transport/certificates.py)."""
    assert identity.certificate is not None
    account = await accounts.find(db, identity.account)
    return (
        account is not None
        and not account.disabled
        and account.id == identity.account_id
        and time.time() < identity.certificate.valid_before
    )


async def twosv_facts(db: Database, identity: decision.Identity) -> decision.TwoSVFacts:
    if identity.is_access_key:
        return decision.TwoSVFacts()
    state = await TwoSV(db, None, identity.account_id, identity.account).state()
    verified_at = await twosv_store.session_verified_at(
        db, identity.key_fingerprint, identity.account_id
    )
    return decision.TwoSVFacts(state.enabled, verified_at)


async def repo_facts(
    db: Database, identity: decision.Identity, path: RepoPath
) -> tuple[decision.RepoFacts, repos.Repo | None]:
    asked = str(path)
    repo = await repos.find(db, path.workspace, path.name)
    if repo is None:
        return decision.RepoFacts(asked_as=asked, exists=False), None
    role = None
    if not identity.is_access_key:
        role = await workspaces.role_of(db, repo.workspace_id, identity.account_id)
    facts = decision.RepoFacts(
        asked_as=asked,
        exists=True,
        repo_id=repo.id,
        full_name=repo.full_name,
        public=repo.public,
        role=role,
        workspace=repo.workspace,
        require_2sv=repo.require_2sv,
        session_window_minutes=repo.session_window,
    )
    return facts, repo


@dataclass(frozen=True)
class PushFacts:
    """What the worker needs to decide each ref of a push by the branch rules."""

    rules: tuple[decision.RefRule, ...]
    pusher: decision.Pusher
    signing_keys: tuple[SigningKey, ...]


async def push_facts(
    db: Database,
    identity: decision.Identity,
    facts: decision.RepoFacts,
    repo: repos.Repo,
) -> PushFacts:
    """The rules a push to `repo` answers to (its workspace's and its own) and the
    pusher's facts. The key's two-step session is read whatever the policy: a rule may
    ask for one, and every push's audit row records it (for `branch-rule --dry-run`)."""
    rules = tuple(await branch_rules.applying(db, repo.workspace_id, repo.id))
    verified_at = None
    if not identity.is_access_key:
        verified_at = await twosv_store.session_verified_at(
            db, identity.key_fingerprint, identity.account_id
        )
    pusher = decision.pusher(identity, facts, decision.TwoSVFacts(True, verified_at))
    keys: tuple[SigningKey, ...] = ()
    if any(rule.require_signed for rule in rules):
        keys = await signing_keys(db)
    return PushFacts(rules, pusher, keys)


async def signing_keys(db: Database) -> tuple[SigningKey, ...]:
    """Every registered signing key of an enabled account, for `--require-signed`."""
    registered = await signing_keys_store.for_push(db)
    return tuple(SigningKey(account, fingerprint) for fingerprint, account in registered.items())
