"""Many refs (gateway/git/upload/refs.py): a repository with thousands of refs, packed and
loose, is listed as C git lists it, and each v2-style prefix lists exactly its refs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dulwich.protocol import format_ref_line, pkt_line, symref_capabilities
from dulwich.repo import Repo

from gateway.git.upload import lsrefscache
from gateway.git.upload.refs import Ref, head_target, list_refs
from testkit import Gateway, local_git
from testkit.localgit import commit

ROOT = Path(__file__).resolve().parent.parent
PULLS, TAGS = 2000, 300  # packed; a third of the tags annotated
MISSING = "1234567890abcdef1234567890abcdef12345678"  # an object no repository has


def git(repo: Path, *args: str, input: str | None = None) -> str:
    env = {**os.environ, "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(
        ["git", *args], cwd=repo, input=input, capture_output=True, text=True, check=True, env=env
    ).stdout


def fill_with_refs(server: Path, broken: bool = True) -> None:
    """Thousands of refs in a bare repository whose main has 20 commits: pull-request refs
    and tags (a third annotated, one a tag of a tag) packed, then loose refs on top: new
    ones, ones overriding packed ones, a loose annotated tag, a symbolic ref, and (with
    `broken`) refs a client could not fetch: a missing object, garbage, a name Git
    refuses, a packed ref overridden by a broken loose one."""
    shas = git(server, "rev-list", "main").split()
    updates = [f"create refs/pull/{n}/head {shas[n % len(shas)]}\n" for n in range(PULLS)]
    updates += [f"create refs/tags/light-{n}.0 {shas[n % len(shas)]}\n" for n in range(TAGS)]
    git(server, "update-ref", "--stdin", input="".join(updates))
    stream = "".join(
        f"tag v{n}.0\nfrom {shas[n % len(shas)]}\ntagger T <t@example.com> {1700000000 + n} +0000\n"
        f"data 4\nv{n}\n\n"
        for n in range(TAGS // 3)
    )
    git(server, "fast-import", "--quiet", input=stream)
    git(server, "tag", "-a", "-m", "nested", "nested", "v1.0")
    # A packed ref to a missing object, as a crashed tool might leave.
    git(server, "pack-refs", "--all")
    if broken:
        with open(server / "packed-refs", "a") as f:
            f.write(f"{MISSING} refs/heads/lost\n")
    loose = [f"create refs/pull/{n}/head {shas[n % len(shas)]}\n" for n in range(PULLS, PULLS + 50)]
    loose += [f"update refs/pull/{n}/head {shas[(n + 3) % len(shas)]}\n" for n in range(0, 40)]
    git(server, "update-ref", "--stdin", input="".join(loose))
    git(server, "tag", "-a", "-m", "loose", "loose-annotated", shas[5])
    git(server, "tag", "-a", "-m", "loose nested", "loose-nested", "v2.0")
    git(server, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/main")
    if not broken:
        return
    (server / "refs" / "heads" / "garbage").write_text("not an object name\n")
    (server / "refs" / "heads" / "gone").write_text(MISSING + "\n")
    (server / "refs" / "heads" / "bad..name").write_text(shas[0] + "\n")
    # A packed ref overridden by a broken loose one is not listed either.
    (server / "refs" / "pull" / "45").mkdir()
    (server / "refs" / "pull" / "45" / "head").write_text("garbage\n")


def lines(output: str) -> list[str]:
    return sorted(output.splitlines())


@pytest.fixture
def many(gw: Gateway, work: Path):
    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    tree = work / "tree"
    local_git("init", "-q", "-b", "main", str(tree), cwd=work)
    for n in range(20):
        commit(tree, f"f{n % 3}.txt", f"{n}\n")
    gw.git(alice, "push", "-q", gw.url(path), "main", cwd=tree)
    server = gw.repo_dir(path)
    fill_with_refs(server, broken=False)
    return alice, path, server


def test_ls_remote_of_thousands_of_refs_is_c_gits(gw, many):
    alice, path, server = many
    for args in ((), ("--symref",)):
        ours = gw.git(alice, "-c", "protocol.version=0", "ls-remote", *args, gw.url(path))
        theirs = subprocess.run(
            ["git", "-c", "protocol.version=0", "ls-remote", *args, f"file://{server}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert lines(ours.stdout) == lines(theirs.stdout)
    listed = lines(ours.stdout)
    assert len(listed) > PULLS + TAGS
    assert any(line.endswith("\trefs/tags/nested^{}") for line in listed)
    assert "ref: refs/heads/main\tHEAD" in listed


def test_refs_a_client_cannot_fetch_are_not_listed(gw, many):
    # C git 2.39 advertises them (a zero id for one it cannot read); the gateway lists, as
    # it did with dulwich, only refs whose objects it has, so that a clone of all of them
    # works.
    alice, path, server = many
    plain = gw.git(alice, "ls-remote", gw.url(path)).stdout
    shas = git(server, "rev-list", "main").split()
    (server / "refs" / "heads" / "garbage").write_text("not an object name\n")
    (server / "refs" / "heads" / "gone").write_text(MISSING + "\n")
    (server / "refs" / "heads" / "bad..name").write_text(shas[0] + "\n")
    (server / "refs" / "pull" / "7" / "head").write_text("garbage\n")
    with open(server / "packed-refs", "a") as f:
        f.write(f"{MISSING} refs/heads/lost\n")
    listed = gw.git(alice, "ls-remote", gw.url(path)).stdout
    assert lines(listed) == [line for line in lines(plain) if "refs/pull/7/head" not in line]


def test_mirror_clone_of_thousands_of_refs(gw, many, work):
    alice, path, server = many
    clone = work / "mirror"
    gw.git(alice, "-c", "protocol.version=0", "clone", "-q", "--mirror", gw.url(path), str(clone))
    subprocess.run(["git", "fsck", "--full", "--no-dangling"], cwd=clone, check=True)
    assert git(clone, "show-ref", "-d") == git(server, "show-ref", "-d")


def expected(server: Path, prefixes: list[str]) -> list[tuple[str, str, str | None, str | None]]:
    """What C git lists: (name, object, peeled, symref target), HEAD included."""
    peeled: dict[str, str] = {}
    objects: dict[str, str] = {}
    for line in git(server, "show-ref", "--head", "-d").splitlines():
        sha, name = line.split(" ", 1)
        if name.endswith("^{}"):
            peeled[name[:-3]] = sha
        else:
            objects[name] = sha
    targets = {"HEAD": git(server, "symbolic-ref", "HEAD").strip()}
    for line in git(server, "for-each-ref", "--format=%(refname) %(symref)").splitlines():
        name, target = line.split(" ")
        if target:
            targets[name] = target
    return [
        (name, objects[name], peeled.get(name), targets.get(name))
        for name in sorted(objects)
        if not prefixes or any(name.startswith(p) for p in prefixes)
    ]


PREFIXES = [
    [],
    ["refs/tags/"],
    ["HEAD"],
    ["refs/heads/", "refs/tags/v1"],
    ["refs/pull/1"],
    ["refs/pull/12/head"],
    ["refs/pull/", "refs/pull/3"],
    ["refs/remotes/"],
    ["r"],
    ["refs/nothing/", "zzz"],
]


def as_tuples(refs: list[Ref]) -> list[tuple[str, str, str | None, str | None]]:
    def text(value: bytes | None) -> str | None:
        return None if value is None else value.decode()

    return [(r.name.decode(), r.sha.decode(), text(r.peeled), text(r.symref_target)) for r in refs]


@pytest.fixture(scope="module")
def local_many(tmp_path_factory) -> Path:
    server = tmp_path_factory.mktemp("many") / "server.git"
    local_git("init", "-q", "--bare", "-b", "main", str(server), cwd=server.parent)
    stream = "".join(
        f"commit refs/heads/main\ncommitter T <t@example.com> {1700000000 + n} +0000\n"
        f"data 2\n{n % 10}\nM 644 inline f{n % 3}\ndata 2\n{n % 10}\n\n"
        for n in range(20)
    )
    git(server, "fast-import", "--quiet", input=stream)
    fill_with_refs(server, broken=False)
    return server


@pytest.mark.parametrize("prefixes", PREFIXES, ids=lambda p: ",".join(p) or "all")
def test_list_refs_with_prefixes_is_c_gits(local_many, prefixes):
    server = local_many
    listed = list_refs(str(server), [p.encode() for p in prefixes])
    assert as_tuples(listed) == expected(server, prefixes)


def variant(server: Path, tmp_path: Path, rewrite) -> Path:
    copy = tmp_path / "copy.git"
    subprocess.run(["cp", "-a", str(server), str(copy)], check=True)
    packed = copy / "packed-refs"
    packed.write_bytes(rewrite(packed.read_bytes()))
    return copy


def without_header(data: bytes) -> bytes:
    """packed-refs as old writers left it: no header, no `^` lines (so every ref may be a
    tag, and its object is read), not known to be sorted."""
    return b"".join(
        line for line in data.splitlines(keepends=True) if not line.startswith((b"#", b"^"))
    )


def unsorted(data: bytes) -> bytes:
    header, *records = data.split(b"\n# ")[0].splitlines(keepends=True)
    pairs: list[bytes] = []
    for line in records:
        if line.startswith(b"^"):
            pairs[-1] += line
        else:
            pairs.append(line)
    return header.replace(b" sorted", b"") + b"".join(reversed(pairs))


@pytest.mark.parametrize("rewrite", [without_header, unsorted])
@pytest.mark.parametrize("prefixes", [[], ["refs/tags/"], ["refs/pull/1", "HEAD"]])
def test_list_refs_of_other_packed_refs_files(local_many, tmp_path, rewrite, prefixes):
    server = variant(local_many, tmp_path, rewrite)
    listed = list_refs(str(server), [p.encode() for p in prefixes])
    assert as_tuples(listed) == expected(server, prefixes)


def test_list_refs_skips_broken_refs(local_many, tmp_path):
    clean = list_refs(str(local_many))
    server = variant(
        local_many, tmp_path, lambda data: data + f"{MISSING} refs/heads/lost\n".encode()
    )
    shas = git(server, "rev-list", "main").split()
    (server / "refs" / "heads" / "garbage").write_text("not an object name\n")
    (server / "refs" / "heads" / "gone").write_text(MISSING + "\n")
    (server / "refs" / "heads" / "bad..name").write_text(shas[0] + "\n")
    (server / "refs" / "heads" / "x.lock").write_text(shas[0] + "\n")
    (server / "refs" / "pull" / "7" / "head").write_text("garbage\n")
    (server / "refs" / "heads" / "loop").write_text("ref: refs/heads/loop\n")
    assert list_refs(str(server)) == [r for r in clean if r.name != b"refs/pull/7/head"]


def test_head_unborn_and_detached(tmp_path):
    server = tmp_path / "empty.git"
    local_git("init", "-q", "--bare", "-b", "trunk", str(server), cwd=tmp_path)
    assert list_refs(str(server)) == []
    assert head_target(str(server)) == b"refs/heads/trunk"
    git(
        server,
        "fast-import",
        "--quiet",
        input="commit refs/heads/x\ncommitter T <t@e> 1 +0000\ndata 1\nx\n",
    )
    sha = git(server, "rev-parse", "refs/heads/x").strip()
    (server / "HEAD").write_text(sha + "\n")
    assert head_target(str(server)) is None
    assert list_refs(str(server), [b"HEAD"]) == [Ref(b"HEAD", sha.encode(), None, None)]


def worker_advertisement(server: Path, service: str) -> bytes:
    """What the worker writes before the client's first line, for a client that only
    looks (ls-remote: a flush-pkt and nothing more)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.git.workers.worker", service, str(server)],
        input=b"0000",
        capture_output=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout


def dulwich_advertisement(server: Path, caps: list[bytes], receive: bool) -> bytes:
    """The advertisement as the gateway wrote it from dulwich's refs before refs.py,
    with the capabilities `caps` and HEAD's symref= (dulwich gave every symbolic ref's,
    on which git 2.39 spins: only HEAD's now, as C git)."""
    repo = Repo(str(server))
    refs = repo.get_refs()
    if not receive:
        refs = {name: sha for name, sha in refs.items() if sha in repo.object_store}
    symrefs = repo.refs.get_symrefs()
    caps = caps + symref_capabilities([(b"HEAD", symrefs[b"HEAD"])])
    out = []
    for i, (name, sha) in enumerate(sorted(refs.items())):
        out.append(format_ref_line(name, sha, caps if i == 0 else None))
        peeled = None if receive else repo.get_peeled(name)
        if peeled is not None and peeled != sha:
            out.append(format_ref_line(name + b"^{}", peeled))
    return b"".join(pkt_line(line) for line in out) + b"0000"


def test_advertisements_are_unchanged(local_many):
    server = local_many
    for service, receive in (("git-upload-pack", False), ("git-receive-pack", True)):
        ours = worker_advertisement(server, service)
        first = ours[4 : int(ours[:4], 16)].rstrip(b"\n")
        caps = [c for c in first.split(b"\0")[1].split() if not c.startswith(b"symref=")]
        assert ours == dulwich_advertisement(server, caps, receive)


def test_a_full_listing_is_kept_until_a_ref_changes(gw, many, work):
    """ls-remote's answer is kept in the repository (lsrefscache.py) and sent again while
    nothing changed; a push, a deleted branch, packed refs and a new HEAD each give the
    listing C git gives at that moment."""
    alice, path, server = many
    cache = server / "gateway-ls-refs"

    def ours() -> list[str]:
        return lines(gw.git(alice, "ls-remote", "--symref", gw.url(path)).stdout)

    def c_gits() -> list[str]:
        return lines(
            git(server, "-c", "protocol.version=2", "ls-remote", "--symref", f"file://{server}")
        )

    first = ours()
    assert first == c_gits() and cache.exists()
    kept = cache.read_bytes()
    assert ours() == first and cache.read_bytes() == kept  # sent from what was kept
    tree = work / "tree"
    commit(tree, "new.txt", "new\n")
    gw.git(alice, "push", "-q", gw.url(path), "main", "main:refs/heads/topic", cwd=tree)
    assert ours() == c_gits() != first
    gw.git(alice, "push", "-q", gw.url(path), ":refs/heads/topic", cwd=tree)
    assert not any(line.endswith("\trefs/heads/topic") for line in ours())
    assert ours() == c_gits()
    gw.cli("repo", "gc", path)  # the refs packed: packed-refs replaced
    assert ours() == c_gits()
    git(server, "symbolic-ref", "HEAD", "refs/tags/v1.0")  # an operator's edit of HEAD
    assert ours() == c_gits()
    assert any(line.startswith("ref: refs/tags/v1.0\tHEAD") for line in ours())


def test_a_fetch_is_answered_from_a_listing_kept_apart(gw, many, work):
    """A fetch sends ref-prefixes (refs/heads/, refs/tags/, HEAD): its answer is kept in
    a file of its own, beside the full listing, and a push gives a new one."""
    alice, path, server = many
    tree, clone = work / "tree", work / "clone"
    gw.git(alice, "clone", "-q", "--bare", gw.url(path), str(clone))
    for n in range(2):
        commit(tree, f"moved{n}.txt", f"{n}\n")
        gw.git(alice, "push", "-q", gw.url(path), "main", cwd=tree)
        gw.git(alice, "fetch", "-q", gw.url(path), "+refs/heads/*:refs/heads/*", cwd=clone)
        head = local_git("rev-parse", "HEAD", cwd=tree).strip()
        assert local_git("rev-parse", "main", cwd=clone).strip() == head
        assert (server / "gateway-ls-refs-prefixed").exists()


def test_a_kept_listing_follows_heads_target_outside_the_prefixes(local_many, tmp_path):
    """HEAD is listed with its target's object: the key of a listing that asks for HEAD
    alone reads HEAD's target too, wherever it is."""
    server = tmp_path / "server.git"
    shutil.copytree(local_many, server, symlinks=True)
    git_dir = os.fsencode(server)
    before = lsrefscache.key(git_dir, b"flags", [b"HEAD"])
    assert lsrefscache.key(git_dir, b"flags", [b"HEAD"]) == before
    git(server, "update-ref", "refs/heads/main", "main~1")
    assert lsrefscache.key(git_dir, b"flags", [b"HEAD"]) != before
