"""Upload-pack's fast path (pack reuse, gateway/git/upload/packwriter.py): what a client receives
is complete, minimal where it must be, and a valid pack however the server stored it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.git.upload import commitobjects
from gateway.git.upload.commitobjects import CommitObjects
from testkit import Gateway, local_git, pkt
from testkit.localgit import client_fsck, commit, fsck

ROOT = Path(__file__).resolve().parent.parent


def all_objects(git_dir: Path, *refs: str) -> set[str]:
    out = subprocess.run(
        ["git", "rev-list", "--objects", *(refs or ("--all",))],
        cwd=git_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split()[0] for line in out.splitlines()}


def mirror_clone(gw, user, path: str, dest: Path) -> Path:
    """A mirror clone, checked: fsck clean, and the very objects the server's refs reach."""
    gw.git(user, "clone", "-q", "--mirror", gw.url(path), str(dest))
    client_fsck(dest)
    assert all_objects(dest) == all_objects(gw.repo_dir(path))
    return dest


def commit_on_server(server: Path, parent: str, name: str, content: str) -> tuple[str, str, str]:
    """A commit written by C git straight into the server's repository, as loose objects
    (a blob, a tree holding it, a commit on `parent`): (blob, tree, commit)."""

    def run(*args: str, input: str | None = None) -> str:
        return subprocess.run(
            ["git", *args], cwd=server, input=input, capture_output=True, text=True, check=True
        ).stdout.strip()

    blob = run("hash-object", "-w", "--stdin", input=content)
    tree = run("mktree", input=f"100644 blob {blob}\t{name}\n")
    return blob, tree, run("commit-tree", tree, "-p", parent, "-m", name)


def repack_with_c_git(server: Path) -> None:
    """One pack with C git's own deltas (OFS_DELTA, newest versions whole)."""
    subprocess.run(["git", "repack", "-a", "-d", "-f", "-q"], cwd=server, check=True)


def has_object(clone: Path, sha: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", sha], cwd=clone).returncode == 0


@pytest.fixture
def repo(gw: Gateway, work: Path):
    alice = gw.user()
    ws = gw.workspace((alice, "write"))
    path = gw.repo(ws)
    tree = work / "tree"
    local_git("init", "-q", "-b", "main", str(tree), cwd=work)
    return alice, path, tree


def push(gw, user, path, tree, *refspecs: str) -> None:
    gw.git(user, "push", "-q", gw.url(path), *(refspecs or ("main",)), cwd=tree)


def big_text(seed: int, lines: int = 3000) -> str:
    # Text that deltas well against its previous version: a few lines change each time.
    return "".join(
        f"line {i} {'changed ' * (i % 97 == seed % 97)}{seed if i % 97 == seed % 97 else ''}\n"
        for i in range(lines)
    )


def test_clone_from_many_pushes_is_complete(gw, repo, work):
    # Every push is a pack of its own on the server (thin packs completed by the gateway):
    # the clone must take objects and delta bases from all of them.
    alice, path, tree = repo
    for i in range(6):
        commit(tree, "big.txt", big_text(i))
        commit(tree, f"dir{i % 2}/f{i}.txt", f"file {i}\n")
        push(gw, alice, path, tree)
    fsck(gw, path)
    packs = list((gw.repo_dir(path) / "objects" / "pack").glob("*.pack"))
    assert len(packs) >= 6
    mirror_clone(gw, alice, path, work / "clone")


def test_fetch_of_a_changed_file_is_complete(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "big.txt", big_text(1, 20000))
    push(gw, alice, path, tree)
    clone = work / "clone"
    gw.git(alice, "clone", "-q", gw.url(path), str(clone))
    commit(tree, "big.txt", big_text(2, 20000))
    new_tip = commit(tree, "small.txt", "new\n")
    push(gw, alice, path, tree)
    gw.git(alice, "-c", "fetch.unpackLimit=1", "fetch", "-q", "origin", cwd=clone)
    assert local_git("rev-parse", "origin/main", cwd=clone).strip() == new_tip
    assert local_git("show", "origin/main:big.txt", cwd=clone) == big_text(2, 20000)
    client_fsck(clone)


def test_commits_the_client_has_are_not_sent(gw, repo, work):
    alice, path, tree = repo
    for i in range(20):
        commit(tree, f"a{i}.txt")
    push(gw, alice, path, tree)
    clone = work / "clone"
    gw.git(alice, "clone", "-q", "--bare", gw.url(path), str(clone))
    before = set(all_objects(clone))
    new = [commit(tree, f"b{i}.txt") for i in range(3)]
    push(gw, alice, path, tree)
    out = gw.git(alice, "fetch", "--progress", "origin", "main:main", cwd=clone)
    assert "counting objects: 9, done." in out.stderr  # 3 commits, 3 trees, 3 blobs
    assert all_objects(clone) >= before | set(new)
    client_fsck(clone)


def test_objects_only_a_deleted_branch_reached_are_not_sent(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "README.md", "hello\n")
    push(gw, alice, path, tree)
    local_git("checkout", "-q", "-b", "secret", cwd=tree)
    secret = commit(tree, "secret.txt", "do not clone me\n")
    blob = local_git("rev-parse", "HEAD:secret.txt", cwd=tree).strip()
    push(gw, alice, path, tree, "secret")
    push(gw, alice, path, tree, "--delete", "secret")
    assert (gw.repo_dir(path) / "objects").exists()
    clone = mirror_clone(gw, alice, path, work / "clone")
    assert not has_object(clone, secret) and not has_object(clone, blob)


def test_commit_dates_that_go_backwards(gw, repo, work):
    # The walk orders commits by date; a history whose dates go back and forth (and an
    # old-dated merge of a new branch) must still arrive whole, on clone and on fetch.
    alice, path, tree = repo
    dates = [1_600_000_000 + d for d in (500, 100, 900, 50, 700, 10, 300)]
    env = dict(os.environ)

    def dated(name: str, when: int) -> str:
        env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = f"{when} +0000"
        (tree / name).write_text(name + "\n")
        local_git("add", name, cwd=tree)
        local_git("commit", "-q", "-m", name, cwd=tree, env=env)
        return local_git("rev-parse", "HEAD", cwd=tree).strip()

    for i, when in enumerate(dates[:3]):
        dated(f"m{i}.txt", when)
    push(gw, alice, path, tree)
    clone = work / "clone"
    gw.git(alice, "clone", "-q", gw.url(path), str(clone))
    local_git("checkout", "-q", "-b", "side", cwd=tree)
    for i, when in enumerate(dates[3:6]):
        dated(f"s{i}.txt", when)
    local_git("checkout", "-q", "main", cwd=tree)
    env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"] = "1500000000 +0000"
    local_git("merge", "-q", "--no-ff", "-m", "old-dated merge", "side", cwd=tree, env=env)
    merge = local_git("rev-parse", "HEAD", cwd=tree).strip()
    push(gw, alice, path, tree, "main", "side")
    gw.git(alice, "fetch", "-q", "origin", cwd=clone)
    assert local_git("rev-parse", "origin/main", cwd=clone).strip() == merge
    client_fsck(clone)
    mirror_clone(gw, alice, path, work / "fresh")


def test_annotated_tags_follow_and_tags_of_tags(gw, repo, work):
    alice, path, tree = repo
    first = commit(tree, "a.txt")
    local_git("tag", "-a", "v1", "-m", "one", cwd=tree)
    local_git("tag", "-a", "v1-signed-off", "-m", "a tag of a tag", "v1", cwd=tree)
    push(gw, alice, path, tree, "main", "--tags")
    clone = work / "clone"
    gw.git(alice, "clone", "-q", gw.url(path), str(clone))
    client_fsck(clone)
    outer = local_git("cat-file", "tag", "v1-signed-off", cwd=clone)
    assert outer.startswith(f"object {local_git('rev-parse', 'v1', cwd=tree).strip()}\ntype tag\n")
    assert local_git("rev-parse", "v1^{commit}", cwd=clone).strip() == first
    # A tag pushed later, on a commit fetched with it: the fetch brings the tag along.
    commit(tree, "b.txt")
    local_git("tag", "-a", "v2", "-m", "two", cwd=tree)
    push(gw, alice, path, tree, "main", "v2")
    gw.git(alice, "fetch", "-q", "origin", cwd=clone)
    assert local_git("cat-file", "-t", "v2", cwd=clone).strip() == "tag"
    client_fsck(clone)


def test_loose_objects_and_a_repack_by_c_git(gw, repo, work):
    # Objects the server keeps loose (written by C git here), and a pack with C git's
    # OFS deltas: both end up in the clone.
    alice, path, tree = repo
    for i in range(5):
        commit(tree, "big.txt", big_text(i))
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    repack_with_c_git(server)
    blob, _, loose_commit = commit_on_server(server, "main", "loose.txt", "loose\n")
    local_git("update-ref", "refs/heads/loose", loose_commit, cwd=server)
    assert has_object(mirror_clone(gw, alice, path, work / "clone"), blob)


def test_a_clone_after_a_push_has_the_push(gw, repo, work):
    # Clones of an unchanged repository reuse the first one's object list
    # (gateway-clone-objects); a push must make the next clone walk again.
    alice, path, tree = repo
    commit(tree, "a.txt")
    push(gw, alice, path, tree)
    for name in ("c1", "c2"):
        mirror_clone(gw, alice, path, work / name)
    server = gw.repo_dir(path)
    assert (server / "gateway-clone-objects").exists()
    new = commit(tree, "b.txt")
    push(gw, alice, path, tree)
    local_git("tag", "-a", "v1", "-m", "one", cwd=tree)
    push(gw, alice, path, tree, "v1")
    assert has_object(mirror_clone(gw, alice, path, work / "c3"), new)


def test_a_clone_cache_file_that_is_damaged_is_ignored(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "a.txt")
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    mirror_clone(gw, alice, path, work / "c1")
    cache = server / "gateway-clone-objects"
    cache.write_bytes(cache.read_bytes()[:-7])
    mirror_clone(gw, alice, path, work / "c2")
    cache.write_bytes(b"something else entirely")
    mirror_clone(gw, alice, path, work / "c3")


def test_clone_of_a_repository_repacked_into_one_pack(gw, repo, work):
    # The stored pack holds exactly what a clone needs: it is sent as it is.
    alice, path, tree = repo
    for i in range(5):
        commit(tree, "big.txt", big_text(i))
    local_git("tag", "-a", "v1", "-m", "one", cwd=tree)
    push(gw, alice, path, tree, "main", "v1")
    server = gw.repo_dir(path)
    repack_with_c_git(server)
    clone = mirror_clone(gw, alice, path, work / "clone")
    stored = next((server / "objects" / "pack").glob("*.pack")).read_bytes()
    received = next((clone / "objects" / "pack").glob("*.pack")).read_bytes()
    assert received == stored


def test_clones_after_fast_forwards_force_pushes_and_deletions(gw, repo, work):
    # After each ref change the clone's list is made again from the commits' kept lists:
    # it must hold exactly what the refs reach.
    alice, path, tree = repo
    commit(tree, "a.txt")
    push(gw, alice, path, tree)
    local_git("checkout", "-q", "-b", "topic", cwd=tree)
    secret = commit(tree, "secret.txt", "only on topic\n")
    push(gw, alice, path, tree, "topic")
    local_git("checkout", "-q", "main", cwd=tree)

    def clone_matches(name: str) -> Path:
        return mirror_clone(gw, alice, path, work / name)

    clone_matches("c1")
    commit(tree, "b.txt")
    local_git("tag", "-a", "v1", "-m", "one", cwd=tree)
    push(gw, alice, path, tree, "main", "v1")  # fast-forward and a new tag
    clone_matches("c2")
    local_git("reset", "-q", "--hard", "HEAD~1", cwd=tree)
    commit(tree, "c.txt")
    gw.cli("branch-rule", "remove", path, "main")  # the default branch's protection
    push(gw, alice, path, tree, "--force", "main", "--delete", "v1")  # history rewritten
    assert not has_object(clone_matches("c3"), local_git("rev-parse", "v1", cwd=tree).strip())
    push(gw, alice, path, tree, "--delete", "topic")
    assert not has_object(clone_matches("c4"), secret)
    local_git("tag", "-a", "v0", "-m", "zero", "HEAD~1", cwd=tree)
    push(gw, alice, path, tree, "v0")  # a new tag on a commit the last clone had
    assert local_git("cat-file", "-t", "v0", cwd=clone_matches("c5")).strip() == "tag"


def test_a_missing_object_gives_one_line(gw, repo, work):
    # A ref that reaches an object the repository lost (a loose file deleted by hand).
    alice, path, tree = repo
    commit(tree, "a.txt")
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    _, lost_tree, lost = commit_on_server(server, "main", "gone.txt", "soon gone\n")
    local_git("update-ref", "refs/heads/lost", lost, cwd=server)
    (server / "objects" / lost_tree[:2] / lost_tree[2:]).unlink()
    failed = gw.git(alice, "clone", gw.url(path), str(work / "clone"), check=False)
    assert failed.returncode != 0
    assert "ERROR: the repository's stored data failed a check" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert gw.git(alice, "ls-remote", gw.url(path)).returncode == 0


def test_damaged_pack_gives_one_line_and_the_server_keeps_serving(gw, repo, work):
    alice, path, tree = repo
    commit(tree, "big.txt", big_text(7))
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    pack = next((server / "objects" / "pack").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.chmod(0o644)
    pack.write_bytes(bytes(data))
    failed = gw.git(alice, "clone", gw.url(path), str(work / "clone"), check=False)
    assert failed.returncode != 0
    assert "ERROR: the repository's stored data failed a check" in failed.stderr
    assert "Traceback" not in failed.stderr
    other = gw.repo(gw.workspace((alice, "write")))
    assert gw.git(alice, "ls-remote", gw.url(other)).returncode == 0


def test_histories_whose_tree_diffs_are_not_simple(gw, repo, work):
    # Each commit's trees and blobs are kept as a diff against its first parent: moves,
    # renames, reverts, mode changes, a file that becomes a directory, a submodule, an
    # empty commit and merges must all still add up to every object the refs reach.
    alice, path, tree = repo
    commit(tree, "a/one.txt", "one\n")
    commit(tree, "a/two.txt", "two\n")
    local_git("mv", "a/one.txt", "b-one.txt", cwd=tree)
    local_git("commit", "-q", "-m", "move a file up", cwd=tree)
    local_git("mv", "a", "renamed", cwd=tree)
    local_git("commit", "-q", "-m", "rename a directory", cwd=tree)
    commit(tree, "b-one.txt", "changed\n")
    commit(tree, "b-one.txt", "one\n", message="revert to the first version")
    (tree / "b-one.txt").chmod(0o755)
    local_git("commit", "-q", "-am", "mode only", cwd=tree)
    local_git("rm", "-q", "renamed/two.txt", cwd=tree)
    commit(tree, "renamed/two.txt/inside.txt", "now a directory\n")
    local_git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},sub", cwd=tree)
    local_git("commit", "-q", "-m", "a submodule", cwd=tree)
    local_git("commit", "-q", "--allow-empty", "-m", "empty", cwd=tree)
    local_git("checkout", "-q", "-b", "side", "HEAD~3", cwd=tree)
    commit(tree, "side.txt", "side\n")
    commit(tree, "renamed/three.txt", "three\n")
    local_git("checkout", "-q", "main", cwd=tree)
    local_git("merge", "-q", "-m", "merge side", "side", cwd=tree)
    local_git("checkout", "-q", "side", cwd=tree)
    local_git("merge", "-q", "-m", "merge main into side", "main", cwd=tree)
    local_git("checkout", "-q", "main", cwd=tree)
    push(gw, alice, path, tree, "main", "side")
    server = gw.repo_dir(path)
    mirror_clone(gw, alice, path, work / "c1")  # makes every commit's list
    (server / "gateway-clone-objects").unlink()
    mirror_clone(gw, alice, path, work / "c2")  # reads them back


def test_kept_commit_lists_damaged_or_cut_short_are_made_again(gw, repo, work):
    alice, path, tree = repo
    for i in range(6):
        commit(tree, f"f{i}.txt")
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    mirror_clone(gw, alice, path, work / "c1")
    kept = server / commitobjects.FILE
    whole = kept.read_bytes()
    for n, damaged in enumerate(
        [whole[: len(whole) // 2], whole[:40] + bytes([whole[40] ^ 1]) + whole[41:]]
    ):
        kept.write_bytes(damaged)
        (server / "gateway-clone-objects").unlink()
        mirror_clone(gw, alice, path, work / f"c{n + 2}")
        assert kept.read_bytes() != damaged
        lists = CommitObjects(str(server)).lists
        assert len(lists) == 6 and all(lists.values())  # every record whole again


def test_fetches_into_a_shallow_clone_then_unshallow(gw, repo, work):
    # A shallow client's fetch and --unshallow are both served from the stored packs
    # (shallow.py's plan); both end with a complete, consistent repository.
    alice, path, tree = repo
    for i in range(4):
        commit(tree, "big.txt", big_text(i))
    push(gw, alice, path, tree)
    shallow = work / "shallow"
    gw.git(alice, "clone", "-q", "--depth", "1", gw.url(path), str(shallow))
    commit(tree, "big.txt", big_text(9))
    new = commit(tree, "more.txt", "more\n")
    push(gw, alice, path, tree)
    gw.git(alice, "fetch", "-q", "origin", cwd=shallow)
    assert local_git("rev-parse", "origin/main", cwd=shallow).strip() == new
    assert local_git("show", "origin/main:big.txt", cwd=shallow) == big_text(9)
    client_fsck(shallow)
    # A branch from below the shallow point: its history down to the root comes with it.
    local_git("checkout", "-q", "-b", "old", "main~4", cwd=tree)
    old = commit(tree, "old.txt", "old\n")
    push(gw, alice, path, tree, "old")
    gw.git(alice, "fetch", "-q", "origin", "old:refs/remotes/origin/old", cwd=shallow)
    assert local_git("rev-list", "--count", "origin/old", cwd=shallow).strip() == "3"
    assert local_git("rev-parse", "origin/old", cwd=shallow).strip() == old
    client_fsck(shallow)
    gw.git(alice, "fetch", "-q", "--unshallow", "origin", cwd=shallow)
    assert local_git("rev-list", "--count", "origin/main", cwd=shallow).strip() == "6"
    client_fsck(shallow)


# --- the worker alone, fed requests no stock client sends ------------------------------------


def run_worker(server: Path, request: bytes) -> tuple[bytes, subprocess.CompletedProcess]:
    """The pack the worker sends for a v0 request (side-band-64k demultiplexed)."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.git.workers.worker", "git-upload-pack", str(server)],
        input=request,
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )
    out, pos, pack = result.stdout, 0, bytearray()
    while pos < len(out):
        size = int(out[pos : pos + 4], 16)
        line = out[pos + 4 : pos + size] if size else b""
        pos += size or 4
        if line[:1] == b"\x01" and (pack or line[1:5] == b"PACK"):
            pack += line[1:]
    return bytes(pack), result


def request(wants: list[str], haves: list[str], caps: str) -> bytes:
    lines = [pkt(f"want {wants[0]} {caps}\n".encode())]
    lines += [pkt(f"want {w}\n".encode()) for w in wants[1:]]
    lines.append(b"0000")
    lines += [pkt(f"have {h}\n".encode()) for h in haves]
    return b"".join(lines) + pkt(b"done\n")


def entry_types(pack: bytes, work: Path, strict: bool = True) -> dict[str, int]:
    """Index a received pack with C git in an empty repository (strict: every object it
    names is in it; else only: no delta refers outside it), and read each entry's type
    from its header byte."""
    repo = work / f"idx{len(list(work.iterdir()))}"
    local_git("init", "-q", "--bare", str(repo), cwd=work)
    (repo / "in.pack").write_bytes(pack)
    subprocess.run(
        ["git", "index-pack", *(["--strict"] if strict else []), str(repo / "in.pack")],
        cwd=repo,
        check=True,
        capture_output=True,
    )
    with open(repo / "in.idx", "rb") as idx:
        listing = subprocess.run(
            ["git", "show-index"], stdin=idx, capture_output=True, text=True, check=True
        ).stdout
    return {
        sha: (pack[int(offset)] >> 4) & 7
        for offset, sha, *_ in (line.split() for line in listing.splitlines())
    }


@pytest.fixture
def deltified(gw, repo, work) -> tuple[Path, str, str]:
    """A server repository repacked by C git (OFS deltas, the newest version of big.txt
    whole), then one more push (its big.txt a delta against the version before); its tip
    and the commit before."""
    alice, path, tree = repo
    for i in range(4):
        commit(tree, "big.txt", big_text(i))
    push(gw, alice, path, tree)
    server = gw.repo_dir(path)
    repack_with_c_git(server)
    commit(tree, "big.txt", big_text(4))
    push(gw, alice, path, tree)
    tip = local_git("rev-parse", "main", cwd=server).strip()
    return server, tip, local_git("rev-parse", "main~1", cwd=server).strip()


def test_ofs_deltas_only_for_a_client_that_asks(deltified, work):
    server, tip, _ = deltified
    with_ofs, result = run_worker(server, request([tip], [], "side-band-64k ofs-delta"))
    assert result.returncode == 0, result.stderr
    types = entry_types(with_ofs, work)
    assert len(types) == 15 and 6 in types.values()
    without, result = run_worker(server, request([tip], [], "side-band-64k"))
    assert result.returncode == 0, result.stderr
    types = entry_types(without, work)
    assert len(types) == 15 and 6 not in types.values() and 7 in types.values()


def test_thin_pack_only_for_a_client_that_asks(deltified, work):
    server, tip, parent = deltified
    thick, result = run_worker(server, request([tip], [parent], "side-band-64k ofs-delta"))
    assert result.returncode == 0, result.stderr
    assert len(entry_types(thick, work, strict=False)) == 3
    thin, result = run_worker(server, request([tip], [parent], "side-band-64k ofs-delta thin-pack"))
    assert result.returncode == 0, result.stderr
    assert len(thin) < len(thick) // 4  # big.txt as a delta against the client's version
