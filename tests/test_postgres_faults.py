"""PostgreSQL faults (issue 19, item 5), on a PostgreSQL server of the test's own
(testkit/privatepg.py) that is stopped and started under a running `gateway serve`:
while it is down a request fails with one clear line (no hang, no traceback); once it is
back the gateway reconnects by itself and the next clone, push and audit write work,
with nothing half-written. The shared cluster other tests use is left alone."""

from __future__ import annotations

import pyotp
import pytest

from testkit import privatepg
from testkit.localgit import local_git
from testkit.server import Gateway
from testkit.twosv import URI_RE, Session, audit_actions, code_at, fresh_code

pytestmark = [
    pytest.mark.database,
    pytest.mark.skipif(bool(privatepg.missing()), reason=privatepg.missing() or ""),
]


@pytest.fixture
def pg():
    server = privatepg.PrivatePostgres()
    server.start()
    yield server
    server.close()


@pytest.fixture
def g(tmp_path, pg):
    gateway = Gateway(tmp_path / "gw", sqlite=True)
    gateway.env["GATEWAY_DATABASE_URL"] = pg.url
    (gateway.data).mkdir(mode=0o700)
    (gateway.data / "gateway.toml").write_text("database_timeout = 3\n")
    gateway.cli("init")
    gateway.start()
    yield gateway
    gateway.stop()


def commit(clone, g, n):
    (clone / f"f{n}.txt").write_text(f"{n}\n")
    local_git("add", ".", cwd=clone, env=g.env)
    local_git("commit", "-qm", f"c{n}", cwd=clone, env=g.env)
    return local_git("rev-parse", "HEAD", cwd=clone).strip()


DOWN = "the gateway's database did not answer; try again in a moment"


def test_postgresql_down_then_back_under_the_gateway(g, pg, tmp_path):
    alice = g.user()
    ws = g.workspace((alice, "write"))
    path = g.repo(ws)
    clone = tmp_path / "clone"
    g.git(alice, "clone", "-q", g.url(path), str(clone))
    first = commit(clone, g, 1)
    g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)

    pg.stop()
    # Clone, push and an SSH command while it is down: one clear line each, at once
    # (no hang), nothing changed.
    for result in (
        g.git(alice, "clone", "-q", g.url(path), str(tmp_path / "down"), check=False),
        g.git(alice, "push", "-q", "origin", f"{commit(clone, g, 2)}:main", cwd=clone, check=False),
        g.ssh(alice, "whoami"),
    ):
        assert result.returncode != 0
        assert DOWN in result.stderr, result.stderr
    assert local_git("rev-parse", "refs/heads/main", cwd=g.repo_dir(path)).strip() == first
    assert "event=auth.database" in g.server_log()
    assert "Traceback" not in g.server_log()

    pg.start()
    # The gateway reconnects by itself: no restart of `gateway serve`.
    second = local_git("rev-parse", "HEAD", cwd=clone).strip()
    g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    assert second in g.git(alice, "ls-remote", g.url(path)).stdout
    g.git(alice, "clone", "-q", g.url(path), str(tmp_path / "back"))
    assert alice.name in g.ssh(alice, "whoami").stdout


def test_an_enrolment_across_a_postgresql_restart(g, pg):
    """A session at the 2SV prompt holds no database connection, so a restart under it
    costs nothing: the code typed afterwards enables 2SV on a new connection, and the
    enrolment's state and audit row are whole."""
    alice = g.user()
    session = Session(g, alice, "2sv", "enable")
    secret = pyotp.parse_uri(session.read_until(URI_RE).group(1)).secret
    pg.stop()
    pg.start()
    session.answer(code_at(secret))
    result = session.finish()
    assert result.returncode == 0, result.stderr
    assert "enabled" in g.ssh(alice, "2sv", "status").stdout
    actions = [entry["action"] for entry in audit_actions(g, alice)]
    assert actions.count("2sv.enable") == 1
    verify = g.ssh(alice, "2sv", "verify", input=fresh_code(secret) + "\n")
    assert verify.returncode == 0, verify.stderr
