"""The push pipeline (gateway/git/receive/pipeline.py) run in this process, with
in-memory streams on a temporary bare repository: a receive-pack request (commands, and
a pack made with dulwich) in, the refs and the report-status lines out. The end-to-end
tests (test_push*.py) drive the same pipeline through a real server and git."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dulwich.object_format import SHA1
from dulwich.objects import Blob, Commit, Tree
from dulwich.pack import write_pack_objects
from dulwich.protocol import ReceivableProtocol
from dulwich.repo import Repo

from gateway.git.receive.pipeline import PushSettings, ReceivePack

ZERO = b"0" * 40


def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def make_commit(message: bytes, parents: list[bytes]) -> tuple[Commit, list]:
    blob = Blob.from_string(message + b"\n")
    tree = Tree()
    tree.add(b"file", 0o100644, blob.id)
    commit = Commit()
    commit.tree, commit.parents = tree.id, parents
    commit.author = commit.committer = b"T <t@example.com>"
    commit.author_time = commit.commit_time = 1_700_000_000 + len(parents)
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = message + b"\n"
    return commit, [blob, tree, commit]


def pack_of(objects: list) -> bytes:
    out = io.BytesIO()
    write_pack_objects(out.write, objects, SHA1)
    return out.getvalue()


def push(
    repo_dir: Path,
    commands: list[tuple[bytes, bytes, bytes]],
    pack: bytes | None = None,
    settings: PushSettings | None = None,
) -> list[bytes]:
    """Serve one push from memory; the report-status lines, without their pkt-line framing."""
    caps = b"\0report-status delete-refs agent=test"
    lines = [
        pkt(old + b" " + new + b" " + ref + (caps if i == 0 else b"") + b"\n")
        for i, (old, new, ref) in enumerate(commands)
    ]
    request = io.BytesIO(b"".join(lines) + b"0000" + (pack or b""))
    out = io.BytesIO()
    repo = Repo(str(repo_dir))
    try:
        proto = ReceivableProtocol(request.read, out.write)
        ReceivePack(repo, proto, settings or PushSettings(fsck_objects=True)).handle()
    finally:
        repo.close()
    return report_lines(out.getvalue())


def report_lines(data: bytes) -> list[bytes]:
    """The pkt-lines after the advertisement's flush-pkt, up to the report's flush-pkt."""
    lines, pos, flushes = [], 0, 0
    while pos < len(data):
        size = int(data[pos : pos + 4], 16)
        if size == 0:
            flushes += 1
            pos += 4
            continue
        if flushes == 1:
            lines.append(data[pos + 4 : pos + size].rstrip(b"\n"))
        pos += size
    return lines


def refs(repo_dir: Path) -> dict[bytes, bytes]:
    repo = Repo(str(repo_dir))
    try:
        return {k: v for k, v in repo.get_refs().items() if k.startswith(b"refs/")}
    finally:
        repo.close()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    path = tmp_path / "r.git"
    Repo.init_bare(str(path), mkdir=True).close()
    return path


@pytest.fixture
def first(bare: Path) -> Commit:
    """`refs/heads/main` at a first commit, pushed through the pipeline."""
    commit, objects = make_commit(b"one", [])
    assert push(bare, [(ZERO, commit.id, b"refs/heads/main")], pack_of(objects)) == [
        b"unpack ok",
        b"ok refs/heads/main",
    ]
    return commit


def test_create(bare, first):
    assert refs(bare) == {b"refs/heads/main": first.id}
    repo = Repo(str(bare))
    try:
        assert first.id in repo.object_store and not list(Path(bare, "objects").glob("incoming-*"))
    finally:
        repo.close()


def test_fast_forward(bare, first):
    second, objects = make_commit(b"two", [first.id])
    report = push(bare, [(first.id, second.id, b"refs/heads/main")], pack_of(objects))
    assert report == [b"unpack ok", b"ok refs/heads/main"]
    assert refs(bare) == {b"refs/heads/main": second.id}


def test_an_old_value_that_is_not_the_ref_is_refused(bare, first):
    """Not a fast-forward from where the ref is: the compare-and-swap refuses it."""
    other, objects = make_commit(b"elsewhere", [])
    stale, _ = make_commit(b"stale", [])
    report = push(bare, [(stale.id, other.id, b"refs/heads/main")], pack_of(objects))
    assert report == [b"unpack ok", b"ng refs/heads/main failed to update ref"]
    assert refs(bare) == {b"refs/heads/main": first.id}


def test_missing_objects_are_refused(bare, first):
    """A tip whose parent's objects never arrived: nothing of the push is accepted."""
    orphan_parent, _ = make_commit(b"never sent", [])
    child, objects = make_commit(b"child", [orphan_parent.id])
    report = push(bare, [(first.id, child.id, b"refs/heads/main")], pack_of(objects))
    assert report == [b"unpack ok", b"ng refs/heads/main missing necessary objects"]
    assert refs(bare) == {b"refs/heads/main": first.id}


def test_delete(bare, first):
    report = push(bare, [(first.id, ZERO, b"refs/heads/main")])
    assert report == [b"unpack ok", b"ok refs/heads/main"]
    assert refs(bare) == {}


def test_a_bad_ref_name_is_refused(bare, first):
    commit, objects = make_commit(b"bad", [first.id])
    report = push(
        bare,
        [(ZERO, commit.id, b"refs/heads/a..b"), (ZERO, commit.id, b"refs/other/x")],
        pack_of(objects),
    )
    assert report == [
        b"unpack ok",
        b"ng refs/heads/a..b funny refname",
        b"ng refs/other/x only refs/heads/ and refs/tags/ may be pushed",
    ]
    assert refs(bare) == {b"refs/heads/main": first.id}


def test_connectivity_check_survives_a_pack_repacked_away(tmp_path):
    """Housekeeping may replace the packs a push's worker has listed: a lookup in one
    whose files are gone is not an error, the object is found where it went."""
    import subprocess

    from dulwich.object_store import DiskObjectStore
    from dulwich.objects import hex_to_sha

    from gateway.git.receive.connectivity import Links, first_missing

    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    for n in range(2):
        (work / f"f{n}").write_text(f"{n}\n")
        subprocess.run(["git", "-C", str(work), "add", "."], check=True)
        subprocess.run(
            [
                "git",
                "-C",
                str(work),
                "-c",
                "user.name=T",
                "-c",
                "user.email=t@x",
                "commit",
                "-qm",
                str(n),
            ],
            check=True,
        )
        subprocess.run(["git", "-C", str(work), "repack", "-adq"], check=True)
        if n == 0:
            repo = Repo(str(work))
            store = repo.object_store
            first = repo.head()
            assert len(store.packs) == 1  # listed, its index not read yet
    assert len(list((work / ".git/objects/pack").glob("*.pack"))) == 1  # the old one gone
    links = Links([])
    links.named.add(hex_to_sha(first))
    quarantine = DiskObjectStore(str(tmp_path / "quarantine"))
    (tmp_path / "quarantine" / "pack").mkdir(parents=True)
    assert first_missing(links, [], quarantine, store) is None
    links.named.add(b"\x01" * 20)
    assert first_missing(links, [], quarantine, store) == b"01" * 20
    repo.close()


def test_links_skip_a_submodules_commit_whichever_way_the_tree_is_read():
    """A tree's gitlink names a commit of another repository: never a missing object.
    Links reads fsck's parsed entries (a fast path when the tree has no gitlink) or the
    raw tree; both leave the gitlink out and keep every other entry."""
    from gateway.git.receive import fsck
    from gateway.git.receive.connectivity import Links

    blob, sub, commit = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
    with_gitlink = b"100644 a\0" + blob + b"160000 m\0" + commit + b"40000 s\0" + sub
    without = b"100644 a\0" + blob + b"40000 s\0" + sub
    for data, named in ((with_gitlink, {blob, sub}), (without, {blob, sub})):
        entries = fsck.Checker().check_tree(b"0" * 40, data)
        assert entries is not None  # the usual-tree path parsed it
        for given in (entries, None):
            links = Links([])
            links.add(b"0" * 40, 2, data, given)
            assert links.named == named
