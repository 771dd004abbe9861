"""Accounts: create (with their first keys), list, show, disable and enable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import names
from ..sshkeys import PublicKey
from ..store import accounts, audit
from ..store import keys as key_store
from ..store.database import Database
from ..twosv.service import State, TwoSV
from . import keys as key_service
from .keys import AddedKey


@dataclass(frozen=True)
class Created:
    account: accounts.Account
    keys: list[AddedKey]


@dataclass(frozen=True)
class AccountView:
    """What `account show` tells of one account."""

    account: accounts.Account
    keys: list[key_store.StoredKey]
    twosv: State


async def get(db: Database, name: str) -> accounts.Account:
    """The account of that name, or a refusal naming how to create it."""
    return await accounts.get(db, names.account_name(name))


async def list_all(db: Database) -> list[accounts.Account]:
    return await accounts.list_all(db)


async def view(db: Database, name: str) -> AccountView:
    account = await get(db, name)
    found = await key_store.list_for(db, account.name)
    state = await TwoSV(db, None, account.id, account.name).state()
    return AccountView(account, found, state)


async def create(
    db: Database,
    name: str,
    email: str | None,
    login_keys: list[PublicKey],
    *,
    actor: str,
    hooks_dir: Path,
) -> Created:
    """A new account with its keys, all in one transaction: a key already in use leaves
    no account behind."""
    name = names.account_name(name)
    account = await accounts.add(db, name, email)
    await audit.write(db, actor, "account.add", name)
    added = await key_service.add_uncommitted(db, account, login_keys, None, actor=actor)
    await db.commit()
    await key_service.tell_hooks(hooks_dir, account.name, added)
    return Created(account, added)


async def set_disabled(db: Database, name: str, disabled: bool, *, actor: str) -> str:
    """Disable (every key stops logging in) or enable an account; returns its name."""
    name = names.account_name(name)
    await accounts.set_disabled(db, name, disabled)
    await audit.write(db, actor, "account.disable" if disabled else "account.enable", name)
    await db.commit()
    return name
