"""Ref-level checks of the push pipeline, with the real `git push` (and raw pkt-lines):
directory/file conflicts, `--atomic` all or none, the namespaces a push may write
(`push_ref_namespaces`), unusual ref names (`allow_unusual_ref_names`), refs/replace/
against the default-branch rule, and what hooks and the audit log see."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testkit import Gateway, local_git, unique, wait_for
from testkit.localgit import commit, fsck
from testkit.pushes import (
    assert_clean_log,
    bare_refs,
    log_since,
    no_ref_locks_soon,
    ref_locks,
    seed,
)
from testkit.receivepack import ZERO, commands, new_history, pack_of, receive_pack, report_of


def push_rows(g: Gateway, account: str) -> list[dict]:
    entries = json.loads(g.cli("audit", "--account", account, "--json", "--limit", "1000").stdout)
    return [e for e in entries if e["action"] == "repo.push"]


def pushes_audited(g: Gateway, account: str) -> int:
    return len(push_rows(g, account))


@pytest.fixture
def seeded(gw, work):
    """(alice, path, clone, first, repo_dir, log offset): main pushed, plus a post-receive
    hook that records every line it is given in work/post-receive."""
    alice, path, clone, first = seed(gw, work)
    return alice, path, clone, first, gw.repo_dir(path), len(gw.server_log())


def record_post_receive(hooks, work: Path) -> Path:
    record = work / "post-receive"
    hooks(
        "post-receive.d/30-record",
        f"""#!/bin/sh
while read -r old new ref; do echo "$ref" >> {record}; done
""",
    )
    return record


def moved(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


def ok_after(gw: Gateway, alice, path: str, clone: Path, offset: int) -> None:
    """The server keeps serving: a normal push lands; nothing broken or left behind."""
    tip = commit(clone, unique("next") + ".txt")
    gw.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == tip
    assert no_ref_locks_soon(gw.repo_dir(path)), ref_locks(gw.repo_dir(path))
    fsck(gw, path)
    assert_clean_log(log_since(gw, offset))


# --- directory/file conflicts ------------------------------------------------------------


@pytest.mark.parametrize("packed", [False, True], ids=["loose", "packed"])
def test_directory_file_conflicts_are_refused_with_git_wording(gw, seeded, hooks, work, packed):
    alice, path, clone, first, repo_dir, offset = seeded
    gw.git(alice, "push", "origin", "HEAD:refs/heads/a", "HEAD:refs/heads/x/y", cwd=clone)
    if packed:
        local_git("pack-refs", "--all", cwd=repo_dir)
        assert not (repo_dir / "refs" / "heads" / "a").exists()
    record = record_post_receive(hooks, work)
    before = bare_refs(repo_dir)
    audited = pushes_audited(gw, alice.name)
    for target, there in [("a/b", "refs/heads/a"), ("x", "refs/heads/x/y")]:
        result = gw.git(
            alice, "push", "origin", f"HEAD:refs/heads/{target}", cwd=clone, check=False
        )
        assert result.returncode != 0
        assert (
            f"remote: error: cannot lock ref 'refs/heads/{target}': '{there}' exists; "
            f"cannot create 'refs/heads/{target}'"
        ) in result.stderr, result.stderr
        assert f"[remote rejected] HEAD -> {target} (failed to update ref)" in result.stderr
        assert "internal error" not in result.stderr
    assert bare_refs(repo_dir) == before
    assert moved(record) == []  # post-receive saw nothing, since nothing moved
    assert pushes_audited(gw, alice.name) == audited  # and no repo.push row
    ok_after(gw, alice, path, clone, offset)
    assert moved(record) == ["refs/heads/main"]
    assert pushes_audited(gw, alice.name) == audited + 1


def test_atomic_push_with_a_conflict_moves_nothing(gw, seeded, hooks, work):
    alice, path, clone, first, repo_dir, offset = seeded
    gw.git(alice, "push", "origin", "HEAD:refs/heads/a", cwd=clone)
    record = record_post_receive(hooks, work)
    commit(clone, "new.txt")
    before = bare_refs(repo_dir)
    result = gw.git(
        alice,
        "push",
        "--atomic",
        "origin",
        "HEAD:main",
        "HEAD:refs/heads/ok1",
        "HEAD:refs/heads/a/b",
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0
    assert "cannot lock ref 'refs/heads/a/b': 'refs/heads/a' exists" in result.stderr
    assert "(atomic push failed)" in result.stderr and "(failed to update ref)" in result.stderr
    assert bare_refs(repo_dir) == before
    assert moved(record) == []
    # Without --atomic the other two land, and post-receive is told of exactly those.
    result = gw.git(
        alice,
        "push",
        "origin",
        "HEAD:main",
        "HEAD:refs/heads/ok1",
        "HEAD:refs/heads/a/b",
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0
    refs = bare_refs(repo_dir)
    assert "refs/heads/ok1" in refs and "refs/heads/a/b" not in refs
    assert refs["refs/heads/main"] == refs["refs/heads/ok1"] != before["refs/heads/main"]
    assert sorted(moved(record)) == ["refs/heads/main", "refs/heads/ok1"]
    ok_after(gw, alice, path, clone, offset)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_conflicts_within_one_push(gw, seeded, atomic):
    alice, path, clone, first, repo_dir, offset = seeded
    flags = ["--atomic"] if atomic else []
    result = gw.git(
        alice,
        "push",
        *flags,
        "origin",
        "HEAD:refs/heads/p",
        "HEAD:refs/heads/p/q",
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0
    assert (
        "cannot lock ref 'refs/heads/p': cannot process 'refs/heads/p' and 'refs/heads/p/q' "
        "at the same time"
    ) in result.stderr, result.stderr
    refs = bare_refs(repo_dir)
    assert "refs/heads/p" not in refs and "refs/heads/p/q" not in refs  # neither comes first
    ok_after(gw, alice, path, clone, offset)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_a_push_can_replace_a_by_a_slash_b(gw, seeded, atomic):
    """Deleting `a` and creating `a/b` in one push works (deletions go first), and back."""
    alice, path, clone, first, repo_dir, offset = seeded
    flags = ["--atomic"] if atomic else []
    gw.git(alice, "push", "origin", "HEAD:refs/heads/a", cwd=clone)
    gw.git(alice, "push", *flags, "origin", ":refs/heads/a", "HEAD:refs/heads/a/b", cwd=clone)
    refs = bare_refs(repo_dir)
    assert "refs/heads/a" not in refs and refs["refs/heads/a/b"] == first
    gw.git(alice, "push", *flags, "origin", ":refs/heads/a/b", "HEAD:refs/heads/a", cwd=clone)
    refs = bare_refs(repo_dir)
    assert "refs/heads/a/b" not in refs and refs["refs/heads/a"] == first
    ok_after(gw, alice, path, clone, offset)


def test_stale_delete_does_not_make_way_for_a_conflicting_create(gw, seeded):
    """The deletion of `a` fails its compare-and-swap, so `a/b` cannot be made either."""
    alice, path, clone, first, repo_dir, offset = seeded
    gw.git(alice, "push", "origin", "HEAD:refs/heads/a", cwd=clone)
    result = receive_pack(
        gw,
        alice,
        path,
        commands((b"1" * 40, ZERO, b"refs/heads/a"), (ZERO, first.encode(), b"refs/heads/a/b"))
        + pack_of(),
    )
    report = report_of(result.stdout)
    assert report == {
        "unpack": "ok",
        "refs/heads/a": "ng failed to update ref",
        "refs/heads/a/b": "ng failed to update ref",
    }, report
    refs = bare_refs(repo_dir)
    assert refs["refs/heads/a"] == first and "refs/heads/a/b" not in refs
    ok_after(gw, alice, path, clone, offset)


@pytest.mark.parametrize("ref", ["refs/foo", "refs/heads", "refs/tags"])
def test_one_component_under_refs_is_a_funny_refname(gw, seeded, ref):
    alice, path, clone, first, repo_dir, offset = seeded
    before = bare_refs(repo_dir)
    result = gw.git(alice, "push", "origin", f"HEAD:{ref}", cwd=clone, check=False)
    assert result.returncode != 0
    assert f"[remote rejected] HEAD -> {ref} (funny refname)" in result.stderr, result.stderr
    assert bare_refs(repo_dir) == before
    ok_after(gw, alice, path, clone, offset)


def test_a_lock_file_in_the_way_fails_that_ref_and_atomic_undoes_the_rest(gw, seeded, hooks, work):
    """A ref that cannot be locked (a lock file another writer left): its `ng`; with
    --atomic the refs already moved are put back."""
    alice, path, clone, first, repo_dir, offset = seeded
    record = record_post_receive(hooks, work)
    lock = repo_dir / "refs" / "heads" / "zz.lock"
    lock.write_text("")
    try:
        result = gw.git(
            alice,
            "push",
            "--atomic",
            "origin",
            "HEAD:refs/heads/aa",
            "HEAD:refs/heads/zz",
            cwd=clone,
            check=False,
        )
        assert result.returncode != 0
        assert "remote: error: cannot lock ref 'refs/heads/zz'" in result.stderr, result.stderr
        assert "zz (failed to update ref)" in result.stderr
        assert "aa (atomic push failed)" in result.stderr
        refs = bare_refs(repo_dir)
        assert "refs/heads/aa" not in refs and "refs/heads/zz" not in refs
        assert moved(record) == []
        result = gw.git(
            alice,
            "push",
            "origin",
            "HEAD:refs/heads/aa",
            "HEAD:refs/heads/zz",
            cwd=clone,
            check=False,
        )
        assert "zz (failed to update ref)" in result.stderr, result.stderr
        refs = bare_refs(repo_dir)
        assert refs["refs/heads/aa"] == first and "refs/heads/zz" not in refs
        assert moved(record) == ["refs/heads/aa"]
    finally:
        lock.unlink()
    fsck(gw, path)
    assert "internal error" not in gw.server_log()[offset:]


# --- namespaces ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "refs/notes/commits",
        "refs/replace/" + "1" * 40,
        "refs/for/main",
        "refs/remotes/origin/main",
        "refs/pull/1/head",
    ],
)
def test_refs_outside_heads_and_tags_are_refused_by_default(gw, seeded, ref):
    alice, path, clone, first, repo_dir, offset = seeded
    before = bare_refs(repo_dir)
    audited = pushes_audited(gw, alice.name)
    result = gw.git(alice, "push", "origin", f"HEAD:{ref}", cwd=clone, check=False)
    assert result.returncode != 0
    assert "(only refs/heads/ and refs/tags/ may be pushed)" in result.stderr, result.stderr
    assert bare_refs(repo_dir) == before
    assert pushes_audited(gw, alice.name) == audited
    ok_after(gw, alice, path, clone, offset)


def test_deleting_a_ref_outside_the_namespaces_is_refused(gw, seeded):
    alice, path, clone, first, repo_dir, offset = seeded
    local_git("update-ref", "refs/notes/commits", first, cwd=repo_dir)  # the operator's
    result = gw.git(alice, "push", "origin", ":refs/notes/commits", cwd=clone, check=False)
    assert "(only refs/heads/ and refs/tags/ may be pushed)" in result.stderr, result.stderr
    assert bare_refs(repo_dir)["refs/notes/commits"] == first


def test_an_operator_can_allow_more_namespaces(private, work):
    g = private('push_ref_namespaces = ["refs/heads/", "refs/tags/", "refs/notes/"]\n')
    alice, path, clone, first = seed(g, work)
    local_git("notes", "add", "-m", "a note", "HEAD", cwd=clone)
    g.git(alice, "push", "origin", "refs/notes/commits", cwd=clone)
    assert "refs/notes/commits" in bare_refs(g.repo_dir(path))
    refused = g.git(alice, "push", "origin", "HEAD:refs/for/main", cwd=clone, check=False)
    assert "(only refs/heads/, refs/tags/ and refs/notes/ may be pushed)" in refused.stderr
    fsck(g, path)


# --- unusual names --------------------------------------------------------------------------


UNUSUAL = {
    "rlo": "refs/heads/evil\u202egpj.exe",
    "csi": "refs/heads/x\u009b31my",
    "lri": "refs/tags/v1\u2066",
    "lrm": "refs/heads/a\u200eb",
    "head": "refs/heads/HEAD",
}


@pytest.mark.parametrize("name", list(UNUSUAL), ids=list(UNUSUAL))
def test_unusual_ref_names_are_refused_by_default(gw, seeded, name):
    alice, path, clone, first, repo_dir, offset = seeded
    ref = UNUSUAL[name]
    before = bare_refs(repo_dir)
    result = gw.git(alice, "push", "origin", f"HEAD:{ref}", cwd=clone, check=False)
    assert result.returncode != 0
    reason = (
        "a branch may not be called HEAD"
        if name == "head"
        else "ref name with a control or bidirectional character"
    )
    assert f"({reason})" in result.stderr, result.stderr
    assert bare_refs(repo_dir) == before
    ok_after(gw, alice, path, clone, offset)


def test_unusual_ref_names_can_be_allowed(private, work):
    g = private("allow_unusual_ref_names = true\n")
    alice, path, clone, first = seed(g, work)
    g.git(alice, "push", "origin", *(f"HEAD:{ref}" for ref in UNUSUAL.values()), cwd=clone)
    refs = bare_refs(g.repo_dir(path))
    assert all(refs.get(ref) == first for ref in UNUSUAL.values()), refs
    fsck(g, path)


# --- refs/replace/ against the default-branch rule --------------------------------------


def replacement_attack(g: Gateway, alice, clone: Path, old: str) -> tuple[str, str]:
    """An unrelated history N, and a replacement R of N whose parent is `old`: with
    replacements honoured, `git merge-base --is-ancestor old N` says yes."""
    local_git("checkout", "-q", "--orphan", "rewrite", cwd=clone)
    n = commit(clone, "rewritten.txt", message="history rewritten")
    tree = local_git("rev-parse", "HEAD^{tree}", cwd=clone).strip()
    r = local_git("commit-tree", tree, "-p", old, "-m", "history rewritten", cwd=clone).strip()
    local_git("replace", n, r, cwd=clone)
    return n, r


def test_replace_refs_cannot_bypass_the_default_branch_protection(private, work):
    """Even with refs/replace/ allowed: the default rule's fast-forward check reads the
    objects as they are, never replacements."""
    g = private('push_ref_namespaces = ["refs/heads/", "refs/tags/", "refs/replace/"]\n')
    alice, path, clone, first = seed(g, work)
    repo_dir = g.repo_dir(path)
    n, r = replacement_attack(g, alice, clone, first)
    g.git(alice, "push", "origin", f"refs/replace/{n}", cwd=clone)
    assert bare_refs(repo_dir)[f"refs/replace/{n}"] == r
    # The replacement works for a git that honours it: the bypass is real.
    assert (
        subprocess.run(["git", "merge-base", "--is-ancestor", first, n], cwd=repo_dir).returncode
        == 0
    )
    forced = g.git(
        alice, "push", "--force", "origin", f"{n}:refs/heads/main", cwd=clone, check=False
    )
    assert forced.returncode != 0
    assert "(rule refs/heads/main: force-push not allowed (not a fast-forward))" in forced.stderr
    assert bare_refs(repo_dir)["refs/heads/main"] == first
    fsck(g, path)


def test_replace_refs_are_refused_by_default(gw, seeded):
    alice, path, clone, first, repo_dir, offset = seeded
    n, r = replacement_attack(gw, alice, clone, first)
    result = gw.git(alice, "push", "origin", f"refs/replace/{n}", cwd=clone, check=False)
    assert f"refs/replace/{n} (only refs/heads/ and refs/tags/ may be pushed)" in result.stderr
    assert f"refs/replace/{n}" not in bare_refs(repo_dir)


def test_connectivity_check_ignores_replacements(private, work):
    """A commit whose parent is missing stays refused even if a replacement of it, with
    a parent that exists, is already in the repository: the gateway reads the objects."""
    g = private('push_ref_namespaces = ["refs/"]\n')
    alice, path, clone, first = seed(g, work)
    repo_dir = g.repo_dir(path)
    broken, objects = new_history("2" * 40)  # its parent does not exist anywhere
    whole, whole_objects = new_history(first)
    result = receive_pack(
        g,
        alice,
        path,
        commands(
            (ZERO, whole.id, b"refs/heads/whole"), (ZERO, whole.id, b"refs/replace/" + broken.id)
        )
        + pack_of(*whole_objects),
    )
    assert report_of(result.stdout)["refs/replace/" + broken.id.decode()] == "ok"
    result = receive_pack(
        g, alice, path, commands((ZERO, broken.id, b"refs/heads/broken")) + pack_of(*objects)
    )
    assert report_of(result.stdout)["refs/heads/broken"] == "ng missing necessary objects"
    assert "refs/heads/broken" not in bare_refs(repo_dir)
    fsck(g, path)


def test_every_hook_runs_without_replacements(gw, seeded, hooks, work):
    alice, path, clone, first, repo_dir, offset = seeded
    record = work / "env"
    for name in ("pre-receive", "update", "post-receive", "post-update"):
        hooks(
            name, f'#!/bin/sh\ncat >/dev/null; echo "{name} $GIT_NO_REPLACE_OBJECTS" >> {record}\n'
        )
    commit(clone, "hooked.txt")
    gw.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    assert sorted(record.read_text().splitlines()) == [
        "post-receive 1",
        "post-update 1",
        "pre-receive 1",
        "update 1",
    ]


def test_a_ref_name_with_a_space_is_that_refs_funny_refname(gw, seeded):
    """As C git reads a command: the name is the rest of the line. Before, the whole push
    ended with a protocol error and no report."""
    alice, path, clone, first, repo_dir, offset = seeded
    result = receive_pack(
        gw,
        alice,
        path,
        commands(
            (ZERO, first.encode(), b"refs/heads/sp ace"), (ZERO, first.encode(), b"refs/heads/fine")
        )
        + pack_of(),
    )
    assert b"ng refs/heads/sp ace funny refname\n" in result.stdout, result.stdout
    assert report_of(result.stdout)["refs/heads/fine"] == "ok"
    assert result.returncode == 0
    refs = bare_refs(repo_dir)
    assert refs["refs/heads/fine"] == first and not any(" " in r for r in refs)
    ok_after(gw, alice, path, clone, offset)


def test_the_audit_row_names_the_refs_that_moved(gw, seeded):
    alice, path, clone, first, repo_dir, offset = seeded
    gw.git(alice, "push", "origin", "HEAD:refs/heads/a", cwd=clone)
    assert push_rows(gw, alice.name)[-1]["detail"] == "1 ref: refs/heads/a"
    commit(clone, "more.txt")
    result = gw.git(
        alice,
        "push",
        "origin",
        "HEAD:main",
        "HEAD:refs/heads/a/b",
        "HEAD:refs/tags/t1",
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0  # a/b was refused
    row = push_rows(gw, alice.name)[-1]
    assert row["target"] == path and row["outcome"] == "ok"
    assert row["detail"] == "2 refs: refs/heads/main refs/tags/t1", row
    # A push of many refs names the first 50 of them.
    many = [f"HEAD:refs/heads/many/{n:03d}" for n in range(60)]
    gw.git(alice, "push", "origin", *many, cwd=clone)
    detail = push_rows(gw, alice.name)[-1]["detail"]
    assert detail.startswith("60 refs: refs/heads/many/000 ") and detail.endswith(" ...")
    assert len(detail.split()) == 2 + 50 + 1, detail


def test_unusual_names_are_escaped_in_the_audit(private, work):
    g = private("allow_unusual_ref_names = true\n")
    alice, path, clone, first = seed(g, work)
    g.git(alice, "push", "origin", "HEAD:refs/heads/evil\u202egpj", cwd=clone)
    detail = push_rows(g, alice.name)[-1]["detail"]
    assert detail == "1 ref: refs/heads/evil\\u202egpj", detail
    assert "\u202e" not in g.cli("audit", "--account", alice.name).stdout


def test_a_push_whose_client_goes_away_after_its_refs_moved_is_audited(gw, seeded, hooks, work):
    alice, path, clone, first, repo_dir, offset = seeded
    hooks("post-receive.d/40-slow", "#!/bin/sh\ncat >/dev/null\nsleep 5\n")
    audited = pushes_audited(gw, alice.name)
    body = commands((ZERO, first.encode(), b"refs/heads/gone")) + pack_of()
    client = subprocess.Popen(
        [
            *gw.ssh_command(alice.key),
            "-p",
            str(gw.port),
            "git@127.0.0.1",
            f"git-receive-pack '{path}.git'",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gw.env,
    )
    client.stdin.write(body)
    client.stdin.flush()
    try:
        assert wait_for(lambda: "refs/heads/gone" in bare_refs(repo_dir), 20)
    finally:
        client.kill()
        client.wait()
    assert wait_for(lambda: pushes_audited(gw, alice.name) == audited + 1, 20)
    assert push_rows(gw, alice.name)[-1]["detail"] == "1 ref: refs/heads/gone"
