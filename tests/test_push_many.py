"""Pushes of many refs and many objects at once, end to end (issue 17): a `--mirror` push
with hooks counting their calls, 1,000 new refs written in one packed-refs rewrite and
read back by C git and by the gateway, and a long history refused whole for one bad
object or one missing one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dulwich.objects import Tree

from test_fsck import commit_on, hash_object, tree_bytes
from testkit import local_git
from testkit.localgit import fsck
from testkit.pushes import assert_clean_log, bare_refs, log_since, seed
from testkit.receivepack import commands, new_history, pack_of, receive_pack, report_of


def history(clone: Path, commits: int, branches: int, tags: int) -> dict[str, str]:
    """`commits` commits on main (a file each), `branches` branches and `tags` tags
    (every other one annotated) at commits along it; returns every ref of the clone."""
    stream = []
    for i in range(commits):
        data = f"line {i}\n"
        stream.append(
            f"commit refs/heads/main\nmark :{i + 1}\n"
            f"committer T <t@example.com> {1_600_000_000 + i} +0000\ndata 2\nc\n"
            + ("from refs/heads/main^0\n" if i == 0 and _has_main(clone) else "")
            + f"M 100644 inline f{i % 7}.txt\ndata {len(data)}\n{data}\n"
        )
    for n in range(branches):
        stream.append(f"reset refs/heads/topic/{n}\nfrom :{1 + n * commits // branches}\n\n")
    for n in range(tags):
        mark = 1 + n * commits // tags
        if n % 2:
            stream.append(
                f"tag v{n}\nfrom :{mark}\ntagger T <t@example.com> 1600000000 +0000\ndata 3\nv{n}\n"
            )
        else:
            stream.append(f"reset refs/tags/v{n}\nfrom :{mark}\n\n")
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=clone, input="".join(stream).encode(), check=True
    )
    return bare_refs(clone)


def _has_main(clone: Path) -> bool:
    return (
        subprocess.run(
            ["git", "rev-parse", "-q", "--verify", "refs/heads/main"],
            cwd=clone,
            capture_output=True,
        ).returncode
        == 0
    )


def count_calls(hooks, work: Path) -> dict[str, Path]:
    files = {name: work / f"{name}.calls" for name in ("pre-receive", "update")}
    hooks(
        "pre-receive.d/50-count", f"#!/bin/sh\ncat > /dev/null\necho x >> {files['pre-receive']}\n"
    )
    hooks("update.d/50-count", f'#!/bin/sh\necho "$1" >> {files["update"]}\n')
    return files


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_mirror_push_of_many_refs_runs_hooks_as_git_does(gw, work, hooks):
    """A `git push --mirror` of 120 branches and 80 tags: pre-receive once, update once
    per ref; every ref lands as pushed (annotated tags peeled right for ls-remote), the
    repository is clean for C git and a clone gets every ref."""
    alice, path, clone, _first = seed(gw, work)
    history(clone, 300, 120, 80)
    calls = count_calls(hooks, work)
    offset = len(gw.server_log())
    bare = work / "bare.git"  # only branches and tags, as a server's repository has
    local_git("clone", "-q", "--bare", str(clone), str(bare), cwd=work)
    mine = bare_refs(bare)
    gw.git(alice, "push", "--mirror", gw.url(path), cwd=bare)
    assert lines(calls["pre-receive"]) == ["x"]
    pushed = [r for r in mine if r.startswith(("refs/heads/", "refs/tags/"))]
    assert sorted(lines(calls["update"])) == sorted(pushed)  # main moved too
    assert bare_refs(gw.repo_dir(path)) == {r: mine[r] for r in pushed}
    fsck(gw, path)
    ls = dict(
        reversed(line.split("\t"))
        for line in gw.git(alice, "ls-remote", gw.url(path)).stdout.splitlines()
    )
    local = dict(
        reversed(line.split(" ", 1)) for line in local_git("show-ref", "-d", cwd=clone).splitlines()
    )
    assert {r: s for r, s in ls.items() if r != "HEAD"} == {
        r: s for r, s in local.items() if r.startswith(("refs/heads/", "refs/tags/"))
    }
    again = work / "again"
    gw.git(alice, "clone", "--mirror", gw.url(path), str(again))
    assert bare_refs(again) == bare_refs(gw.repo_dir(path))
    assert_clean_log(log_since(gw, offset))


def test_a_thousand_new_refs_then_updates_and_deletions(gw, work, hooks):
    """1,000 new branches at existing commits in one push, then a push that moves some
    of them, deletes others and makes one a directory: each as C git reads it."""
    alice, path, clone, _first = seed(gw, work)
    history(clone, 200, 0, 0)
    gw.git(alice, "push", "origin", "main", cwd=clone)
    shas = local_git("rev-list", "main", cwd=clone).split()
    stdin = "".join(f"create refs/heads/many/{n} {shas[n % len(shas)]}\n" for n in range(1000))
    subprocess.run(["git", "update-ref", "--stdin"], cwd=clone, input=stdin.encode(), check=True)
    calls = count_calls(hooks, work)
    gw.git(alice, "push", "origin", "refs/heads/many/*:refs/heads/many/*", cwd=clone)
    assert len(lines(calls["update"])) == 1000 and lines(calls["pre-receive"]) == ["x"]
    repo_dir = gw.repo_dir(path)
    assert bare_refs(repo_dir) == {
        r: sha for r, sha in bare_refs(clone).items() if r.startswith("refs/heads/")
    }
    fsck(gw, path)
    gw.git(
        alice,
        "push",
        "-f",
        "origin",
        f"{shas[0]}:refs/heads/many/1",
        ":refs/heads/many/2",
        ":refs/heads/many/3",
        f"{shas[5]}:refs/heads/many/3/now-a-directory",
        cwd=clone,
    )
    refs = bare_refs(repo_dir)
    assert refs["refs/heads/many/1"] == shas[0]
    assert "refs/heads/many/2" not in refs and "refs/heads/many/3" not in refs
    assert refs["refs/heads/many/3/now-a-directory"] == shas[5]
    assert len([r for r in refs if r.startswith("refs/heads/many/")]) == 999
    fsck(gw, path)


def test_a_long_history_is_refused_whole_for_one_bad_object(gw, work):
    """2,000 good commits on 50 branches and one commit whose tree has a `.git` entry:
    nothing of the push lands, every ref `unpacker error`."""
    alice, path, clone, first = seed(gw, work)
    refs = history(clone, 2000, 50, 0)
    blob = bytes.fromhex(hash_object(clone, "blob", b"x\n"))
    hostile = hash_object(clone, "tree", tree_bytes((b"100644", b".git", blob)))
    bad = commit_on(clone, hostile, refs["refs/heads/main"])
    local_git("update-ref", "refs/heads/bad", bad, cwd=clone)
    before = bare_refs(gw.repo_dir(path))
    result = gw.git(alice, "push", "origin", "refs/heads/*:refs/heads/*", cwd=clone, check=False)
    assert result.returncode != 0
    assert "hasDotgit" in result.stderr
    assert "(unpacker error)" in result.stderr and "topic/49" in result.stderr
    assert bare_refs(gw.repo_dir(path)) == before
    fsck(gw, path)


def test_an_object_nothing_reaches_that_names_a_missing_one_refuses_the_push(gw, work):
    """As C git's index-pack --strict: a pushed tree whose entry names a blob nobody has
    refuses the push, even when the pushed ref does not reach that tree."""
    alice, path, _clone, first = seed(gw, work)
    tip, objects = new_history(first)
    dangling = Tree()
    dangling.add(b"gone.txt", 0o100644, b"ab" * 20)
    body = commands((first.encode(), tip.id, b"refs/heads/main")) + pack_of(*objects, dangling)
    report = report_of(receive_pack(gw, alice, path, body).stdout)
    assert report == {"unpack": "ok", "refs/heads/main": "ng missing necessary objects"}
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == first
    fsck(gw, path)


def test_a_push_big_enough_for_two_indexing_processes_arrives_whole(gw, work):
    """A history of more objects than PARALLEL_FROM, pushed by git into an empty
    repository (no thin-pack bases: the pack's delta chains are walked by the worker and
    a forked child): every ref as pushed, `git fsck --full` clean, and a clone of it
    complete."""
    from gateway.git.receive.packreader import PARALLEL_FROM

    alice = gw.user()
    path = gw.repo(gw.workspace((alice, "write")))
    clone = work / "big"
    local_git("init", "-q", "-b", "main", str(clone), cwd=work)
    mine = history(clone, PARALLEL_FROM // 3 + 300, 40, 20)  # a commit, tree, blob each
    gw.git(
        alice,
        "push",
        "-q",
        gw.url(path),
        "refs/heads/*:refs/heads/*",
        "refs/tags/*:refs/tags/*",
        cwd=clone,
    )
    repo_dir = gw.repo_dir(path)
    assert bare_refs(repo_dir) == mine
    count = local_git("count-objects", "-v", cwd=repo_dir)
    assert int(count.split("in-pack: ")[1].split()[0]) >= PARALLEL_FROM
    fsck(gw, path)
    again = work / "again"
    gw.git(alice, "clone", "-q", "--mirror", gw.url(path), str(again))
    assert bare_refs(again) == mine
