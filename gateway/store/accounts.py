"""Accounts."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Refusal
from ..names import email as checked_email
from .database import Database, IntegrityError, Row
from .db import now


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    email: str | None
    disabled: bool


def _row(row: Row) -> Account:
    return Account(row["id"], row["name"], row["email"], bool(row["disabled"]))


async def add(db: Database, name: str, email: str | None) -> Account:
    email = checked_email(email)
    try:
        account_id = await db.insert(
            "INSERT INTO accounts (name, email, created_at) VALUES (?, ?, ?)",
            (name, email, now()),
        )
    except IntegrityError:
        raise Refusal(f"Account already exists: {name}") from None
    return Account(account_id, name, email, False)


async def find(db: Database, name: str) -> Account | None:
    row = await db.fetch_one("SELECT * FROM accounts WHERE name = ?", (name,))
    return _row(row) if row else None


async def get(db: Database, name: str) -> Account:
    account = await find(db, name)
    if account is None:
        raise Refusal(f"No such account: {name} (create it with: gateway account add {name})")
    return account


async def list_all(db: Database) -> list[Account]:
    rows = await db.fetch_all("SELECT * FROM accounts ORDER BY name")
    return [_row(row) for row in rows]


async def set_disabled(db: Database, name: str, disabled: bool) -> None:
    await get(db, name)
    await db.execute("UPDATE accounts SET disabled = ? WHERE name = ?", (int(disabled), name))
