"""The schema's migrations, for both backends, and opening the database a setting names.

`database_url` unset: the SQLite file in the data directory (gateway/store/sqlite.py);
`postgresql://...`: a PostgreSQL database through a connection pool
(gateway/store/postgres.py). Callers get a `Backend` from `open_backend()` and a
`Database` from it (gateway/store/database.py); they never learn which one it is.

How to write a migration (a new entry at the end of MIGRATIONS; never edit one that was
released): SQLite's SQL, as the entries below, in this subset, which PostgreSQL gets
translated word for word (gateway/store/postgres.py: ddl()):

- column types INTEGER (PostgreSQL BIGINT), REAL (DOUBLE PRECISION), TEXT (TEXT COLLATE
  "C", so that it sorts as SQLite's BINARY), BLOB (BYTEA); `id INTEGER PRIMARY KEY` for a
  table's own id (an identity column there); `TEXT ... COLLATE NOCASE` for a
  case-insensitive name (citext COLLATE "C": the same folding of A-Z, the same order);
- CREATE TABLE, CREATE [UNIQUE] INDEX, ALTER TABLE ... ADD COLUMN, UPDATE/INSERT of
  plain values, CHECK, DEFAULT, REFERENCES ... ON DELETE CASCADE;
- statements separated by `;` (none inside a string literal).

An entry that needs SQL outside that subset is a `Dialects(sqlite=..., postgresql=...)`
pair instead of a string: the same schema, said in each. Each entry runs in one
transaction on both backends, with the schema version (SQLite's `user_version`,
PostgreSQL's `gateway_schema` table) moved in the same transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .database import Backend, Row, Unusable

if TYPE_CHECKING:
    from ..config import Settings


@dataclass(frozen=True)
class Dialects:
    """A migration said once for each backend (see the module's docstring)."""

    sqlite: str
    postgresql: str


# Each entry moves the schema from version N to N+1.
MIGRATIONS: list[str | Dialects] = [
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
        ON branch_rules(workspace_id, (COALESCE(repo_id, 0)), pattern);
    INSERT INTO branch_rules (workspace_id, repo_id, pattern, no_force, no_delete, created_at)
        SELECT workspace_id, id, 'refs/heads/' || default_branch, 1, 1, created_at FROM repos;
    ALTER TABLE audit ADD COLUMN facts TEXT NOT NULL DEFAULT '';
    """,
    # 8: the keys an account signs commits and tags with (Git's gpg.format=ssh). A key
    # signs for one account only, so that "the pusher's own keys" means one thing;
    # titles are unique per account, so a title names one key.
    """
    CREATE TABLE signing_keys (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
        fingerprint TEXT NOT NULL UNIQUE,
        algorithm TEXT NOT NULL,
        public_key TEXT NOT NULL,
        title TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (account_id, title)
    );
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def sql_of(entry: str | Dialects, backend: str) -> list[str]:
    """The statements of one migration, as SQLite's (the entry) or for `backend`."""
    if isinstance(entry, Dialects):
        text = entry.sqlite if backend == "sqlite" else entry.postgresql
    else:
        text = entry
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def pending(version: int, foreign_tables: list[str], where: str) -> range:
    """The migrations to run on a database at `version`, or a refusal that changes
    nothing: a schema newer than this gateway's, or no gateway schema in a database that
    already holds tables (another application's)."""
    if version > SCHEMA_VERSION:
        raise Unusable(
            f"{where} has schema version {version}, newer than this gateway's "
            f"({SCHEMA_VERSION}): run the newer gateway, or restore a backup made for this one"
        )
    if version == 0 and foreign_tables:
        shown = ", ".join(foreign_tables[:3]) + (", ..." if len(foreign_tables) > 3 else "")
        raise Unusable(
            f"{where} holds tables of another application ({shown}) and no gateway "
            "schema: nothing was changed; point database_url at an empty database"
        )
    return range(version, SCHEMA_VERSION)


async def open_backend(settings: Settings, migrate: bool = True) -> Backend:
    """The database `settings` name, its schema brought up to date unless `migrate` is
    False (sessions and sshd's commands: `gateway serve` and `init` migrate)."""
    backend: Backend
    if settings.database_url:
        from .postgres import PostgresBackend

        backend = await PostgresBackend.open(
            settings.database_url, settings.database_pool_size, settings.database_timeout
        )
    else:
        from .sqlite import SqliteBackend

        backend = SqliteBackend(settings.db_path)
    if migrate:
        try:
            await backend.migrate()
        except BaseException:
            await backend.close()
            raise
    return backend


def now() -> int:
    return int(time.time())


def one(row: Row | None) -> Row:
    """The row of a query that always returns one (an UPDATE ... RETURNING of a row known
    to exist): None there is a bug, so it fails loudly."""
    if row is None:
        raise RuntimeError("the query returned no row")
    return row
