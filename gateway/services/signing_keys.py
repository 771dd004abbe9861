"""Signing keys: added, listed and removed by their owner over SSH or by the operator.

A signing key vouches for every commit it signs wherever a rule asks for signatures, so
each change is audited and reaches the 2sv-event.d hooks, as a login key's does: a
stolen login key's holder registering a key of their own is how they would forge
"verified" commits.
"""

from __future__ import annotations

from pathlib import Path

from .. import events, sshkeys
from ..errors import Refusal
from ..git import signatures
from ..names import printable
from ..store import audit
from ..store import signing_keys as store
from ..store.accounts import Account
from ..store.database import Database

# A public key line is under 1 KiB for every type but RSA, whose 16384-bit keys take
# about 3 KiB: anything longer is not one key.
MAX_KEY_TEXT = 8 * 1024
TOO_LONG = f"Too long for a public key line (over {MAX_KEY_TEXT} characters)"


def parse(text: str) -> sshkeys.PublicKey:
    """The one public key in what the user gave, or one clear line saying why not."""
    if len(text) > MAX_KEY_TEXT:
        raise Refusal(TOO_LONG)
    if "-cert-v01@openssh.com" in text.split("#", 1)[0]:
        raise Refusal(
            "This is a certificate: give the signing key itself (its .pub file), "
            "not a certificate of it"
        )
    found = sshkeys.parse_text(text)
    if len(found) > 1:
        raise Refusal("One signing key at a time: give one public key line")
    key = found[0]
    if key.algorithm not in signatures.KEY_ALGORITHMS:
        raise Refusal(f"Keys of type {printable(key.algorithm, 40)} cannot sign for git here")
    return key


async def add(
    db: Database,
    account: Account,
    key: sshkeys.PublicKey,
    title: str | None,
    *,
    actor: str,
    hooks_dir: Path,
    key_fingerprint: str = "",
    remote_addr: str = "",
) -> store.SigningKey:
    key_title = title or key.comment or f"key-{key.fingerprint[7:15]}"
    await store.add(db, account.id, key, key_title)
    await audit.write(db, actor, "signing-key.add", account.name, detail=key.fingerprint)
    await db.commit()
    await events.notify(
        hooks_dir,
        account.name,
        "signing-key.add",
        detail=key.fingerprint,
        key_fingerprint=key_fingerprint,
        remote_addr=remote_addr,
    )
    added = await store.find(db, key.fingerprint)
    assert added is not None  # just committed
    return added


async def list_for(db: Database, account: str | None = None) -> list[store.SigningKey]:
    return await store.list_for(db, account)


async def find(db: Database, fingerprint: str) -> store.SigningKey | None:
    return await store.find(db, fingerprint)


async def own(db: Database, account: Account, which: str) -> store.SigningKey:
    """The account's signing key named by fingerprint or title, or a refusal."""
    found = await store.find_own(db, account.id, which)
    if found is None:
        raise Refusal(f"No signing key {printable(which)} on account {account.name}")
    return found


async def remove(
    db: Database,
    account: Account,
    which: str,
    *,
    actor: str,
    hooks_dir: Path,
    key_fingerprint: str = "",
    remote_addr: str = "",
) -> store.SigningKey:
    """From now on, what it signed no longer verifies (a push bringing it is refused)."""
    key = await own(db, account, which)
    await store.remove(db, key.id)
    await audit.write(db, actor, "signing-key.remove", account.name, detail=key.fingerprint)
    await db.commit()
    await events.notify(
        hooks_dir,
        account.name,
        "signing-key.remove",
        detail=key.fingerprint,
        key_fingerprint=key_fingerprint,
        remote_addr=remote_addr,
    )
    return key


async def for_push(db: Database) -> dict[str, str]:
    """Fingerprint to account of every key a push's signatures may be made with."""
    return await store.for_push(db)
