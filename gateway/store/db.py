"""Opening the SQLite database and bringing its schema up to date."""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite

# Each entry moves the schema from version N to N+1 (SQLite's `user_version`).
# Never edit a released entry: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        email TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE ssh_keys (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        public_key TEXT NOT NULL,
        title TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT 'auth' CHECK (kind IN ('auth', 'security-key')),
        source TEXT NOT NULL DEFAULT 'cli' CHECK (source IN ('cli', 'keydir', 'ssh')),
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX ssh_keys_fingerprint ON ssh_keys(fingerprint);
    CREATE INDEX ssh_keys_account ON ssh_keys(account_id);
    CREATE TABLE workspaces (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        require_2sv TEXT NOT NULL DEFAULT 'off' CHECK (require_2sv IN ('off', 'on', 'session')),
        session_window INTEGER NOT NULL DEFAULT 15,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        workspace_id INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
        PRIMARY KEY (workspace_id, account_id)
    );
    CREATE TABLE repos (
        id INTEGER PRIMARY KEY,
        workspace_id INTEGER NOT NULL REFERENCES workspaces(id),
        name TEXT NOT NULL COLLATE NOCASE,
        public INTEGER NOT NULL DEFAULT 0,
        default_branch TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (workspace_id, name)
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL DEFAULT 'ok',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_actor ON audit(actor, id);
    """,
    # 2: two-step verification. Secrets and codes are sealed (gateway/twosv/sealing.py).
    """
    CREATE TABLE twosv (
        account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
        totp_secret BLOB,
        last_step INTEGER NOT NULL DEFAULT -1,
        failures INTEGER NOT NULL DEFAULT 0,
        locked_until REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE recovery_codes (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        code BLOB NOT NULL,
        used_at INTEGER
    );
    CREATE INDEX recovery_codes_account ON recovery_codes(account_id);
    CREATE TABLE twosv_sessions (
        key_fingerprint TEXT PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        verified_at REAL NOT NULL
    );
    """,
    # 3: access keys, bound to one repository with no account.
    """
    CREATE TABLE access_keys (
        id INTEGER PRIMARY KEY,
        repo_id INTEGER NOT NULL REFERENCES repos(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL UNIQUE,
        algorithm TEXT NOT NULL,
        public_key TEXT NOT NULL,
        title TEXT NOT NULL,
        write INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    """,
    # 4: how a two-step session was opened ('totp', 'recovery-code', 'security-key'):
    # a session opened with a recovery code the SSH key alone could read proves less.
    """
    ALTER TABLE twosv_sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'unknown';
    """,
    # 5: the secret an enrolment showed, sealed, until a correct code or for a few
    # minutes: `2sv enable` run again shows the same one, so the app's entry still works.
    """
    ALTER TABLE twosv ADD COLUMN pending_secret BLOB;
    ALTER TABLE twosv ADD COLUMN pending_until REAL NOT NULL DEFAULT 0;
    """,
    # 6: a key's lifecycle: when it stops logging in (NULL: never) and when it last did
    # (written at most once a minute per key, so busy CI logins do not each write).
    """
    ALTER TABLE ssh_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE ssh_keys ADD COLUMN last_used_at INTEGER;
    """,
    # 7: branch rules, a repository's own (repo_id set) or its workspace's defaults
    # (repo_id NULL); `push` lists who may update matching refs, space-separated ('':
    # whoever may write). The shipped default-branch hook becomes a rule of each
    # repository. Audit rows gain the facts a decision had (JSON), for `--dry-run`.
    """
    CREATE TABLE branch_rules (
        id INTEGER PRIMARY KEY,
        workspace_id INTEGER NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
        repo_id INTEGER REFERENCES repos(id) ON DELETE CASCADE,
        pattern TEXT NOT NULL,
        push TEXT NOT NULL DEFAULT '',
        no_force INTEGER NOT NULL DEFAULT 0,
        no_delete INTEGER NOT NULL DEFAULT 0,
        no_create INTEGER NOT NULL DEFAULT 0,
        require_2sv_session INTEGER NOT NULL DEFAULT 0,
        require_signed INTEGER NOT NULL DEFAULT 0,
        own_keys INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX branch_rules_scope
        ON branch_rules(workspace_id, COALESCE(repo_id, 0), pattern);
    INSERT INTO branch_rules (workspace_id, repo_id, pattern, no_force, no_delete, created_at)
        SELECT workspace_id, id, 'refs/heads/' || default_branch, 1, 1, created_at FROM repos;
    ALTER TABLE audit ADD COLUMN facts TEXT NOT NULL DEFAULT '';
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


async def connect(path: Path, migrate_schema: bool = True) -> aiosqlite.Connection:
    """Open the database (creating it if needed) with WAL and foreign keys on.

    One connection is one line of transactions: code that commits must not share a
    connection with other tasks (the server gives each session its own)."""
    db = await aiosqlite.connect(path, timeout=30)
    db.row_factory = aiosqlite.Row
    if migrate_schema:
        await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA foreign_keys=ON")
    await db.execute("PRAGMA synchronous=NORMAL")
    if migrate_schema:
        await migrate(db)
    return db


async def migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cursor:
        (version,) = one(await cursor.fetchone())
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this gateway ({SCHEMA_VERSION})"
        )
    for number in range(version, SCHEMA_VERSION):
        # One transaction per step: a failed step leaves the previous version intact.
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("PRAGMA user_version") as cursor:
                (current,) = one(await cursor.fetchone())
            if current == number:  # another process may have migrated meanwhile
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        await db.execute(statement)
                await db.execute(f"PRAGMA user_version={number + 1}")
            await db.commit()
        except BaseException:
            await db.rollback()
            raise


def now() -> int:
    return int(time.time())


def one(row: aiosqlite.Row | None) -> aiosqlite.Row:
    """The row of a query that always returns one (a PRAGMA, an UPDATE ... RETURNING of
    a row known to exist): None there is a bug, so it fails loudly."""
    if row is None:
        raise RuntimeError("the query returned no row")
    return row


def inserted_id(cursor: aiosqlite.Cursor) -> int:
    """The id of the row the INSERT on `cursor` just added."""
    if cursor.lastrowid is None:
        raise RuntimeError("the INSERT added no row")
    return cursor.lastrowid
