"""Unit tests beside the end-to-end ones: input patterns, parsing, the access decision,
the git worker's resource handling, and the store's schema."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from gateway import names, sshkeys
from gateway.commands.parse import GatewayCommand, GitRequest, parse
from gateway.errors import Refusal
from gateway.git.workers import worker
from gateway.git.workers.job import Job
from gateway.store import db as store_db
from testkit import pkt

# --- names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "a", "a-b-9", "x" * 39, "0day"])
def test_account_names_accepted(name):
    assert names.account_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "Alice", "a_b", "x" * 40, "a/b", ".a", "a b", "é"])
def test_account_names_refused(name):
    with pytest.raises(Refusal):
        names.account_name(name)


@pytest.mark.parametrize("name", ["widgets", "W_1", "a.b-c", "x" * 100, "_x"])
def test_repo_names_accepted(name):
    assert names.repo_name(name) == name


@pytest.mark.parametrize(
    "name", ["", ".hidden", "-x", "a..b", "x" * 101, "a/b", "x.git", "a b", "ü", "a\x00b", ".."]
)
def test_repo_names_refused(name):
    with pytest.raises(Refusal):
        names.repo_name(name)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("acme/widgets.git", ("acme", "widgets")),
        ("acme/widgets", ("acme", "widgets")),
        ("/acme/widgets.git", ("acme", "widgets")),
        ("ACME/Widgets.git", ("acme", "Widgets")),
    ],
)
def test_client_repo_path_forms(text, expected):
    path = names.client_repo_path(text)
    assert (path.workspace, path.name) == expected


@pytest.mark.parametrize(
    "text",
    [
        "../etc/passwd",
        "/../etc/passwd",
        "acme/../x",
        "acme/.x",
        "acme/-x",
        "-acme/x",
        "acme",
        "acme/x/y",
        "//acme/x",
        "acme/x.git.git",
        "--upload-pack=touch",
        "acme/%2e%2e",
        "~/x",
        "acme/x\n",
        "",
    ],
)
def test_client_repo_path_refused(text):
    assert names.client_repo_path(text) is None


@pytest.mark.parametrize("branch", ["main", "release/1.0", "feature-x"])
def test_branch_names_accepted(branch):
    assert names.branch_name(branch) == branch


@pytest.mark.parametrize("branch", ["-x", "a..b", "a/", "a.lock", "a b", "/a", "a//b", ""])
def test_branch_names_refused(branch):
    with pytest.raises(Refusal):
        names.branch_name(branch)


# --- command parsing ------------------------------------------------------------------


def test_parse_git_forms():
    for line in (
        "git-upload-pack 'acme/w.git'",
        "git upload-pack 'acme/w.git'",
        "git-upload-pack '/acme/w.git'",
        "git-upload-pack acme/w",
    ):
        assert parse(line) == GitRequest("git-upload-pack", names.RepoPath("acme", "w"))
    assert parse("git-receive-pack 'a/b.git'").service == "git-receive-pack"
    assert parse("git-upload-archive 'a/b.git'").service == "git-upload-archive"


def test_parse_gateway_commands():
    assert parse(None) == GatewayCommand("", ())
    assert parse("") == GatewayCommand("", ())
    assert parse("whoami") == GatewayCommand("whoami", ())
    assert parse("2sv status") == GatewayCommand("2sv", ("status",))


@pytest.mark.parametrize(
    "line,message",
    [
        ("git-upload-pack 'a/b.git", "unbalanced quotes"),
        ("git-upload-pack a/b.git\nwhoami", "control characters"),
        ("git-upload-pack a/b\x00", "control characters"),
        ("git-upload-pack a/b.git extra", "exactly one repository path"),
        ("git-upload-pack", "exactly one repository path"),
        ("git-upload-pack --upload-pack=touch /tmp/x", "exactly one repository path"),
        ("git-upload-pack -h", "Invalid repository path"),
        ("git-upload-pack ../../etc", "Invalid repository path"),
        ("x" * 5000, "too long"),
    ],
)
def test_parse_refuses(line, message):
    with pytest.raises(Refusal) as caught:
        parse(line)
    assert message in caught.value.message


# --- public keys ----------------------------------------------------------------------


def test_key_line_with_options_and_comment(tmp_path):
    key = tmp_path / "k"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "me@host", "-f", str(key)], check=True
    )
    line = (tmp_path / "k.pub").read_text().strip()
    expected = subprocess.run(
        ["ssh-keygen", "-lf", str(key) + ".pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    parsed = sshkeys.parse_line('no-pty,command="echo hi there" ' + line)
    assert parsed.fingerprint == expected
    assert parsed.comment == "me@host"
    assert parsed.algorithm == "ssh-ed25519"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "hello",
        "ssh-ed25519",
        "ssh-ed25519 AAAA",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIDx0aV8mWq8fQmB0f7n2Qm7w4p2lmY1Gk9bVYt7mI4iN",
    ],
)
def test_bad_key_lines(line):
    with pytest.raises(Refusal):
        sshkeys.parse_line(line)


# --- the git worker -------------------------------------------------------------------


@pytest.fixture
def packed_repo(tmp_path) -> tuple[Path, str]:
    work = tmp_path / "work"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "HOME": str(tmp_path),
    }
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=env)
    for i in range(50):
        (work / f"f{i}.txt").write_text(f"file {i}\n" * 50)
        subprocess.run(["git", "add", "."], cwd=work, check=True, env=env)
        subprocess.run(["git", "commit", "-qm", f"c{i}"], cwd=work, check=True, env=env)
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True, env=env)
    subprocess.run(["git", "repack", "-adq"], cwd=bare, check=True, env=env)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=bare, capture_output=True, text=True, check=True
    ).stdout.strip()
    return bare, head


class CountingSink(io.RawIOBase):
    def __init__(self) -> None:
        self.writes = 0
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.writes += 1
        self.data += bytes(b)
        return len(b)


def _fetch_request(head: str) -> bytes:
    caps = b" multi_ack_detailed side-band-64k thin-pack ofs-delta"
    return pkt(b"want " + head.encode() + caps + b"\n") + b"0000" + pkt(b"done\n")


def _open_pack_handles() -> tuple[int, int]:
    fds = sum(
        1
        for fd in os.listdir("/proc/self/fd")
        if "objects/pack" in os.path.realpath(f"/proc/self/fd/{fd}")
    )
    maps = Path("/proc/self/maps").read_text().count("objects/pack")
    return fds, maps


def test_worker_closes_the_repository(packed_repo):
    bare, head = packed_repo
    assert _open_pack_handles() == (0, 0)
    for _ in range(5):
        sink = CountingSink()
        worker.serve(Job("git-upload-pack", str(bare)), io.BytesIO(_fetch_request(head)), sink)
        assert b"PACK" in sink.data
    assert _open_pack_handles() == (0, 0)


def test_worker_writes_in_large_chunks(packed_repo):
    bare, head = packed_repo
    for i in range(40):  # a ref advertisement of many small pkt-lines
        subprocess.run(["git", "tag", f"t{i}", f"HEAD~{i}"], cwd=bare, check=True)
    sink = CountingSink()
    worker.serve(Job("git-upload-pack", str(bare)), io.BytesIO(_fetch_request(head)), sink)
    pkt_lines, data = 0, bytes(sink.data)
    while data:  # count the pkt-lines the handler produced
        size = int(data[:4], 16)
        data = data[max(size, 4) :]
        pkt_lines += 1
    # One write per small pkt-line made clones 6x slower; the worker coalesces them.
    assert pkt_lines > 20
    assert sink.writes * 10 < pkt_lines, (sink.writes, pkt_lines)
    # A pack of several side-band pkt-lines goes out one whole pkt-line per write or more.
    big = bare.parent / "big"
    subprocess.run(["git", "clone", "-q", str(bare), str(big)], check=True)
    (big / "random.bin").write_bytes(os.urandom(1 << 20))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    subprocess.run(["git", "add", "random.bin"], cwd=big, check=True)
    subprocess.run(["git", "commit", "-qm", "random"], cwd=big, check=True, env=env)
    subprocess.run(["git", "push", "-q", str(bare), "HEAD:main"], cwd=big, check=True)
    new_head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=big, capture_output=True, text=True, check=True
    ).stdout.strip()
    sink = CountingSink()
    worker.serve(Job("git-upload-pack", str(bare)), io.BytesIO(_fetch_request(new_head)), sink)
    assert len(sink.data) > 1 << 20
    assert len(sink.data) / sink.writes > 40_000, (len(sink.data), sink.writes)


# --- the store ------------------------------------------------------------------------


async def test_store_is_current_and_looks_keys_up_by_index(backend):
    db = await backend.connect()
    try:
        if backend.name == "sqlite":
            assert (await db.fetch_one("PRAGMA journal_mode"))[0] == "wal"
            assert (await db.fetch_one("PRAGMA foreign_keys"))[0] == 1
            version = (await db.fetch_one("PRAGMA user_version"))[0]
            explain = "EXPLAIN QUERY PLAN SELECT * FROM ssh_keys WHERE fingerprint = ?"
        else:
            version = (await db.fetch_one("SELECT version FROM gateway_schema"))[0]
            await db.execute("SET enable_seqscan = off")  # a tiny table: else a scan
            explain = "EXPLAIN SELECT * FROM ssh_keys WHERE fingerprint = ?"
        assert version == store_db.SCHEMA_VERSION
        plan = await db.fetch_all(explain, ("x",))
        assert any("ssh_keys_fingerprint" in str(tuple(row)) for row in plan)
    finally:
        await db.close()
    await backend.migrate()  # again: a no-op


async def test_migration_7_gives_existing_repositories_the_default_branch_rule(tmp_path):
    """What the shipped default-branch hook did becomes each existing repository's
    rule when the schema moves from 6 to 7 (SQLite: PostgreSQL runs the same SQL,
    translated)."""
    import sqlite3

    from gateway.config import Settings
    from gateway.store import branch_rules

    settings = Settings(data_dir=tmp_path)
    raw = sqlite3.connect(settings.db_path)
    for number in range(6):
        for statement in store_db.sql_of(store_db.MIGRATIONS[number], "sqlite"):
            raw.execute(statement)
    raw.execute("PRAGMA user_version=6")
    raw.execute("INSERT INTO workspaces (name, created_at) VALUES ('acme', 0)")
    raw.execute(
        "INSERT INTO repos (workspace_id, name, default_branch, created_at)"
        " VALUES (1, 'widgets', 'trunk', 0)"
    )
    raw.execute("INSERT INTO audit (at, actor, action) VALUES (0, 'operator', 'repo.add')")
    raw.commit()
    raw.close()
    async with await store_db.open_backend(settings) as backend:
        db = await backend.connect()
        try:
            rules = await branch_rules.applying(db, 1, 1)
            assert [(r.pattern, r.no_force, r.no_delete, r.no_create) for r in rules] == [
                ("refs/heads/trunk", True, True, False)
            ]
            row = await db.fetch_one("SELECT facts FROM audit")
            assert row is not None and row[0] == ""
        finally:
            await db.close()
