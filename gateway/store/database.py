"""The database as its callers see it, whichever backend holds it (SQLite or PostgreSQL).

A `Backend` is opened once a process (`gateway/store/db.py: open_backend()`); each
`Database` it hands out (`Backend.connect()`) is one line of transactions, as an SQLite
connection is: the first INSERT, UPDATE or DELETE starts a transaction, `commit()` or
`rollback()` ends it, reads outside one see what is committed. Code that commits must
not share a `Database` with other tasks (the server gives each session its own).

On PostgreSQL a `Database` holds a pooled connection only while it is in a
transaction; a read outside one borrows a connection for that statement alone. So a
session waiting at a prompt holds no connection.

SQL is written once, with `?` placeholders, in a dialect both accept (`INSERT ... ON
CONFLICT`, `RETURNING`, `||`); the backend translates the placeholders.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import Refusal

Params = Sequence[Any]


class Row(Protocol):
    """A result row: by position (`row[0]`, `tuple(row)`) and by column name
    (`row["name"]`); sqlite3.Row and asyncpg.Record both are."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Result:
    rowcount: int  # rows the statement inserted, changed or deleted


class DatabaseError(Exception):
    """A statement failed in the database (a driver's error, translated)."""


class IntegrityError(DatabaseError):
    """A constraint (UNIQUE, FOREIGN KEY, CHECK) refused the statement."""


class Unusable(Refusal):
    """The database cannot be used: unreachable, refused the login, newer than this
    gateway, someone else's. The message names the problem (never a password)."""


class Unreachable(Unusable):
    """The database server does not answer (down, restarting): worth waiting for, unlike
    the other problems, which only the operator can fix."""


class Database(abc.ABC):
    """One line of transactions (see the module's docstring)."""

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> Result: ...

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None: ...

    @abc.abstractmethod
    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None: ...

    @abc.abstractmethod
    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]: ...

    async def insert(self, sql: str, params: Params = ()) -> int:
        """Run an INSERT of one row into a table with an `id` column; the new row's id."""
        row = await self.fetch_one(sql + " RETURNING id", params)
        if row is None:
            raise RuntimeError("the INSERT added no row")
        return int(row[0])

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def rollback(self) -> None: ...

    @abc.abstractmethod
    def write(self, lock: str | None = None) -> AbstractAsyncContextManager[None]:
        """`async with db.write(lock="twosv:7"):` a write transaction for a read that
        decides a write: committed at the end, rolled back on an exception. SQLite takes
        its write lock at once (BEGIN IMMEDIATE: one writer for the whole file);
        PostgreSQL takes a transaction-level advisory lock on `lock`, so that only
        transactions naming the same lock wait for each other. Without `lock` on
        PostgreSQL: a plain transaction (its conditional UPDATEs still do not race).
        No transaction may be open on this Database when it starts."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Roll back what is not committed and give back the connection."""


class Backend(abc.ABC):
    """What one process opened: an SQLite file, or a PostgreSQL connection pool."""

    name: str  # "sqlite" or "postgresql"

    @abc.abstractmethod
    async def connect(self) -> Database:
        """A new line of transactions."""

    @abc.abstractmethod
    async def migrate(self) -> None:
        """Bring the schema up to date (gateway/store/db.py: MIGRATIONS), or refuse a
        database this gateway must not touch, changing nothing."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
