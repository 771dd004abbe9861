"""Protocol v2 for upload-pack (gateway/git/upload/v2.py), driven by the real git over
ssh against a real `gateway serve`: what git asks for in v2 is served, v0 and v1 still
are when forced, and bad v2 requests get one ERR line each."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testkit import Gateway, local_git
from testkit.localgit import commit


def client_fsck(clone: Path) -> None:
    result = subprocess.run(
        ["git", "fsck", "--full", "--strict", "--no-dangling"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def repo(gw: Gateway, work: Path):
    alice = gw.user()
    ws = gw.workspace((alice, "write"))
    path = gw.repo(ws)
    tree = work / "tree"
    local_git("init", "-q", "-b", "main", str(tree), cwd=work)
    return alice, path, tree


TRACE = {"GIT_TRACE_PACKET": "1"}


PACKET = re.compile(r"packet:\s+(\S+)([<>]) (.*)$")


def packets(result, direction: str = "") -> list[str]:
    """The pkt-lines GIT_TRACE_PACKET showed (only those received, "<", or sent, ">",
    if DIRECTION says so), their payloads without the newline; side-band lines left out."""
    out = []
    for line in result.stderr.splitlines():
        match = PACKET.search(line)
        if match and match[1] != "sideband" and direction in ("", match[2]):
            out.append(match[3])
    return out


def v2(gw: Gateway, user, *args: str, cwd: Path | None = None, check: bool = True):
    """git ARGS asking for protocol v2 (the tests' git config says v0), traced."""
    return gw.git(user, "-c", "protocol.version=2", *args, cwd=cwd, check=check, env=TRACE)


def push(gw, user, path, tree, *refspecs: str) -> None:
    gw.git(user, "push", "-q", gw.url(path), *(refspecs or ("main",)), cwd=tree)


def test_clone_and_incremental_fetch_in_v2(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    clone = work / "clone"
    seen = packets(v2(gw, alice, "clone", gw.url(path), str(clone)))
    assert "version 2" in seen and "command=ls-refs" in seen and "command=fetch" in seen
    client_fsck(clone)
    commit(tree, "b.txt", "b\n")
    tip = commit(tree, "c.txt", "c\n")
    push(gw, alice, path, tree)
    seen = packets(v2(gw, alice, "fetch", "origin", cwd=clone))
    assert "version 2" in seen and "acknowledgments" in seen and "packfile" in seen
    assert local_git("rev-parse", "origin/main", cwd=clone).strip() == tip
    client_fsck(clone)
