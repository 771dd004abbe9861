"""The SQLite backend: the file in the data directory, one aiosqlite connection for each
`Database` (SQLite's own implicit transactions are the interface's model)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiosqlite

from .database import Backend, Database, DatabaseError, IntegrityError, Params, Result, Row


class SqliteDatabase(Database):
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: str, params: Params = ()) -> Result:
        try:
            cursor = await self.conn.execute(sql, params)
        except aiosqlite.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except aiosqlite.Error as exc:
            raise DatabaseError(str(exc)) from exc
        return Result(cursor.rowcount)

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        try:
            await self.conn.executemany(sql, rows)
        except aiosqlite.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except aiosqlite.Error as exc:
            raise DatabaseError(str(exc)) from exc

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        try:
            async with self.conn.execute(sql, params) as cursor:
                return cast(Row | None, await cursor.fetchone())
        except aiosqlite.IntegrityError as exc:
            raise IntegrityError(str(exc)) from exc
        except aiosqlite.Error as exc:
            raise DatabaseError(str(exc)) from exc

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        try:
            async with self.conn.execute(sql, params) as cursor:
                return cast(list[Row], list(await cursor.fetchall()))
        except aiosqlite.Error as exc:
            raise DatabaseError(str(exc)) from exc

    async def commit(self) -> None:
        await self.conn.commit()

    async def rollback(self) -> None:
        await self.conn.rollback()

    @asynccontextmanager
    async def write(self, lock: str | None = None) -> AsyncIterator[None]:
        # One writer for the whole file: `lock` is implied.
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self.conn.rollback()
            raise
        await self.conn.commit()

    async def close(self) -> None:
        await self.conn.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def _open(self, wal: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, timeout=30)
        conn.row_factory = aiosqlite.Row
        if wal:  # a property of the file: set once, by whoever migrates
            await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    async def connect(self) -> Database:
        return SqliteDatabase(await self._open(wal=False))

    async def migrate(self) -> None:
        from . import db

        conn = await self._open(wal=True)
        try:
            version = await _user_version(conn)
            tables = [] if version else await _tables(conn)
            for number in db.pending(version, tables, f"SQLite database {self.path}"):
                # One transaction per step: a failed step leaves the previous version.
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    if await _user_version(conn) == number:  # not migrated meanwhile
                        for statement in db.sql_of(db.MIGRATIONS[number], self.name):
                            await conn.execute(statement)
                        await conn.execute(f"PRAGMA user_version={number + 1}")
                    await conn.commit()
                except BaseException:
                    await conn.rollback()
                    raise
        finally:
            await conn.close()

    async def close(self) -> None:
        pass  # each Database closes its own connection


async def _user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row: Any = await cursor.fetchone()
    return int(row[0])


async def _tables(conn: aiosqlite.Connection) -> list[str]:
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    ) as cursor:
        return [str(row[0]) for row in await cursor.fetchall()]
