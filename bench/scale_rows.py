"""The --scale rows (accounts with 10 keys each, workspaces with 10 repositories each,
each account a member of one workspace), written straight into the gateway's database,
SQLite (sqlite3) or PostgreSQL (asyncpg), in one transaction: bench only. The
same rows on both backends, so their figures compare."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

# (table, columns); ids of accounts and workspaces are given, the others' are the table's.
TABLES = (
    ("accounts", ("id", "name", "email", "disabled", "created_at")),
    (
        "ssh_keys",
        (
            "account_id",
            "fingerprint",
            "algorithm",
            "public_key",
            "title",
            "kind",
            "source",
            "created_at",
        ),
    ),
    ("workspaces", ("id", "name", "created_at")),
    ("members", ("workspace_id", "account_id", "role")),
    ("repos", ("workspace_id", "name", "public", "default_branch", "created_at")),
)
COUNTED = ("ssh_keys", "accounts", "repos", "workspaces")


def random_ed25519_blobs(n: int, seed: int) -> list[bytes]:
    """Public keys in SSH wire format (any 32 bytes make a syntactically valid ed25519
    key; nobody needs the private halves)."""
    rng = random.Random(seed)
    head = len(b"ssh-ed25519").to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big")
    return [head + rng.randbytes(32) for _ in range(n)]


def rows(
    first_account: int,
    first_ws: int,
    keys: int,
    repos: int,
    accounts: int,
    workspaces: int,
    prefix: str,
    seed: int,
) -> dict[str, Iterable[tuple]]:
    now = int(time.time())
    blobs = random_ed25519_blobs(keys, seed=seed)
    return {
        "accounts": (
            (first_account + a, f"{prefix}{a:05d}", f"{prefix}{a}@example.com", 0, now)
            for a in range(accounts)
        ),
        "ssh_keys": (
            (
                first_account + i % accounts,
                "SHA256:" + base64.b64encode(hashlib.sha256(b).digest()).decode().rstrip("="),
                "ssh-ed25519",
                "ssh-ed25519 " + base64.b64encode(b).decode(),
                f"key{i}",
                "auth",
                "cli",
                now,
            )
            for i, b in enumerate(blobs)
        ),
        "workspaces": ((first_ws + w, f"{prefix}ws{w:04d}", now) for w in range(workspaces)),
        "members": (
            (first_ws + a % workspaces, first_account + a, "write") for a in range(accounts)
        ),
        "repos": (
            (first_ws + r % workspaces, f"repo{r:05d}", 0, "main", now) for r in range(repos)
        ),
    }


def insert(
    where: Path | str,
    keys: int,
    repos: int,
    accounts: int = 10_000,
    workspaces: int = 1_000,
    prefix: str = "scale",
    seed: int = 11,
) -> dict[str, int]:
    """Insert the rows into the SQLite file or PostgreSQL URL `where`; the tables'
    counts afterwards."""
    sizes = (keys, repos, accounts, workspaces, prefix, seed)
    if isinstance(where, Path):
        return _insert_sqlite(where, *sizes)
    return asyncio.run(_insert_postgres(where, *sizes))


def delete(where: Path | str, prefix: str = "scale") -> None:
    # members and ssh_keys go with their workspace and account (ON DELETE CASCADE).
    statements = (
        "DELETE FROM repos WHERE workspace_id IN (SELECT id FROM workspaces WHERE name LIKE {p})",
        "DELETE FROM workspaces WHERE name LIKE {p}",
        "DELETE FROM accounts WHERE name LIKE {p}",
    )
    if isinstance(where, Path):
        db = sqlite3.connect(where, timeout=30)
        with db:
            db.execute("PRAGMA foreign_keys=ON")
            for statement in statements:
                db.execute(statement.format(p="?"), (prefix + "%",))
        db.close()
        return

    async def on_postgres() -> None:
        import asyncpg

        conn = await asyncpg.connect(where)
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement.format(p="$1"), prefix + "%")
        finally:
            await conn.close()

    asyncio.run(on_postgres())


def _insert_sqlite(path: Path, keys, repos, accounts, workspaces, prefix, seed) -> dict[str, int]:
    db = sqlite3.connect(path, timeout=30)
    with db:
        db.execute("PRAGMA foreign_keys=ON")
        first_account = db.execute("SELECT COALESCE(MAX(id), 0) FROM accounts").fetchone()[0] + 1
        first_ws = db.execute("SELECT COALESCE(MAX(id), 0) FROM workspaces").fetchone()[0] + 1
        made = rows(first_account, first_ws, keys, repos, accounts, workspaces, prefix, seed)
        for table, columns in TABLES:
            marks = ", ".join("?" * len(columns))
            db.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", made[table]
            )
    counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in COUNTED}
    db.close()
    return counts


async def _insert_postgres(url: str, keys, repos, accounts, workspaces, prefix, seed):
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            first_account = await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM accounts") + 1
            first_ws = await conn.fetchval("SELECT COALESCE(MAX(id), 0) FROM workspaces") + 1
            made = rows(first_account, first_ws, keys, repos, accounts, workspaces, prefix, seed)
            for table, columns in TABLES:
                # executemany, not COPY: asyncpg has no binary COPY encoder for citext.
                marks = ", ".join(f"${i + 1}" for i in range(len(columns)))
                await conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                    list(made[table]),
                )
        # The planner's statistics, as autovacuum would make them soon after.
        await conn.execute("ANALYZE")
        return {t: await conn.fetchval(f"SELECT COUNT(*) FROM {t}") for t in COUNTED}
    finally:
        await conn.close()
