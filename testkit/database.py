"""Which database backend the tests run on, and a database of its own for each test
installation.

`GATEWAY_TEST_BACKEND=postgresql` (what `make test`'s second pass sets) makes every
test gateway keep its state in PostgreSQL: a database of its own on the server that
`GATEWAY_TEST_DATABASE_URL` names (default: the local socket, as user postgres), created
for it and dropped at the end of the run. Unset (or `sqlite`): the SQLite file in the
data directory, as in production by default.

Tests that touch the database carry the `database` marker (tests/conftest.py gives it
to every test that uses a gateway fixture); a gateway made for a test without it is a
mistake, since the PostgreSQL pass would skip that test: `made_for_a_test()` says so.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import subprocess
import uuid
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BACKEND = os.environ.get("GATEWAY_TEST_BACKEND", "sqlite")
SERVER_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@/postgres")
if BACKEND not in ("sqlite", "postgresql"):
    raise RuntimeError(f"GATEWAY_TEST_BACKEND must be sqlite or postgresql, not {BACKEND!r}")

POSTGRESQL = BACKEND == "postgresql"
# The password the bad-input tests put in URLs: it must appear in no message.
SECRET = "s3cret-Pa55"
_created: list[str] = []  # databases this process made, dropped by drop_all()
# Whether the running test carries the `database` marker (set by tests/conftest.py);
# None outside pytest (bench/, adversarial/).
current_test_marked: bool | None = None


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` to the end on a loop of its own (callable from sync and async tests)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _url_for(database: str) -> str:
    parts = urlsplit(SERVER_URL)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))


async def _admin(statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(SERVER_URL, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def made_for_a_test() -> None:
    if current_test_marked is False:
        raise RuntimeError(
            "this test makes a gateway (it touches the database) but has no `database` "
            "marker: the PostgreSQL pass would skip it (use a fixture from conftest.py, or "
            "mark it with @pytest.mark.database)"
        )


def new_database() -> str | None:
    """A new, empty database's URL on PostgreSQL; None on SQLite (the data dir's file)."""
    made_for_a_test()
    return new_postgres_database() if POSTGRESQL else None


def new_postgres_database(durable: bool = False) -> str:
    """A new, empty PostgreSQL database's URL whichever the run's backend (tests of
    several gateways on one PostgreSQL: tests/test_nodes.py). `durable`: commits wait
    for the disk, as the server's default (bench/), rather than not (tests)."""
    made_for_a_test()
    return _create(durable)


def _create(durable: bool = False) -> str:
    name = f"gateway_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    run(_admin(f'CREATE DATABASE "{name}"'))
    _created.append(name)
    if not durable:
        # A test's commits need not wait for the disk (the server's durability is not
        # what a test checks); the setting is this database's, not the server's.
        run(_admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    return _url_for(name)


def scratch_database() -> str | None:
    """A new, empty PostgreSQL database on either pass (for tests that move an SQLite
    installation into one), dropped at the end of the run; None if no server answers."""
    made_for_a_test()
    if not reachable():
        return None
    return _create()


def drop(url: str | None) -> None:
    if url is None:
        return
    name = urlsplit(url).path.lstrip("/")
    if name in _created:
        _created.remove(name)
        run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def drop_all() -> None:
    for name in list(_created):
        drop(_url_for(name))


def reachable() -> bool:
    """Whether the PostgreSQL server of SERVER_URL answers (for `make test`)."""
    try:
        run(_admin("SELECT 1"))
    except Exception:
        return False
    return True


def toml_line(url: str | None) -> str:
    """The setting for a gateway.toml (sshd's commands read no GATEWAY_* variable)."""
    return f'database_url = "{url}"\n' if url else ""


def one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """The single ERROR line of a failed command, with no password and no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert SECRET not in result.stdout + result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def with_password(url: str, user: str = "postgres") -> str:
    """The same server and database, as USER with the test's password."""
    scheme, _, rest = url.partition("://")
    host_and_path = rest.partition("@")[2] if "@" in rest.split("/")[0] else rest
    return f"{scheme}://{user}:{SECRET}@{host_and_path}"
