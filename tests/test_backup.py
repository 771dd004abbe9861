"""`gateway backup` (issue #7 item 9): taken while pushes run, restored into a new data
directory, and everything works there: accounts, keys, policy, 2SV enrolment."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from testkit import GATEWAY, Gateway, database, local_git, unique
from testkit.twosv import enable, fresh_code

# gateway backup copies an SQLite installation; on PostgreSQL it refuses, pointing at
# pg_dump (tests/test_postgres.py: test_backup_of_a_postgresql_installation_is_refused).
pytestmark = pytest.mark.skipif(database.POSTGRESQL, reason="backup is SQLite's")


@pytest.fixture
def servers(tmp_path):
    started: list[Gateway] = []

    def make(root: Path) -> Gateway:
        g = Gateway(root)
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()


def push_loop(g: Gateway, user, clone: Path, stop: threading.Event, pushed: list) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        (clone / f"f{n}.txt").write_text(f"{n}\n")
        local_git("add", ".", cwd=clone, env=g.env)
        local_git("commit", "-qm", f"c{n}", cwd=clone, env=g.env)
        result = g.git(user, "push", "-q", "origin", "HEAD:main", cwd=clone, check=False)
        if result.returncode == 0:
            pushed.append(local_git("rev-parse", "HEAD", cwd=clone).strip())


def test_backup_while_pushing_then_restore_everything_works(servers, tmp_path):
    g = servers(tmp_path / "live")
    g.cli("init")
    g.start()
    alice, bob = g.user(), g.user()
    ws = g.workspace((alice, "admin"), (bob, "write"))
    path = g.repo(ws)
    secret, codes, _ = enable(g, alice)
    g.cli("workspace", "require-2sv", ws, "on")
    clone = tmp_path / "clone"
    g.git(alice, "clone", "-q", g.url(path), str(clone))

    stop, pushed = threading.Event(), []
    pusher = threading.Thread(target=push_loop, args=(g, alice, clone, stop, pushed))
    pusher.start()
    try:
        while len(pushed) < 2:
            time.sleep(0.2)
        dest = tmp_path / "backup"
        result = g.cli("backup", str(dest))  # while pushes go on
        time.sleep(1)
    finally:
        stop.set()
        pusher.join(120)
    assert "Backup complete" in result.stdout
    assert len(pushed) >= 3
    manifest = json.loads((dest / "backup.json").read_text())
    assert set(manifest["files"]) >= {"gateway.db", "master.key", "host_keys/ssh_host_ed25519_key"}
    assert (dest / "master.key").stat().st_mode & 0o777 == 0o600
    with sqlite3.connect(dest / "gateway.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # Restore: the backup plus the repositories (copied after it) into a new data dir.
    g.stop()
    restored = servers(tmp_path / "restored")
    restored.data.mkdir(mode=0o700)
    for name in ("gateway.db", "master.key"):
        shutil.copy2(dest / name, restored.data / name)
    shutil.copytree(dest / "host_keys", restored.data / "host_keys")
    shutil.copytree(g.data / "repos", restored.data / "repos")
    restored.start()

    # The same host key, accounts, keys, workspace policy and 2SV enrolment.
    assert (restored.data / "host_keys" / "ssh_host_ed25519_key.pub").read_bytes() == (
        g.data / "host_keys" / "ssh_host_ed25519_key.pub"
    ).read_bytes()
    who = restored.ssh(alice, "whoami")
    assert who.returncode == 0 and alice.name in who.stdout, who.stderr
    refused = restored.git(bob, "ls-remote", restored.url(path), check=False)
    assert f'Workspace "{ws}" requires two-step verification.' in refused.stderr
    verify = restored.ssh(alice, "2sv", "verify", input=fresh_code(secret) + "\n")
    assert verify.returncode == 0, verify.stderr  # the sealed secret opens: master key came along
    recovered = restored.ssh(alice, "recovery-codes")
    assert recovered.returncode == 0 and codes[0] in recovered.stdout
    copy = tmp_path / "after"
    restored.git(alice, "clone", "-q", restored.url(path), str(copy))
    assert local_git("rev-parse", "HEAD", cwd=copy).strip() == pushed[-1]
    local_git("fsck", "--full", cwd=restored.repo_dir(path))


def run_backup(g: Gateway, dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GATEWAY, "--data-dir", str(g.data), "backup", str(dest)],
        capture_output=True,
        text=True,
        env=g.env,
        timeout=60,
    )


def test_backup_refuses_a_used_destination_and_a_missing_database(servers, tmp_path):
    g = servers(tmp_path / "gw")
    g.cli("init")
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine\n")
    result = run_backup(g, used)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"ERROR: Backup destination {used} is not empty: give a new or empty directory"
    )
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_backup(g, empty).returncode == 0
    assert (empty / "gateway.db").exists()
    blocked = tmp_path / "file"
    blocked.write_text("x")
    result = run_backup(g, blocked / "sub")
    assert result.returncode == 1 and result.stderr.startswith(
        "ERROR: Cannot create backup destination"
    )
    nothing = servers(tmp_path / "nothing")
    result = run_backup(nothing, tmp_path / "b2")
    assert result.returncode == 1 and "nothing to back up" in result.stderr
    assert not (tmp_path / "b2").exists()
    assert "Traceback" not in result.stderr


def test_a_failed_backup_leaves_nothing(servers, tmp_path):
    g = servers(tmp_path / "gw")
    g.cli("init")
    (g.data / "gateway.db").write_bytes(b"not a database at all" * 100)
    dest = tmp_path / unique("bk")
    result = run_backup(g, dest)
    assert result.returncode == 1 and result.stderr.startswith("ERROR: Cannot back up the database")
    assert not dest.exists()
