"""Reconcile the keydir (`keys/ACCOUNT.pub`, `keys/ACCOUNT/TITLE.pub`) with the store.

Keys that came from the keydir are marked so; a sync adds what is new, creates missing
accounts, and removes keydir keys whose file is gone. Keys added with `gateway key add`
are never touched. A file that cannot be read as a whole is reported and left out, and
the keys it gave before are kept, so a typo never locks anyone out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import events, names, sshkeys
from .errors import Refusal
from .kinds import KeyKind
from .services import OPERATOR
from .store import accounts, audit, keys
from .store.database import Database


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # keys whose expiry-time changed
    created_accounts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Wanted:
    account: str
    title: str
    key: sshkeys.PublicKey
    file: Path


def _read_file(path: Path, account: str, title: str | None) -> list[_Wanted]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:  # a dangling symlink, a directory, no permission
        raise Refusal(f"cannot read: {exc.strerror or exc.__class__.__name__}") from None
    except UnicodeDecodeError:
        raise Refusal("cannot read: it is not UTF-8 text (expected OpenSSH public keys)") from None
    parsed = sshkeys.parse_text(text)
    return [_Wanted(account, title or key.comment or "keydir", key, path) for key in parsed]


def _scan(keydir: Path, report: SyncReport) -> tuple[list[_Wanted], set[str]]:
    wanted: list[_Wanted] = []
    broken_accounts: set[str] = set()
    for entry in sorted(keydir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            candidates = [(entry.name, p, p.stem) for p in sorted(entry.glob("*.pub"))]
        elif entry.suffix == ".pub":
            candidates = [(entry.stem, entry, None)]
        else:
            continue  # README and the like
        for account, path, title in candidates:
            try:
                names.account_name(account)
                if title is not None and not title.strip():
                    raise Refusal("empty title")
                wanted.extend(_read_file(path, account, title))
            except Refusal as refusal:
                report.errors.append(f"{names.shown(str(path))}: {refusal.message}")
                broken_accounts.add(account)
    return wanted, broken_accounts


async def sync(
    db: Database, keydir: Path, hooks_dir: Path | None = None, actor: str = OPERATOR
) -> SyncReport:
    """Add, create and remove as the keydir says, audited as `actor`, in one commit."""
    if not keydir.is_dir():
        raise Refusal(f"Keydir not found: {keydir}")
    report = SyncReport()
    added: list[_Wanted] = []
    wanted, broken_accounts = _scan(keydir, report)
    wanted_fingerprints = set()
    for item in wanted:
        wanted_fingerprints.add(item.key.fingerprint)
        existing = await keys.find(db, item.key.fingerprint)
        if existing is not None:
            if existing.account != item.account:
                report.errors.append(
                    f"{names.shown(str(item.file))}: key {item.key.fingerprint} "
                    f"already belongs to account {existing.account}"
                )
            elif existing.source == "keydir" and existing.expires_at != item.key.expires_at:
                # The file's expiry-time is the key's: changed there, changed here.
                await keys.set_expiry(db, item.key.fingerprint, item.key.expires_at)
                await audit.write(
                    db,
                    actor,
                    "key.expiry",
                    item.account,
                    detail=f"{item.key.fingerprint} expires={item.key.expires_at or '-'}",
                )
                report.changed.append(f"{item.account} {item.key.fingerprint}")
            continue
        account = await accounts.find(db, item.account)
        if account is None:
            account = await accounts.add(db, item.account, None)
            report.created_accounts.append(item.account)
            await audit.write(db, actor, "account.add", item.account, detail="keydir")
        try:
            await keys.add(
                db,
                account.id,
                item.key,
                item.title,
                source="keydir",
                say_where=True,
                expires_at=item.key.expires_at,
            )
        except Refusal as refusal:  # e.g. the key is an access key: report it, go on
            report.errors.append(f"{names.shown(str(item.file))}: {refusal.message}")
            continue
        await audit.write(db, actor, "key.add", item.account, detail=item.key.fingerprint)
        added.append(item)
        report.added.append(f"{item.account} {item.key.fingerprint} {item.title}")
    for stored in await keys.list_for(db):
        if (
            stored.source == "keydir"
            and stored.fingerprint not in wanted_fingerprints
            and stored.account not in broken_accounts
        ):
            if stored.kind == KeyKind.SECURITY_KEY:  # a 2SV method now: its owner removes it
                report.errors.append(
                    f"{stored.account} {stored.fingerprint}: its file is gone, "
                    "but it is a security key; only its owner can remove it"
                )
                continue
            await keys.remove(db, stored.fingerprint)
            await audit.write(db, actor, "key.remove", stored.account, detail=stored.fingerprint)
            report.removed.append(
                f"{stored.account} {stored.fingerprint} {names.shown(stored.title)}"
            )
    await db.commit()
    if hooks_dir is not None:  # keys that log in reach the 2sv-event.d hooks (events.py)
        for item in added:
            await events.notify(hooks_dir, item.account, "key.add", detail=item.key.fingerprint)
    return report
