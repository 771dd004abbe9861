"""The first clone ever of a repository C git repacked with bitmaps (one copied in by hand):
its objects come from the `.bitmap` (gateway/git/upload/bitmaps.py), never fewer than the
refs reach, and a clone the bitmaps do not cover is walked as before."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dulwich.repo import Repo

from gateway.git.upload import bitmaps, storedpacks
from gateway.git.upload.commitobjects import CommitObjects
from testkit import Gateway, local_git
from testkit.localgit import commit

COMMIT_OBJECTS = "gateway-commit-objects"  # made only by a walk of the commits' trees


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def reachable(repo: Path, *refs: str) -> set[str]:
    out = git(repo, "rev-list", "--objects", *(refs or ("--all",)))
    return {line.split()[0] for line in out.splitlines()}


def repack_with_bitmaps(server: Path) -> None:
    git(server, "repack", "-a", "-d", "-b", "-q")
    assert list((server / "objects" / "pack").glob("*.bitmap"))
    for name in ("gateway-clone-objects", COMMIT_OBJECTS):
        (server / name).unlink(missing_ok=True)  # as if copied in by hand


@pytest.fixture
def repo(gw: Gateway, work: Path):
    """A repository with two branches and tags, pushed, then repacked by C git."""
    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    tree = work / "tree"
    local_git("init", "-q", "-b", "main", str(tree), cwd=work)
    for n in range(60):
        commit(tree, f"dir{n % 4}/f{n % 7}.txt", f"{n}\n" * (n + 1))
        if n % 15 == 0:
            local_git("tag", "-a", "-m", f"v{n}", f"v{n}", cwd=tree)
    local_git("checkout", "-q", "-b", "side", "HEAD~20", cwd=tree)
    for n in range(10):
        commit(tree, f"side{n % 3}.txt", f"side {n}\n")
    local_git("checkout", "-q", "main", cwd=tree)
    gw.git(alice, "push", "-q", "--tags", gw.url(path), "main", "side", cwd=tree)
    server = gw.repo_dir(path)
    repack_with_bitmaps(server)
    return alice, path, tree, server


def clone_and_check(gw: Gateway, user, path: str, dest: Path) -> Path:
    gw.git(user, "clone", "-q", "--mirror", gw.url(path), str(dest))
    subprocess.run(["git", "fsck", "--full", "--strict", "--no-dangling"], cwd=dest, check=True)
    assert reachable(dest) == reachable(gw.repo_dir(path))
    return dest


def test_first_clone_of_a_repacked_repository_reads_the_bitmaps(gw, repo, work):
    alice, path, _, server = repo
    clone_and_check(gw, alice, path, work / "first")
    # No commit's trees were walked: the kept lists a walk makes were not needed.
    assert not (server / COMMIT_OBJECTS).exists()
    clone_and_check(gw, alice, path, work / "again")


def test_clone_after_pushes_on_top_of_the_bitmaps(gw, repo, work):
    alice, path, tree, server = repo
    new = [commit(tree, "new.txt", "after the repack\n"), commit(tree, "dir1/f2.txt", "x\n")]
    gw.git(alice, "push", "-q", gw.url(path), "main", cwd=tree)
    clone_and_check(gw, alice, path, work / "clone")
    # Only the commits pushed since the repack were diffed; the rest came from bitmaps.
    assert set(CommitObjects(str(server)).lists) == {sha.encode() for sha in new}
    local_git("checkout", "-q", "-b", "merged", "side", cwd=tree)
    local_git("merge", "-q", "--no-edit", "main", cwd=tree)
    gw.git(alice, "push", "-q", gw.url(path), "merged", cwd=tree)
    clone_and_check(gw, alice, path, work / "merge")


def test_clone_after_a_force_push_and_a_deletion(gw, repo, work):
    alice, path, tree, server = repo
    side_only = reachable(server, "side") - reachable(server, "main", "--tags")
    assert side_only
    gw.git(alice, "push", "-q", gw.url(path), "--delete", "side", cwd=tree)
    (server / "gateway-clone-objects").unlink(missing_ok=True)
    clone = clone_and_check(gw, alice, path, work / "after-delete")
    assert not side_only & reachable(clone)
    # The objects are still in the bitmapped pack; a clone must not carry them.
    assert subprocess.run(["git", "cat-file", "-e", side_only.pop()], cwd=clone).returncode != 0
    gw.cli("branch-rule", "remove", path, "main")  # the default branch's protection
    gw.git(alice, "push", "-q", "-f", gw.url(path), "main~5:main", cwd=tree)
    clone_and_check(gw, alice, path, work / "after-force")


def test_a_damaged_bitmap_is_ignored(gw, repo, work):
    alice, path, _, server = repo
    bitmap = next((server / "objects" / "pack").glob("*.bitmap"))
    data = bytearray(bitmap.read_bytes())
    bitmap.chmod(0o644)
    bitmap.write_bytes(bytes(data[: len(data) // 2]))
    clone_and_check(gw, alice, path, work / "truncated")
    (server / "gateway-clone-objects").unlink()
    data[40:48] = b"\xff" * 8  # the commits' type bitmap: an impossible run length
    bitmap.write_bytes(bytes(data))
    clone_and_check(gw, alice, path, work / "garbled")


def test_every_bitmap_entry_is_what_c_git_says_it_reaches(tmp_path):
    # Many commits and branches, so that C git XORs entries against earlier ones.
    server = tmp_path / "server.git"
    local_git("init", "-q", "--bare", "-b", "main", str(server), cwd=tmp_path)
    stream, last_main = [], 0
    for n in range(1, 1201):
        branch = "main" if n % 5 else f"b{n % 40}"
        # A branch commit forks from main's latest: its first one (from: main's tip)
        # or the branch's own previous commit (fast-import continues the branch).
        start = f"from :{last_main}\n" if branch != "main" and n <= 200 else ""
        stream.append(
            f"commit refs/heads/{branch}\nmark :{n}\ncommitter T <t@e> {1700000000 + n} +0000\n"
            f"data 2\n{n % 10}\n{start}M 644 inline d{n % 9}/f{n % 13}\ndata {len(str(n))}\n{n}\n\n"
        )
        if branch == "main":
            last_main = n
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=server, input="".join(stream).encode(), check=True
    )
    git(server, "repack", "-a", "-d", "-b", "-q")
    reader = storedpacks.open_reader(Repo(str(server)))
    assert reader is not None
    try:
        pack = reader.packs[0]
        found = bitmaps.PackBitmaps(pack, pack.basename)
        names = pack.hex_names_in_pack_order()
        assert len(found.by_commit) > 20
        assert any(xor for _, xor in found.entries)
        for binsha in found.by_commit:
            bits = found.reach(binsha)
            assert bits is not None
            ours = {names[k].decode() for k in range(len(names)) if bits >> k & 1}
            assert ours == reachable(server, binsha.hex())
    finally:
        reader.close()
