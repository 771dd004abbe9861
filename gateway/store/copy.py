"""`gateway db copy --to postgresql://...`: an SQLite installation moved into an empty
PostgreSQL database, row for row.

Driven by SQLite's own table list (sqlite_master), not by a list written here, so a
table a later migration adds is copied without anyone remembering to: and the target,
migrated by the same migrations, must hold exactly the same tables, or nothing is copied.
Rows keep their ids (identity sequences are set past them); sealed 2SV secrets and
recovery codes are bytes and are copied as bytes, so they stay sealed under the same
master key. The whole copy is one PostgreSQL transaction: a failure leaves the target
as migrate() left it (an empty schema), and the counts are checked before it commits.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import asyncpg

from . import url as urls
from .database import Unusable
from .postgres import PostgresBackend, _tables
from .sqlite import SqliteBackend

# Rows sent per INSERT batch: bounded memory for a big audit log.
BATCH = 5000


async def copy(source: SqliteBackend, target_url: str, pool_size: int = 2) -> list[tuple[str, int]]:
    """Copy `source` into the empty database `target_url`; (table, rows) for each table,
    in the order copied. Raises Unusable (password masked) and changes nothing in the
    target's data if it is not empty, unreachable or the copy fails."""
    where = f"PostgreSQL database {urls.describe(target_url)}"
    await source.migrate()  # the same schema version on both sides
    target = await PostgresBackend.open(target_url, pool_size)
    try:
        await _refuse_unless_empty(target, where)
        await target.migrate()
        conn = await aiosqlite.connect(source.path)
        try:
            await conn.execute("BEGIN")  # one snapshot of the source (WAL: writers go on)
            return await _copy_all(conn, target, where)
        finally:
            await conn.close()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        problem = f"copy to {where} failed, nothing kept: {exc.__class__.__name__}: {exc}"
        raise Unusable(urls.scrubbed(problem, target_url)) from None
    finally:
        await target.close()


async def _refuse_unless_empty(target: PostgresBackend, where: str) -> None:
    async with target.pool.acquire() as conn:
        found = await _tables(conn)
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise Unusable(
            f"{where} is not empty ({shown}): nothing was changed; "
            "db copy needs a new, empty database (createdb -O USER DATABASE)"
        )


async def source_tables(conn: aiosqlite.Connection) -> list[str]:
    """Every table of the SQLite schema, parents before the tables that refer to them."""
    async with conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name"
    ) as cursor:
        names = [str(row[0]) for row in await cursor.fetchall()]
    parents: dict[str, set[str]] = {}
    for name in names:
        async with conn.execute(f'PRAGMA foreign_key_list("{name}")') as cursor:
            parents[name] = {str(row[2]) for row in await cursor.fetchall()} - {name}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise RuntimeError(f"foreign keys in a cycle: {sorted(set(names) - set(ordered))}")
        ordered.extend(ready)
    return ordered


async def _copy_all(
    conn: aiosqlite.Connection, target: PostgresBackend, where: str
) -> list[tuple[str, int]]:
    tables = await source_tables(conn)
    async with target.pool.acquire() as pg, pg.transaction():
        theirs = {name.partition(".")[2] for name in await _tables(pg)} - {"gateway_schema"}
        theirs = {name for name in theirs if not name.endswith("_id_seq")}
        if theirs != set(tables):
            raise Unusable(
                f"{where}'s schema has tables {sorted(theirs)}, the SQLite one "
                f"{sorted(tables)}: nothing was copied"
            )
        counts = [(table, await _copy_table(conn, pg, table)) for table in tables]
        for table, expected in counts:
            got = await pg.fetchval(f'SELECT count(*) FROM "{table}"')
            if got != expected:
                raise Unusable(
                    f"{where}: table {table} has {got} rows after the copy, "
                    f"the SQLite one {expected}: nothing was kept"
                )
    return counts


async def _copy_table(conn: aiosqlite.Connection, pg: Any, table: str) -> int:
    async with conn.execute(f'PRAGMA table_info("{table}")') as cursor:
        info = [(str(row[1]), str(row[2]).upper()) for row in await cursor.fetchall()]
    columns = [name for name, _ in info]
    # SQLite keeps 0 in a REAL column as an integer; PostgreSQL's float8 wants a float.
    real = [i for i, (_, kind) in enumerate(info) if kind == "REAL"]
    quoted = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
    insert = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})'
    copied = 0
    async with conn.execute(f'SELECT {quoted} FROM "{table}"') as cursor:
        while rows := await cursor.fetchmany(BATCH):
            batch = [list(row) for row in rows]
            for row in batch:
                for i in real:
                    row[i] = None if row[i] is None else float(row[i])
            await pg.executemany(insert, batch)
            copied += len(batch)
    if "id" in columns and copied:
        # The identity column continues after the copied ids, not from 1.
        await pg.execute(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'),"
            f' (SELECT max(id) FROM "{table}"))'
        )
    return copied
