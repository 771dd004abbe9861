"""Protocol v2 for upload-pack (gateway/git/upload/v2.py), driven by the real git over
ssh against a real `gateway serve`: what git asks for in v2 is served as C git serves it,
v0 and v1 still are when forced, and bad v2 requests get one ERR line each while the
server goes on serving. Each test asks for the version it is about (`-c
protocol.version=N`), whatever the client's default."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.commands.git import RequestWatch
from testkit import Gateway, local_git, pkt
from testkit.localgit import client_fsck, commit
from testkit.pktline import DELIM, parse_v2
from testkit.sshclient import connect


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
    """git ARGS asking for protocol v2 (git's default since 2.26, said all the same),
    traced."""
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


def c_git(*args: str, cwd: Path) -> str:
    """C git on the client side, for what the gateway's answer is compared with."""
    return local_git("-c", "protocol.version=2", *args, cwd=cwd)


def tagged_history(gw, user, path, tree) -> None:
    """Two branches, a lightweight tag, annotated tags (one of a tag), pushed."""
    commit(tree, "a.txt", "a\n")
    local_git("tag", "light", cwd=tree)
    commit(tree, "b.txt", "b\n")
    local_git("tag", "-a", "-m", "v1", "v1.0", cwd=tree)
    local_git("tag", "-a", "-m", "of a tag", "v1.0-signed", "v1.0", cwd=tree)
    local_git("checkout", "-q", "-b", "topic", cwd=tree)
    commit(tree, "t.txt", "t\n")
    local_git("checkout", "-q", "main", cwd=tree)
    push(gw, user, path, tree, "--tags", "main", "topic")


def test_version_2_when_asked_and_v0_or_v1_when_forced(gw, repo, work):
    alice, path, tree = repo
    tagged_history(gw, alice, path, tree)
    for version, first in (("2", "version 2"), ("1", "version 1"), ("0", None)):
        clone = work / f"clone{version}"
        result = gw.git(
            alice,
            "-c",
            f"protocol.version={version}",
            "clone",
            gw.url(path),
            str(clone),
            env=TRACE,
        )
        received = packets(result, "<")
        if first:
            assert received[0] == first
        else:  # v0: the refs straight away, HEAD's line with the capabilities
            assert "HEAD" in received[0] and not received[0].startswith("version")
        assert ("command=fetch" in packets(result, ">")) is (version == "2")
        client_fsck(clone)
        assert local_git("rev-parse", "origin/topic", cwd=clone) == local_git(
            "rev-parse", "topic", cwd=tree
        )


def test_push_in_v1_and_when_v2_is_asked(gw, repo, work):
    # receive-pack has no v2 in git: asked for it, it answers in v0 (as C git's does);
    # asked for v1 it says `version 1` first.
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    for version in ("1", "2"):
        tip = commit(tree, f"{version}.txt", "x\n")
        result = gw.git(
            alice,
            "-c",
            f"protocol.version={version}",
            "push",
            gw.url(path),
            "main",
            cwd=tree,
            env=TRACE,
        )
        received = packets(result, "<")
        assert (received[0] == "version 1") is (version == "1"), received[:2]
        assert "version 2" not in received
        assert local_git("rev-parse", "main", cwd=gw.repo_dir(path)).strip() == tip


def test_ls_remote_with_and_without_patterns_as_c_git_lists(gw, repo, work):
    alice, path, tree = repo
    tagged_history(gw, alice, path, tree)
    server = gw.repo_dir(path)
    # git 2.39 matches patterns itself; --tags and --heads it sends as ref-prefix lines.
    cases = [(), ("--tags",), ("--heads",), ("main",), ("refs/heads/topic", "v1.0")]
    for words in cases:
        options = [w for w in words if w.startswith("--")]
        patterns = [w for w in words if not w.startswith("--")]
        result = v2(gw, alice, "ls-remote", *options, gw.url(path), *patterns)
        expected = c_git("ls-remote", *options, f"file://{server}", *patterns, cwd=work)
        assert result.stdout == expected and expected
        sent = packets(result, ">")
        assert "command=ls-refs" in sent
        assert ("ref-prefix refs/tags/" in sent) is (options == ["--tags"])
    listed = v2(gw, alice, "ls-remote", "--symref", gw.url(path), "HEAD").stdout
    assert listed.startswith("ref: refs/heads/main\tHEAD\n")


def test_tags_come_with_a_fetch_include_tag(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    clone = work / "clone"
    v2(gw, alice, "clone", "-q", gw.url(path), str(clone))
    commit(tree, "b.txt", "b\n")
    local_git("tag", "-a", "-m", "release", "v2.0", cwd=tree)
    push(gw, alice, path, tree, "main", "v2.0")
    result = v2(gw, alice, "fetch", "origin", cwd=clone)
    assert "include-tag" in packets(result, ">")
    assert local_git("cat-file", "-t", "v2.0", cwd=clone).strip() == "tag"
    assert local_git("rev-parse", "v2.0", cwd=clone) == local_git("rev-parse", "v2.0", cwd=tree)
    client_fsck(clone)
    # Up to date: ls-refs only, no fetch command.
    again = v2(gw, alice, "fetch", "origin", cwd=clone)
    assert "command=ls-refs" in packets(again, ">")
    assert "command=fetch" not in packets(again, ">")


def test_an_empty_repository_has_an_unborn_head(gw, repo, work):
    alice, path, _ = repo
    server = gw.repo_dir(path)
    local_git("symbolic-ref", "HEAD", "refs/heads/trunk", cwd=server)
    clone = work / "clone"
    result = v2(gw, alice, "clone", gw.url(path), str(clone))
    assert "empty repository" in result.stderr
    assert "unborn HEAD symref-target:refs/heads/trunk" in packets(result, "<")
    assert local_git("symbolic-ref", "HEAD", cwd=clone).strip() == "refs/heads/trunk"
    client_fsck(clone)


def test_a_fetch_that_needs_several_rounds(gw, repo, work, monkeypatch):
    # The client's history has many commits the server never saw: haves in rounds,
    # NAKs, then the common ones ACKed (and `ready`) and a pack that fsck finds whole.
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    clone = work / "clone"
    v2(gw, alice, "clone", "-q", gw.url(path), str(clone))
    # Dated after the common commit (not in the same second), so that git's first round
    # of haves is the client's own commits, never the common one.
    later = int(local_git("log", "-1", "--format=%ct", cwd=clone)) + 100
    for i in range(40):
        monkeypatch.setenv("GIT_COMMITTER_DATE", f"{later + i} +0000")
        commit(clone, f"mine{i}.txt", f"{i}\n")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    for i in range(3):
        tip = commit(tree, f"theirs{i}.txt", f"{i}\n")
    push(gw, alice, path, tree)
    result = v2(gw, alice, "fetch", "origin", cwd=clone)
    received = packets(result, "<")
    assert received.count("acknowledgments") >= 2 and "NAK" in received
    assert "ready" in received or "done" in packets(result, ">")
    assert local_git("rev-parse", "origin/main", cwd=clone).strip() == tip
    client_fsck(clone)


def has_object(clone: Path, sha: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", sha], cwd=clone).returncode == 0


def test_a_deleted_branchs_objects_are_never_sent(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    local_git("checkout", "-q", "-b", "secret", cwd=tree)
    secret = commit(tree, "secret.txt", "the secret\n")
    blob = local_git("rev-parse", "secret:secret.txt", cwd=tree).strip()
    push(gw, alice, path, tree, "secret")
    push(gw, alice, path, tree, ":secret")
    clone = work / "clone"
    v2(gw, alice, "clone", "-q", "--mirror", gw.url(path), str(clone))
    assert not has_object(clone, secret) and not has_object(clone, blob)
    status, lines, _ = asyncio.run(
        v2_session(gw, alice, path, command(b"fetch", f"want {secret}", "done"))
    )
    assert errors(lines) == [f"ERR upload-pack: not our ref {secret}: no branch or tag reaches it"]
    assert b"PACK" not in b"".join(x for x in lines if isinstance(x, bytes))


# --- raw requests over ssh ----------------------------------------------------------------


def command(name: bytes, *args: str, caps: tuple[str, ...] = ("agent=test/1",)) -> bytes:
    """One v2 request: command=NAME, capabilities, delim-pkt, arguments, flush-pkt."""
    lines = [pkt(b"command=" + name + b"\n"), *(pkt(c.encode() + b"\n") for c in caps)]
    return b"".join(lines) + DELIM + b"".join(pkt(a.encode() + b"\n") for a in args) + b"0000"


async def v2_session(gw, user, path: str, request: bytes, git_protocol: str = "version=2"):
    """upload-pack over one SSH session with GIT_PROTOCOL sent as an env request, REQUEST
    written whole: (exit status, the pkt-lines after the capability advertisement, stderr)."""
    async with connect(gw, user.key) as conn:
        proc = await conn.create_process(
            f"git-upload-pack '{path}.git'", env={"GIT_PROTOCOL": git_protocol}, encoding=None
        )
        proc.stdin.write(request)
        proc.stdin.write_eof()
        out, err = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read()), 60
        )
        await asyncio.wait_for(proc.wait_closed(), 60)
    lines = parse_v2(out)
    if lines[:1] == [b"version 2\n"]:
        lines = lines[lines.index(None) + 1 :]
    return proc.exit_status, lines, err.decode(errors="replace")


def errors(lines) -> list[str]:
    return [x.decode().rstrip("\n") for x in lines if isinstance(x, bytes) and x[:4] == b"ERR "]


def test_the_capability_advertisement(gw, repo):
    alice, path, _ = repo
    status, lines, err = asyncio.run(v2_session(gw, alice, path, b"0000"))
    assert status == 0 and lines == [] and err == ""

    async def advertised():
        async with connect(gw, alice.key) as conn:
            proc = await conn.create_process(
                f"git-upload-pack '{path}.git'", env={"GIT_PROTOCOL": "version=2"}, encoding=None
            )
            proc.stdin.write_eof()
            return parse_v2(await asyncio.wait_for(proc.stdout.read(), 60))

    caps = [x.decode().rstrip("\n") for x in asyncio.run(advertised()) if isinstance(x, bytes)]
    assert caps[0] == "version 2" and caps[1].startswith("agent=gateway/")
    assert caps[2:] == [
        "ls-refs=unborn",
        "fetch=shallow wait-for-done filter",
        "server-option",
        "object-format=sha1",
    ]


def test_git_protocol_values_that_are_not_version_n_mean_v0(gw, repo):
    alice, path, tree = repo
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)

    async def first_line(value: str) -> bytes:
        async with connect(gw, alice.key) as conn:
            proc = await conn.create_process(
                f"git-upload-pack '{path}.git'", env={"GIT_PROTOCOL": value}, encoding=None
            )
            proc.stdin.write(b"0000")
            proc.stdin.write_eof()
            out = await asyncio.wait_for(proc.stdout.read(), 60)
            return parse_v2(out)[0]

    for value in ("version=x", "version=2;rm -rf", "version=2:foo=bar", "v" * 200, ""):
        line = asyncio.run(first_line(value))
        assert line is not None and b"HEAD" in line and not line.startswith(b"version")
    assert asyncio.run(first_line("version=0:version=2")) == b"version 2\n"


BAD_REQUESTS = {
    "arguments before any delimiter": (
        pkt(b"command=ls-refs\n") + pkt(b"peel\n") + b"0000",
        "ERR unknown capability 'peel' (a command's arguments come after a 0001 delimiter)",
    ),
    "an unknown command": (command(b"frobnicate"), "ERR invalid command 'frobnicate'"),
    "an unknown capability": (
        command(b"ls-refs", caps=("sideband-all",)),
        "ERR unknown capability 'sideband-all'",
    ),
    "a second command in one request": (
        pkt(b"command=ls-refs\n") + pkt(b"command=fetch\n") + DELIM + b"0000",
        "ERR command 'fetch' requested after already requesting command 'ls-refs'",
    ),
    "no command": (pkt(b"agent=x\n") + DELIM + b"0000", "ERR no command requested"),
    "an unknown ls-refs argument": (
        command(b"ls-refs", "peel", "refs-prefix refs/"),
        "ERR ls-refs: unexpected argument 'refs-prefix refs/'",
    ),
    "an unknown fetch argument": (
        command(b"fetch", "want-everything"),
        "ERR fetch: unexpected argument 'want-everything'",
    ),
    "a want of a missing object": (
        command(b"fetch", "want " + "1" * 40, "done"),
        "ERR upload-pack: not our ref " + "1" * 40 + ": no branch or tag reaches it",
    ),
    "a malformed object name": (
        command(b"fetch", "want 12345", "done"),
        "ERR want: not an object name: '12345'",
    ),
    "a want-ref of no ref": (
        command(b"fetch", "want-ref refs/heads/nope", "done"),
        "ERR unknown ref refs/heads/nope",
    ),
    "a fetch without wants": (command(b"fetch", "done"), "ERR fetch: no want or want-ref lines"),
    "another object format": (
        command(b"ls-refs", caps=("object-format=sha256",)),
        "ERR mismatched object format: the client asks for 'sha256', the repository is sha1",
    ),
    "too many server options": (
        command(b"ls-refs", caps=tuple(f"server-option=o{i}" for i in range(101))),
        "ERR server-option: more than 100 options",
    ),
    "a delimiter among the arguments": (
        command(b"ls-refs", "peel")[:-4] + DELIM + b"0000",
        "ERR unexpected delimiter (0001) among the arguments",
    ),
    "a malformed deepen-since": (
        command(b"fetch", "deepen-since yesterday", "done"),
        "ERR fetch: invalid deepen-since: yesterday (seconds since 1970)",
    ),
    "a depth of 0": (
        command(b"fetch", "deepen 0", "done"),
        "ERR fetch: invalid deepen: 0 (a depth is a positive number)",
    ),
    "a negative depth": (
        command(b"fetch", "deepen -1", "done"),
        "ERR fetch: invalid deepen: -1 (a depth is a positive number)",
    ),
    "a huge depth": (
        command(b"fetch", "deepen 99999999999", "done"),
        "ERR fetch: invalid deepen: 99999999999 (a depth is a positive number)",
    ),
    "a filter not served": (
        command(b"fetch", "filter sparse:oid=" + "1" * 40, "done"),
        None,  # filters.parse's own line, checked below to start with ERR fetch:
    ),
    "two filters": (
        command(b"fetch", "filter blob:none", "filter tree:0", "done"),
        "ERR fetch: more than one filter line",
    ),
    "terminal escapes in a command": (
        command(b"\x1b[31mred"),
        "ERR invalid command '?[31mred'",
    ),
    "a bad pkt-line length": (
        pkt(b"command=ls-refs\n") + b"0003",
        "ERR protocol error: bad pkt-line length 0003",
    ),
}


@pytest.fixture(scope="module")
def served(gw, tmp_path_factory):
    """A repository with one commit, shared by the tests that only read it."""
    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    tree = tmp_path_factory.mktemp("served")
    local_git("init", "-q", "-b", "main", str(tree), cwd=tree)
    commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    return alice, path, tree


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_one_err_line_and_the_server_goes_on(gw, served, case):
    alice, path, _ = served
    request, expected = BAD_REQUESTS[case]
    status, lines, err = asyncio.run(v2_session(gw, alice, path, request))
    if expected is None:  # the message is another module's: one ERR line, about fetch
        assert len(lines) == 1 and errors(lines)[0].startswith("ERR fetch: "), lines
    else:
        assert errors(lines) == [expected] and lines == [expected.encode() + b"\n"], lines
    assert status == 1 and err == ""
    assert "Traceback" not in gw.server_log()
    assert "refs/heads/main" in v2(gw, alice, "ls-remote", gw.url(path)).stdout


def test_a_fetch_without_done_is_a_negotiation_round(gw, repo):
    alice, path, tree = repo
    base = commit(tree, "a.txt", "a\n")
    tip = commit(tree, "b.txt", "b\n")
    push(gw, alice, path, tree)
    unknown = "2" * 40
    # No common commit: NAK, the round ends with a flush-pkt, the connection goes on.
    rounds = command(b"fetch", f"want {tip}", f"have {unknown}")
    # A common commit: ACK, `ready`, and the pack.
    rounds += command(b"fetch", f"want {tip}", f"have {base}", "ofs-delta")
    status, lines, err = asyncio.run(v2_session(gw, alice, path, rounds))
    assert status == 0, err
    assert lines[:3] == [b"acknowledgments\n", b"NAK\n", None]
    assert lines[3:7] == [b"acknowledgments\n", f"ACK {base}\n".encode(), b"ready\n", DELIM]
    assert lines[7] == b"packfile\n" and lines[-1] is None
    # wait-for-done: the ACKs, never `ready`, until the client says `done`.
    waiting = command(b"fetch", f"want {tip}", f"have {base}", "wait-for-done")
    status, lines, _ = asyncio.run(v2_session(gw, alice, path, waiting))
    assert lines == [b"acknowledgments\n", f"ACK {base}\n".encode(), None]


def test_many_ref_prefixes_list_every_ref_as_c_git_does(gw, repo):
    # git's ls-refs keeps 65,536 prefixes at most and beyond them lists every ref.
    alice, path, tree = repo
    tip = commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    prefixes = [f"ref-prefix refs/nothing/{i}" for i in range(100_000)]
    status, lines, err = asyncio.run(v2_session(gw, alice, path, command(b"ls-refs", *prefixes)))
    assert status == 0, err
    assert lines == [f"{tip} HEAD\n".encode(), f"{tip} refs/heads/main\n".encode(), None]
    few = command(b"ls-refs", *prefixes[:1000], "ref-prefix refs/heads/m")
    status, lines, _ = asyncio.run(v2_session(gw, alice, path, few))
    assert lines == [f"{tip} refs/heads/main\n".encode(), None]


def test_access_is_checked_again_at_each_command(gw, repo, work):
    alice, path, tree = repo
    tip = commit(tree, "a.txt", "a\n")
    push(gw, alice, path, tree)
    bob = gw.user()
    ws = path.split("/")[0]
    gw.cli("member", "add", ws, bob.name, "--role", "read")

    async def go():
        async with connect(gw, bob.key) as conn:
            proc = await conn.create_process(
                f"git-upload-pack '{path}.git'", env={"GIT_PROTOCOL": "version=2"}, encoding=None
            )
            proc.stdin.write(command(b"ls-refs"))
            listed = b""
            while b"refs/heads/main" not in listed:
                listed += await asyncio.wait_for(proc.stdout.read(4096), 20)
            await asyncio.to_thread(gw.cli, "member", "remove", ws, bob.name)
            proc.stdin.write(command(b"fetch", f"want {tip}", "done"))
            proc.stdin.write_eof()
            out, err = await asyncio.wait_for(
                asyncio.gather(proc.stdout.read(), proc.stderr.read()), 30
            )
            await proc.wait_closed()
            return proc.exit_status, out, err.decode()

    status, out, err = asyncio.run(go())
    assert status != 0 and b"PACK" not in out and b"packfile" not in out
    assert err.startswith(f"ERROR: Repository not found: {path}\n"), err


V2_STREAMS = [
    # (stream, commands in it, where the request is whole: bytes before the end, or None)
    (command(b"ls-refs", "peel") + command(b"fetch", "want " + "a" * 40, "done"), 2, 4),
    (command(b"ls-refs", "peel"), 1, None),  # ls-refs alone: the end is the client's EOF
    (command(b"ls-refs") + b"0000", 1, 0),  # an empty request: the client is done
    (command(b"fetch", "want " + "a" * 40, "have " + "b" * 40), 1, 0),  # may get `ready`
    (command(b"fetch", "want " + "a" * 40)[:-4], 1, None),  # its flush-pkt still to come
]


@pytest.mark.parametrize("stream, commands, before_end", V2_STREAMS)
def test_request_watch_in_protocol_v2(stream, commands, before_end):
    whole = RequestWatch("git-upload-pack", 2)
    assert whole.feed(stream) is (before_end is not None) and whole.commands == commands
    byte_by_byte = RequestWatch("git-upload-pack", 2)
    ends = [i for i in range(len(stream)) if byte_by_byte.feed(stream[i : i + 1])]
    assert byte_by_byte.commands == commands
    if before_end is None:
        assert not ends
    else:
        assert ends[0] == len(stream) - 1 - before_end  # not a byte early


def test_shallow_clone_fetch_and_unshallow_in_v2(gw, repo, work):
    alice, path, tree = repo
    for i in range(4):
        commit(tree, "f.txt", f"version {i}\n")
    push(gw, alice, path, tree)
    shallow = work / "shallow"
    result = v2(gw, alice, "clone", "-q", "--depth", "1", gw.url(path), str(shallow))
    assert "deepen 1" in packets(result, ">") and "shallow-info" in packets(result, "<")
    assert local_git("rev-list", "--count", "HEAD", cwd=shallow).strip() == "1"
    client_fsck(shallow)
    commit(tree, "f.txt", "version 4\n")
    new = commit(tree, "g.txt", "g\n")
    push(gw, alice, path, tree)
    v2(gw, alice, "fetch", "-q", "origin", cwd=shallow)
    assert local_git("rev-parse", "origin/main", cwd=shallow).strip() == new
    client_fsck(shallow)
    v2(gw, alice, "fetch", "-q", "--depth", "2", "origin", cwd=shallow)
    assert local_git("rev-list", "--count", "origin/main", cwd=shallow).strip() == "2"
    client_fsck(shallow)
    v2(gw, alice, "fetch", "-q", "--unshallow", "origin", cwd=shallow)
    assert local_git("rev-list", "--count", "origin/main", cwd=shallow).strip() == "6"
    assert not (shallow / ".git" / "shallow").exists()
    client_fsck(shallow)
    since_clone = work / "since"
    since = v2(
        gw, alice, "clone", "-q", "--shallow-since=2001-01-01", gw.url(path), str(since_clone)
    )
    assert any(line.startswith("deepen-since ") for line in packets(since, ">"))
    assert local_git("rev-list", "--count", "HEAD", cwd=since_clone).strip() == "6"
    client_fsck(since_clone)


def test_the_worker_run_by_hand_reads_git_protocol_as_c_git_does(repo, work):
    """`python -m gateway.git.workers.worker git-upload-pack DIR` stands in for C git's
    upload-pack (a profile of one request, `git fetch --upload-pack=...`): it speaks the
    version its GIT_PROTOCOL asks for, as C git's does."""
    server = work / "bare.git"
    local_git("init", "-q", "--bare", "-b", "main", str(server), cwd=work)
    _, _, tree = repo
    commit(tree, "a.txt", "a\n")
    local_git("push", "-q", str(server), "main", cwd=tree)
    worker = f"{sys.executable} -m gateway.git.workers.worker git-upload-pack"
    for version in ("0", "2"):
        result = subprocess.run(
            [
                "git",
                "-c",
                f"protocol.version={version}",
                "ls-remote",
                "--upload-pack",
                worker,
                f"file://{server}",
            ],
            cwd=work,
            capture_output=True,
            text=True,
            env={**os.environ, **TRACE},
        )
        assert result.returncode == 0, result.stderr
        assert "refs/heads/main" in result.stdout
        assert ("version 2" in result.stderr) == (version == "2")
