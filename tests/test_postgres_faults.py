"""PostgreSQL faults (issue 19, item 5), on a PostgreSQL server of the test's own
(testkit/privatepg.py) that is stopped and started under a running `gateway serve`:
while it is down a request fails with one clear line (no hang, no traceback); once it is
back the gateway reconnects by itself and the next clone, push and audit write work,
with nothing half-written. The shared cluster other tests use is left alone."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pyotp
import pytest

from testkit import free_port, http, privatepg, wait_for
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


STALL = Path(__file__).resolve().parent.parent / "testkit" / "stall.py"
DOWN = "the gateway's database did not answer; try again in a moment"


def cloned(g, tmp_path):
    """(alice, path, clone): a new repository alice may write, cloned."""
    alice = g.user()
    path = g.repo(g.workspace((alice, "write")))
    clone = tmp_path / "clone"
    g.git(alice, "clone", "-q", g.url(path), str(clone))
    return alice, path, clone


def test_postgresql_down_then_back_under_the_gateway(g, pg, tmp_path):
    alice, path, clone = cloned(g, tmp_path)
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


def test_postgresql_down_at_start(tmp_path, pg):
    """`serve` with its PostgreSQL down says so in one line and waits: /ready answers
    503 (a load balancer sends it nobody) until the server is back, then 200, and the
    gateway serves without being restarted."""
    pg.stop()
    g = Gateway(tmp_path / "gw", sqlite=True)
    g.env["GATEWAY_DATABASE_URL"] = pg.url
    metrics_port = free_port()
    g.data.mkdir(mode=0o700)
    (g.data / "gateway.toml").write_text(
        f'database_timeout = 3\nmetrics_listen = "127.0.0.1:{metrics_port}"\n'
    )
    offset = g.launch()
    try:
        assert wait_for(lambda: "event=database.unreachable" in g.server_log(), 30)
        assert http.get(metrics_port, "/ready") == (503, "not ready\n")
        assert http.get(metrics_port, "/health") == (200, "ok\n")
        assert g.proc is not None and g.proc.poll() is None  # waiting, not gone
        pg.start()
        g.wait_started(offset, timeout=60)
        assert http.get(metrics_port, "/ready") == (200, "ready\n")
        alice = g.user()
        assert alice.name in g.ssh(alice, "whoami").stdout
        log = g.server_log()
        unreachable = [line for line in log.splitlines() if "database.unreachable" in line]
        assert len(unreachable) == 1, unreachable  # said once, not at every try
        assert f"cannot reach PostgreSQL at postgres@127.0.0.1:{pg.port}/postgres" in unreachable[0]
        assert "event=database.reachable" in log
        assert "Traceback" not in log
    finally:
        g.stop()


def test_a_push_across_a_postgresql_restart(g, pg, tmp_path):
    """PostgreSQL stopped after the refs moved and before the push's audit row is
    written (a post-receive hook holds the push there): the push completes, and its
    audit row is written whole once the database is back."""
    alice, path, clone = cloned(g, tmp_path)
    tip = commit(clone, g, 1)
    moved, go = tmp_path / "moved", tmp_path / "go"
    hook = g.root / "hooks" / "post-receive"
    hook.parent.mkdir()
    hook.write_text(f"#!/bin/sh\ntouch {moved}\nwhile [ ! -e {go} ]; do sleep 0.1; done\n")
    hook.chmod(0o755)
    push = g.git_process(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    assert wait_for(moved.exists, 60)
    pg.stop()
    go.touch()
    time.sleep(2)  # the audit write meets the database down, and waits
    pg.start()
    out, err = push.communicate(timeout=120)
    assert push.returncode == 0, err
    assert local_git("rev-parse", "refs/heads/main", cwd=g.repo_dir(path)).strip() == tip
    pushes = [e for e in audit_actions(g, alice) if e["action"] == "repo.push"]
    assert len(pushes) == 1 and "refs/heads/main" in pushes[0]["detail"], pushes
    assert "event=audit.unwritten" not in g.server_log()
    assert "Traceback" not in g.server_log()


def test_a_clone_across_a_postgresql_restart(g, pg, tmp_path):
    """A clone whose pack is streaming when PostgreSQL restarts (the client stalls its
    reading there) completes and is complete: the database is not needed mid-pack."""
    alice, path, work = cloned(g, tmp_path)
    (work / "noise.bin").write_bytes(os.urandom(4 << 20))  # incompressible: a long pack
    local_git("add", ".", cwd=work, env=g.env)
    local_git("commit", "-qm", "noise", cwd=work, env=g.env)
    g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=work)
    streaming, go = tmp_path / "streaming", tmp_path / "go"
    ssh = " ".join(g.ssh_command(alice.key))
    stall = tmp_path / "stalled-ssh"
    stall.write_text(f'#!/bin/sh\n{ssh} "$@" | {sys.executable} {STALL} {streaming} {go}\n')
    stall.chmod(0o755)
    clone = g.git_process(
        alice,
        "clone",
        "-q",
        "--no-checkout",
        g.url(path),
        str(tmp_path / "stalled"),
        env={"GIT_SSH_COMMAND": str(stall)},
    )
    assert wait_for(streaming.exists, 60)
    pg.stop()
    pg.start()
    go.touch()
    out, err = clone.communicate(timeout=120)
    assert clone.returncode == 0, err
    local_git("fsck", "--full", cwd=tmp_path / "stalled")
    assert "Traceback" not in g.server_log()
