"""`gateway db copy --to postgresql://...` (issue 19, item 4): an SQLite installation made
with real commands (accounts, keys, 2SV with a real TOTP, a workspace requiring it, a
repository with a push, an access key), copied into an empty PostgreSQL database, then
served from there with the same data directory: the same key logs in, the same
authenticator passes 2SV, the repository clones, the audit rows came along. Needs a
PostgreSQL server (testkit/database.py's SERVER_URL) on either pass."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import asyncpg
import pytest

from testkit import database
from testkit.database import SECRET, one_error, with_password
from testkit.keys import make_key
from testkit.localgit import local_git
from testkit.server import Gateway
from testkit.twosv import enable, fresh_code

pytestmark = pytest.mark.database


@pytest.fixture
def source(tmp_path):
    g = Gateway(tmp_path / "src", sqlite=True)
    g.cli("init")
    yield g
    g.stop()


@pytest.fixture
def target():
    url = database.scratch_database()
    if url is None:
        pytest.skip(f"no PostgreSQL server answers at {database.SERVER_URL}")
    yield with_password(url)
    database.drop(url)


def sqlite_counts(g: Gateway) -> dict[str, int]:
    with sqlite3.connect(g.data / "gateway.db") as db:
        names = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {n: db.execute(f'SELECT count(*) FROM "{n}"').fetchone()[0] for n in names}


def postgres_tables(url: str) -> set[str]:
    async def read() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        finally:
            await conn.close()
        return {r[0] for r in rows} - {"gateway_schema"}

    return database.run(read())


def copied(result: subprocess.CompletedProcess) -> dict[str, int]:
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        if line.endswith(" rows") and ": " in line:
            table, _, count = line.partition(": ")
            rows[table] = int(count.split()[0])
    return rows


def test_copy_an_installation_then_serve_it_from_postgresql(source, target, tmp_path):
    g = source
    g.start()
    alice, bob = g.user(), g.user()
    ws = g.workspace((alice, "admin"), (bob, "write"))
    path = g.repo(ws)
    secret, codes, _ = enable(g, alice)
    g.cli("workspace", "require-2sv", ws, "on")
    deploy = make_key(g.keys_dir, "deploy")
    g.cli("access-key", "add", path, str(deploy) + ".pub")
    clone = tmp_path / "clone"
    g.git(alice, "clone", "-q", g.url(path), str(clone))
    (clone / "a.txt").write_text("one\n")
    local_git("add", ".", cwd=clone, env=g.env)
    local_git("commit", "-qm", "one", cwd=clone, env=g.env)
    g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    head = local_git("rev-parse", "HEAD", cwd=clone).strip()
    g.stop()

    before = sqlite_counts(g)
    rows = copied(g.cli("db", "copy", "--to", target))
    # Every table of the schema was copied, with every row: a table a migration adds
    # and the copy left out fails here.
    assert rows == before
    assert set(rows) == postgres_tables(target)
    assert rows["audit"] > 0 and rows["twosv"] == 1 and rows["recovery_codes"] == len(codes)

    # A second copy into the now full database: one ERROR line, nothing changed.
    again = g.cli("db", "copy", "--to", target, check=False)
    one_error(again, "is not empty", "nothing was changed")

    # Serve from PostgreSQL, the SQLite file out of the way.
    (g.data / "gateway.db").rename(g.data / "gateway.db.moved")
    g.env["GATEWAY_DATABASE_URL"] = target
    g.start()
    who = g.ssh(alice, "whoami")
    assert who.returncode == 0 and alice.name in who.stdout, who.stderr
    refused = g.git(bob, "ls-remote", g.url(path), check=False)
    assert f'Workspace "{ws}" requires two-step verification.' in refused.stderr
    verify = g.ssh(alice, "2sv", "verify", input=fresh_code(secret) + "\n")
    assert verify.returncode == 0, verify.stderr  # the sealed secret still opens
    after = tmp_path / "after"
    g.git(alice, "clone", "-q", g.url(path), str(after))
    assert local_git("rev-parse", "HEAD", cwd=after).strip() == head
    audit = json.loads(g.cli("audit", "--account", alice.name, "--json", "--limit", "500").stdout)
    assert "2sv.enable" in {entry["action"] for entry in audit}
    carol = g.user()  # new ids continue after the copied ones
    assert carol.name in g.cli("account", "list").stdout


def test_copy_refuses_a_database_that_is_not_empty(source, target):
    async def other_app() -> None:
        conn = await asyncpg.connect(target)
        await conn.execute("CREATE TABLE invoices (id int)")
        await conn.close()

    database.run(other_app())
    one_error(
        source.cli("db", "copy", "--to", target, check=False),
        "is not empty (public.invoices)",
        "nothing was changed",
    )
    assert postgres_tables(target) == {"invoices"}


def test_copy_refuses_a_bad_url_and_an_installation_already_on_postgresql(source):
    bad = f"mysql://root:{SECRET}@db/gateway"
    one_error(source.cli("db", "copy", "--to", bad, check=False), "must be a PostgreSQL URL")
    source.env["GATEWAY_DATABASE_URL"] = f"postgresql://u:{SECRET}@127.0.0.1:1/x"
    one_error(
        source.cli("db", "copy", "--to", f"postgresql://u:{SECRET}@127.0.0.1:1/y", check=False),
        "already names",
    )
