"""The SSH keys that log in to an account: added by the operator (and the keydir),
listed and removed by the operator or by their owner over SSH.

Every key that can log in being added reaches the 2sv-event.d hooks, whoever added it:
a stolen key's holder adding one of their own is how they would stay in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import events
from ..errors import Refusal
from ..kinds import KeyKind
from ..names import printable
from ..sshkeys import PublicKey
from ..store import access_keys, audit, keys
from ..store.accounts import Account
from ..store.database import Database


@dataclass(frozen=True)
class AddedKey:
    account: str
    fingerprint: str
    title: str


@dataclass(frozen=True)
class Removed:
    """A key the operator removed, and the keys its account still logs in with."""

    key: keys.StoredKey
    left: list[keys.StoredKey]


async def add_uncommitted(
    db: Database,
    account: Account,
    parsed: list[PublicKey],
    title: str | None,
    *,
    actor: str,
    expires_at: int | None = None,
) -> list[AddedKey]:
    """Add and audit keys inside the caller's transaction (the caller commits, then
    calls `tell_hooks`). `expires_at` wins over a key line's own `expiry-time`."""
    done = []
    for key in parsed:
        key_title = title or key.comment or f"key-{key.fingerprint[7:15]}"
        ends = expires_at if expires_at is not None else key.expires_at
        await keys.add(db, account.id, key, key_title, say_where=True, expires_at=ends)
        detail = key.fingerprint + (f" expires={ends}" if ends is not None else "")
        await audit.write(db, actor, "key.add", account.name, detail=detail)
        done.append(AddedKey(account.name, key.fingerprint, key_title))
    return done


async def tell_hooks(hooks_dir: Path, account: str, added: list[AddedKey]) -> None:
    for key in added:
        await events.notify(hooks_dir, account, "key.add", detail=key.fingerprint)


async def add(
    db: Database,
    account: Account,
    parsed: list[PublicKey],
    title: str | None,
    *,
    actor: str,
    hooks_dir: Path,
    expires_at: int | None = None,
) -> list[AddedKey]:
    added = await add_uncommitted(db, account, parsed, title, actor=actor, expires_at=expires_at)
    await db.commit()
    await tell_hooks(hooks_dir, account.name, added)
    return added


async def list_for(db: Database, account: str | None = None) -> list[keys.StoredKey]:
    """Every login key of one account (or of all), security keys too."""
    return await keys.list_for(db, account)


async def unused_since(db: Database, before: int) -> list[keys.StoredKey]:
    """Login keys not used since `before` (an unused key counts from when it was added)."""
    return await keys.unused_since(db, before)


async def security_keys(db: Database, account: str) -> list[keys.StoredKey]:
    return [k for k in await keys.list_for(db, account) if k.kind == KeyKind.SECURITY_KEY]


async def remove_by_operator(
    db: Database, fingerprint: str, *, actor: str, ssh_command: Callable[[str], str]
) -> Removed:
    """The operator removes a login key (never an access key, never a security key:
    no operator command turns off someone's 2SV, SPEC §5)."""
    found = await keys.find(db, fingerprint)
    if found is None and await access_keys.find(db, fingerprint) is not None:
        raise Refusal(
            f"{printable(fingerprint)} is an access key: "
            f"gateway access-key remove {printable(fingerprint)}"
        )
    if found is not None and found.kind == KeyKind.SECURITY_KEY:
        raise Refusal(
            f"{found.fingerprint} is a security key, a two-step method of "
            f"{found.account}; only its owner can remove it: "
            f"{ssh_command('security-key remove ' + found.fingerprint)}"
        )
    removed = await keys.remove(db, fingerprint)
    await audit.write(db, actor, "key.remove", removed.account, detail=removed.fingerprint)
    await db.commit()
    return Removed(removed, await keys.list_for(db, removed.account))


async def own_plain_key(
    db: Database, account_id: int, fingerprint: str, ssh_command: Callable[[str], str]
) -> keys.StoredKey:
    """The caller's own key that `keys remove` may remove, or a refusal saying why not:
    security keys go through `security-key remove`, keydir keys through the operator
    (a sync would bring the file's key back)."""
    key = await keys.find(db, fingerprint)
    if key is None or key.account_id != account_id:
        raise Refusal(f"No key {printable(fingerprint)} on your account")
    if key.kind == KeyKind.SECURITY_KEY:
        raise Refusal(
            "That is a security key, a two-step method too; remove it with: "
            f"{ssh_command('security-key remove ' + fingerprint)}"
        )
    if key.source == "keydir":
        raise Refusal(
            "That key comes from the operator's keydir; ask the operator to remove "
            "its file (a sync would add it back)."
        )
    return key


async def remove_own(
    db: Database,
    account_id: int,
    account: str,
    fingerprint: str,
    *,
    ssh_command: Callable[[str], str],
    hooks_dir: Path,
    key_fingerprint: str = "",
    remote_addr: str = "",
) -> keys.StoredKey:
    """The owner removes one of their plain login keys (checked again here: the
    confirmation prompt may have waited); audited as the owner's 2SV-style event."""
    key = await own_plain_key(db, account_id, fingerprint, ssh_command)
    await keys.remove(db, fingerprint)
    await events.twosv_event(
        db,
        hooks_dir,
        account,
        "key.remove",
        detail=fingerprint,
        key_fingerprint=key_fingerprint,
        remote_addr=remote_addr,
    )
    return key
