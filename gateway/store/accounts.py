"""Accounts."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from ..errors import Refusal
from ..names import email as checked_email
from .db import inserted_id, now


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    email: str | None
    disabled: bool


def _row(row: aiosqlite.Row) -> Account:
    return Account(row["id"], row["name"], row["email"], bool(row["disabled"]))


async def add(db: aiosqlite.Connection, name: str, email: str | None) -> Account:
    email = checked_email(email)
    try:
        cursor = await db.execute(
            "INSERT INTO accounts (name, email, created_at) VALUES (?, ?, ?)",
            (name, email, now()),
        )
    except aiosqlite.IntegrityError:
        raise Refusal(f"Account already exists: {name}") from None
    return Account(inserted_id(cursor), name, email, False)


async def find(db: aiosqlite.Connection, name: str) -> Account | None:
    async with db.execute("SELECT * FROM accounts WHERE name = ?", (name,)) as cursor:
        row = await cursor.fetchone()
    return _row(row) if row else None


async def get(db: aiosqlite.Connection, name: str) -> Account:
    account = await find(db, name)
    if account is None:
        raise Refusal(f"No such account: {name} (create it with: gateway account add {name})")
    return account


async def list_all(db: aiosqlite.Connection) -> list[Account]:
    async with db.execute("SELECT * FROM accounts ORDER BY name") as cursor:
        return [_row(row) for row in await cursor.fetchall()]


async def set_disabled(db: aiosqlite.Connection, name: str, disabled: bool) -> None:
    await get(db, name)
    await db.execute("UPDATE accounts SET disabled = ? WHERE name = ?", (int(disabled), name))
