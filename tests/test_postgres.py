"""PostgreSQL's bad input (issue 19): a malformed `database_url`, a refused login, a
server that does not answer, a database of a newer schema, a database of another
application. Each is one `ERROR:` line naming the problem, nothing created or changed,
and the password in no message. Against the real server of the PostgreSQL pass
(testkit/database.py); on the SQLite pass only the checks that need no server run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import asyncpg
import pytest

from gateway.store import db as store_db
from gateway.store import postgres
from gateway.store import url as urls
from testkit import GATEWAY, database, free_port
from testkit.database import SECRET, one_error, with_password

needs_server = pytest.mark.skipif(
    not database.POSTGRESQL, reason="needs the PostgreSQL pass's server"
)


def cli(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GATEWAY, "--data-dir", str(tmp_path / "var"), *args],
        capture_output=True,
        text=True,
        env=cli_env(tmp_path, url),
        timeout=120,
    )


def cli_env(tmp_path: Path, url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        "HOME": str(tmp_path),
        "GATEWAY_DATABASE_URL": url,
    }


def tables(url: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'public' AND relkind = 'r' ORDER BY 1"
            )
            extensions = await conn.fetch("SELECT extname FROM pg_extension ORDER BY 1")
        finally:
            await conn.close()
        return [r[0] for r in rows] + [f"extension:{r[0]}" for r in extensions]

    return database.run(read())


# --- no server needed -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, problem",
    [
        (f"mysql://root:{SECRET}@db/gateway", "must be a PostgreSQL URL"),
        (f"postgresql://root:{SECRET}@db:port/gateway", "is not a URL"),
        (f"postgresql://root:{SECRET}@db/gateway/extra", "not a database name"),
    ],
)
def test_a_malformed_database_url_is_one_error_without_the_password(tmp_path, url, problem):
    for command in (["init"], ["config", "check"], ["account", "list"]):
        line = one_error(cli(tmp_path, url, *command), "GATEWAY_DATABASE_URL", problem)
        assert urls.MASK in line
    assert not (tmp_path / "var").exists()  # nothing made


def test_backup_of_a_postgresql_installation_is_refused(tmp_path):
    url = f"postgresql://gateway:{SECRET}@db.example/gateway"
    one_error(cli(tmp_path, url, "backup", str(tmp_path / "dest")), "pg_dump")
    assert not (tmp_path / "dest").exists()


def test_passwords_are_masked_in_every_form():
    assert urls.masked(f"postgresql://u:{SECRET}@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert SECRET not in urls.masked(f"postgresql://h/db?sslmode=require&password={SECRET}")
    assert urls.masked("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_wrong_password_names_the_problem_and_masks_it():
    """The server here trusts every local login, so the driver's own error stands in."""
    url = f"postgresql://alice:{SECRET}@db.example:5432/gateway"
    refused = asyncpg.InvalidPasswordError('password authentication failed for user "alice"')
    line = postgres._connect_problem(url, refused)
    assert "wrong password" in line and "alice@db.example:5432/gateway" in line
    assert SECRET not in line and urls.MASK in line
    # A driver message that quotes the password has it scrubbed too.
    assert SECRET not in postgres._connect_problem(url, OSError(f"bad {SECRET}"))


def test_placeholders_are_translated_outside_quotes_only():
    assert postgres.translate("SELECT '?', ? WHERE a = ? AND b = \"?\"") == (
        "SELECT '?', $1 WHERE a = $2 AND b = \"?\"",
        False,
    )
    assert postgres.translate(" update t SET a = ?")[1] is True


def test_every_migration_translates_to_postgresql_types():
    for entry in store_db.MIGRATIONS:
        for statement in store_db.sql_of(entry, "postgresql"):
            translated = postgres.ddl(statement)
            for sqlite_only in (" BLOB", " REAL", "NOCASE", " INTEGER"):
                assert sqlite_only not in translated, translated


# --- against the server -----------------------------------------------------------------


@needs_server
@pytest.mark.database
def test_an_unreachable_server_is_one_error(tmp_path):
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/gateway"
    one_error(cli(tmp_path, url, "init"), "cannot reach PostgreSQL at postgres@127.0.0.1:1")
    # serve waits for it (tests/test_postgres_faults.py), said in one line, password masked.
    serve = subprocess.Popen(
        [
            *GATEWAY,
            "--data-dir",
            str(tmp_path / "var"),
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(tmp_path, url),
    )
    assert serve.stdout is not None
    seen = []
    while not seen or "database.unreachable" not in seen[-1]:
        seen.append(serve.stdout.readline())
        assert seen[-1], "".join(seen)  # serve ended without saying it
    line = seen[-1]
    serve.terminate()
    rest = serve.communicate(timeout=30)[0]
    assert serve.returncode == 0, rest
    assert "cannot reach PostgreSQL" in line, line
    assert SECRET not in "".join(seen) + rest and "Traceback" not in rest
    assert "database.unreachable" not in rest  # said once


@needs_server
@pytest.mark.database
def test_a_refused_login_is_one_error(tmp_path):
    url = with_password(database.new_database() or "", user="nobody_here")
    one_error(cli(tmp_path, url, "init"), "refused the login", 'role "nobody_here"')


@needs_server
@pytest.mark.database
def test_a_missing_database_is_one_error(tmp_path):
    url = with_password(database.SERVER_URL.rpartition("/")[0] + "/no_such_gateway_db")
    one_error(cli(tmp_path, url, "init"), "does not exist", "create it first")


@needs_server
@pytest.mark.database
def test_a_database_of_another_application_is_left_alone(tmp_path):
    url = database.new_database() or ""

    async def other_app() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE invoices (id int); CREATE TABLE customers (id int)")
        await conn.close()

    database.run(other_app())
    before = tables(url)
    for command in (["init"], ["account", "list"]):
        one_error(
            cli(tmp_path, with_password(url), *command),
            "holds tables of another application (public.customers, public.invoices",
            "nothing was changed",
        )
    assert tables(url) == before  # no gateway_schema, no citext, nothing else
    database.drop(url)


@needs_server
@pytest.mark.database
def test_a_newer_schema_is_refused_and_left_as_it_is(tmp_path):
    url = database.new_database() or ""
    assert cli(tmp_path, url, "init").returncode == 0
    newer = store_db.SCHEMA_VERSION + 1

    async def bump() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute("UPDATE gateway_schema SET version = $1", newer)
        await conn.close()

    database.run(bump())
    before = tables(url)
    one_error(
        cli(tmp_path, with_password(url), "account", "list"),
        f"has schema version {newer}, newer than this gateway's ({store_db.SCHEMA_VERSION})",
    )
    assert tables(url) == before
    database.drop(url)


@needs_server
@pytest.mark.database
def test_config_check_shows_the_backend_masked_and_the_pool(tmp_path):
    url = with_password(database.SERVER_URL)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "gateway.toml").write_text("database_pool_size = 4\n")
    result = cli(tmp_path, url, "config", "check")
    assert SECRET not in result.stdout + result.stderr
    assert "database_pool_size = 4" in result.stdout
    assert f"database_url = {urls.masked(url)!r}".replace("'", '"') in result.stdout
    assert "# database: PostgreSQL, " + urls.masked(url) + ", a pool of up to 4" in result.stdout
