"""Git over SSH end to end: the real git client against a real `gateway serve`."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from testkit import Gateway, local_git
from testkit.localgit import commit, fsck, remote_refs


@pytest.fixture
def setup(gw: Gateway, work: Path):
    """A writer, a workspace, an empty private repository and a clone with one commit."""
    alice = gw.user()
    ws = gw.workspace((alice, "write"))
    path = gw.repo(ws)
    clone = work / "clone"
    result = gw.git(alice, "clone", gw.url(path), str(clone))
    assert "empty repository" in result.stderr
    first = commit(clone, "README.md", "hello\n")
    gw.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    fsck(gw, path)
    return alice, path, clone, first


def test_clone_push_and_clone_again(gw, setup, work):
    alice, path, clone, first = setup
    assert remote_refs(gw, alice, path) == {"HEAD": first, "refs/heads/main": first}
    second = work / "second"
    gw.git(alice, "clone", gw.url(path), str(second))
    assert (second / "README.md").read_text() == "hello\n"
    assert local_git("rev-parse", "HEAD", cwd=second).strip() == first


def test_fetch_and_pull_after_new_commits(gw, setup, work):
    alice, path, clone, first = setup
    other = work / "other"
    gw.git(alice, "clone", gw.url(path), str(other))
    for i in range(3):
        commit(clone, f"file{i}.txt")
    head = local_git("rev-parse", "HEAD", cwd=clone).strip()
    gw.git(alice, "push", "origin", "main", cwd=clone)
    fsck(gw, path)
    gw.git(alice, "fetch", "origin", cwd=other)
    assert local_git("rev-parse", "origin/main", cwd=other).strip() == head
    gw.git(alice, "pull", "--ff-only", "origin", "main", cwd=other)
    assert (other / "file2.txt").exists()
    # A fetch with nothing new succeeds and changes nothing.
    gw.git(alice, "fetch", "origin", cwd=other)
    assert local_git("rev-parse", "origin/main", cwd=other).strip() == head


def test_push_new_branch_then_delete_it(gw, setup):
    alice, path, clone, first = setup
    local_git("checkout", "-q", "-b", "feature", cwd=clone)
    tip = commit(clone, "feature.txt")
    gw.git(alice, "push", "origin", "feature", cwd=clone)
    fsck(gw, path)
    assert remote_refs(gw, alice, path)["refs/heads/feature"] == tip
    gw.git(alice, "push", "origin", "--delete", "feature", cwd=clone)
    fsck(gw, path)
    assert "refs/heads/feature" not in remote_refs(gw, alice, path)


def test_push_tags(gw, setup):
    alice, path, clone, first = setup
    local_git("tag", "v1.0", cwd=clone)
    local_git("tag", "-a", "v1.1", "-m", "release 1.1", cwd=clone)
    gw.git(alice, "push", "origin", "--tags", cwd=clone)
    fsck(gw, path)
    refs = remote_refs(gw, alice, path)
    assert refs["refs/tags/v1.0"] == first
    assert refs["refs/tags/v1.1^{}"] == first
    assert refs["refs/tags/v1.1"] == local_git("rev-parse", "v1.1", cwd=clone).strip()


def test_force_push(gw, setup):
    alice, path, clone, first = setup
    # Every repository starts with its default branch protected (a branch rule); this
    # is about force-pushes themselves, so the rule goes first.
    gw.cli("branch-rule", "remove", path, "main")
    commit(clone, "a.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    local_git("reset", "-q", "--hard", first, cwd=clone)
    rewritten = commit(clone, "b.txt")
    rejected = gw.git(alice, "push", "origin", "main", cwd=clone, check=False)
    assert rejected.returncode != 0 and "rejected" in rejected.stderr
    gw.git(alice, "push", "--force", "origin", "main", cwd=clone)
    fsck(gw, path)
    assert remote_refs(gw, alice, path)["refs/heads/main"] == rewritten


def test_shallow_clone(gw, setup, work):
    alice, path, clone, first = setup
    for i in range(3):
        commit(clone, f"s{i}.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    shallow = work / "shallow"
    gw.git(alice, "clone", "--depth", "1", gw.url(path), str(shallow))
    assert local_git("rev-list", "--count", "HEAD", cwd=shallow).strip() == "1"
    assert (shallow / "s2.txt").exists()


def test_archive_remote(gw, setup, work):
    alice, path, clone, first = setup
    tip = commit(clone, "docs/guide.txt", "guide\n")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    for treeish in ("HEAD", "main", "refs/heads/main", tip):
        result = subprocess.run(
            ["git", "archive", f"--remote={gw.url(path)}", treeish],
            env={**gw.env, "GIT_SSH_COMMAND": " ".join(gw.ssh_command(alice.key))},
            capture_output=True,
            cwd=work,
        )
        assert result.returncode == 0, result.stderr
        with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
            names = tar.getnames()
        assert "README.md" in names and "docs/guide.txt" in names
    # Like C git, no archive of an object by raw name unless a ref points at it.
    for bad_name in ("no-such-branch", first):
        bad = subprocess.run(
            ["git", "archive", f"--remote={gw.url(path)}", bad_name],
            env={**gw.env, "GIT_SSH_COMMAND": " ".join(gw.ssh_command(alice.key))},
            capture_output=True,
            text=True,
            cwd=work,
        )
        assert bad.returncode != 0 and "not a valid object name" in bad.stderr


def test_clone_of_repository_repacked_by_c_git_with_bitmaps(gw, setup, work):
    alice, path, clone, first = setup
    for i in range(5):
        commit(clone, f"bm{i}.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    # C git writes a .bitmap on `repack -adb`; then one more push adds a pack without one,
    # the layout that crashed dulwich's upload-pack.
    subprocess.run(
        ["git", "repack", "-adb"], cwd=gw.repo_dir(path), check=True, capture_output=True
    )
    assert list((gw.repo_dir(path) / "objects" / "pack").glob("*.bitmap"))
    tip = commit(clone, "after-repack.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    fresh = work / "fresh"
    gw.git(alice, "clone", gw.url(path), str(fresh))
    assert local_git("rev-parse", "HEAD", cwd=fresh).strip() == tip
    # An incremental fetch on top of the bitmapped pack works too.
    commit(clone, "later.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    gw.git(alice, "pull", "--ff-only", "origin", "main", cwd=fresh)
    assert (fresh / "later.txt").exists()
    fsck(gw, path)


def test_ls_remote_of_empty_repository(gw, work):
    alice = gw.user()
    ws = gw.workspace((alice, "read"))
    path = gw.repo(ws)
    assert gw.git(alice, "ls-remote", gw.url(path)).stdout == ""


def test_path_forms_and_case(gw, setup, work):
    """`acme/widgets`, `/acme/widgets.git` and other case all reach the same repository."""
    alice, path, clone, first = setup
    base = f"ssh://git@127.0.0.1:{gw.port}"
    for url in (
        f"{base}/{path}",
        f"{base}/{path}.git",
        f"{base}/{path.upper()}.git",
        f"git@127.0.0.1:{path}.git",
    ):
        if url.startswith("git@"):
            continue  # scp-style URLs cannot carry a port; covered by the ssh:// forms
        out = gw.git(alice, "ls-remote", url).stdout
        assert first in out


@pytest.mark.parametrize("verb", ["git-upload-pack", "git upload-pack"])
def test_both_verb_spellings(gw, setup, verb):
    alice, path, clone, first = setup
    result = gw.ssh(alice, f"{verb} '{path}.git'", input=b"0000")
    assert result.returncode == 0, result.stderr
    assert first in result.stdout and "refs/heads/main" in result.stdout


def test_a_failing_session_ends_alone(gw, setup):
    """A repository that breaks the server side gives one short line; others are served."""
    alice, path, clone, first = setup
    ws = path.split("/")[0]
    broken = gw.repo(ws)
    # (A ref of garbage no longer does: it is skipped, as C git skips it.)
    (gw.repo_dir(broken) / "config").write_text("[core]\n\trepositoryformatversion = 9\n")
    result = gw.git(alice, "ls-remote", gw.url(broken), check=False)
    assert result.returncode != 0
    assert "ERROR: internal error while serving the repository" in result.stderr
    assert "Traceback" not in result.stderr
    assert first in gw.git(alice, "ls-remote", gw.url(path)).stdout
    assert "Traceback" not in gw.server_log()
