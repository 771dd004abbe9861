"""fsck of received objects (gateway/git/receive/fsck.py): C git's receive.fsckObjects classes.

End to end: hostile trees, commits, tags and .gitmodules pushed with the real `git push`
(the client does not check what it sends) and as raw packs to receive-pack; each push is
refused whole with `unpacker error` and a `remote: error: object SHA: msgId: ...` line,
no ref moves, nothing enters the store, and `git fsck --full --strict` stays clean.
Legitimate repositories (submodules, merges, tags) still push. Then the checker's rules
one by one, without a server.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tag, Tree

from gateway.git.receive import fsck as checker
from testkit import local_git
from testkit.localgit import commit, fsck
from testkit.pushes import (
    assert_clean_log,
    bare_refs,
    has_object,
    log_since,
    no_quarantine_soon,
    seed,
)
from testkit.receivepack import RawObject, commands, make_commit, pack_of, sideband, tree_bytes

SHA = bytes(range(1, 21))  # some entry's binary sha


def hash_object(clone: Path, kind: str, data: bytes) -> str:
    return (
        subprocess.run(
            ["git", "hash-object", "-w", "--literally", "-t", kind, "--stdin"],
            cwd=clone,
            input=data,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )


def commit_on(clone: Path, tree: str, parent: str, message: str = "hostile") -> str:
    return local_git("commit-tree", tree, "-p", parent, "-m", message, cwd=clone).strip()


@pytest.fixture
def repo(gw, tmp_path):
    alice, path, clone, first = seed(gw, tmp_path)
    repo_dir = gw.repo_dir(path)
    offset = len(gw.server_log())

    def refused(result, *absent: str, msg_id: str, ref: str = "main") -> None:
        """A refused `git push` (or raw push result): message, status, nothing changed."""
        err = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
        assert result.returncode != 0, err
        assert f": {msg_id}: " in err and "remote: error: object " in err, err
        assert "remote unpack failed: fsck error in packed object" in err, err
        assert re.search(rf"\[remote rejected\] \S+ -> {ref} \(unpacker error\)", err), err
        unchanged(*absent)

    def unchanged(*absent: str) -> None:
        assert bare_refs(repo_dir) == {"refs/heads/main": first}
        assert no_quarantine_soon(repo_dir)
        for sha in absent:
            assert not has_object(repo_dir, sha), sha
        fsck(gw, path)
        assert_clean_log(log_since(gw, offset))

    return alice, path, clone, first, refused, unchanged


# --- end to end: the real git client --------------------------------------------------------

HOSTILE_TREES = {
    "hasDotgit": [(b"100644", b".git", None)],
    "hasDotgit-upper": [(b"100644", b".GIT", None)],
    "hasDotgit-ntfs-short": [(b"40000", b"GIT~1", "tree")],
    "hasDotgit-ntfs-trailing": [(b"40000", b".git. . ", "tree")],
    "hasDotgit-hfs": [(b"40000", ".g\u200cit".encode(), "tree")],
    "hasDotgit-backslash": [(b"100644", b"a\\.git\\hooks\\post-checkout", None)],
    "hasDotdot": [(b"40000", b"..", "tree")],
    "hasDot": [(b"40000", b".", "tree")],
    "fullPathname": [(b"100644", b"a/../../x", None)],
    "duplicateEntries": [(b"100644", b"a", None), (b"100644", b"a", None)],
    "duplicateEntries-file-and-dir": [
        (b"100644", b"a", None),
        (b"100644", b"a.b", None),
        (b"40000", b"a", "tree"),
    ],
    "treeNotSorted": [(b"100644", b"b", None), (b"100644", b"a", None)],
    "zeroPaddedFilemode": [(b"0100644", b"a", None)],
    "badFilemode": [(b"100777", b"a", None)],
    "gitmodulesSymlink": [(b"120000", b".gitmodules", None)],
}


@pytest.mark.parametrize("case", list(HOSTILE_TREES), ids=list(HOSTILE_TREES))
def test_hostile_tree_pushed_with_git_is_refused(gw, repo, case):
    alice, path, clone, first, refused, unchanged = repo
    blob = hash_object(clone, "blob", b"payload\n")
    subtree = hash_object(clone, "tree", tree_bytes((b"100644", b"f", bytes.fromhex(blob))))
    entries = [
        (mode, name, bytes.fromhex(subtree if kind == "tree" else blob))
        for mode, name, kind in HOSTILE_TREES[case]
    ]
    tree = hash_object(clone, "tree", tree_bytes(*entries))
    tip = commit_on(clone, tree, first)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    refused(result, tip, tree, msg_id=case.split("-")[0])
    assert f"remote: error: object {tree}: {case.split('-')[0]}: " in result.stderr


GITMODULES = {
    "gitmodulesUrl": b'[submodule "x"]\n\tpath = x\n\turl = --upload-pack=touch /tmp/pwned\n',
    "gitmodulesName": b'[submodule "../../modules/evil"]\n\tpath = x\n\turl = ./x\n',
    "gitmodulesPath": b'[submodule "x"]\n\tpath = --x\n\turl = ./x\n',
    "gitmodulesUpdate": b'[submodule "x"]\n\tpath = x\n\turl = ./x\n\tupdate = !sh -c "id"\n',
    "gitmodulesParse": b'[submodule "x"\n\tpath = x\n',
}


@pytest.mark.parametrize(
    "case,name",
    [(case, ".gitmodules") for case in GITMODULES]
    + [
        ("gitmodulesUrl", ".GITMODULES"),
        ("gitmodulesUrl", "gitmod~1"),
        ("gitmodulesName", ".gitmodules."),
        ("gitmodulesUrl", ".g\u200citmodules"),
    ],
)
def test_hostile_gitmodules_is_refused(gw, repo, case, name):
    """CVE-2018-11235's shape: a .gitmodules (under any name Windows or macOS reads as one)
    whose url is an option, whose name climbs out of .git/modules, ..."""
    alice, path, clone, first, refused, unchanged = repo
    blob = hash_object(clone, "blob", GITMODULES[case])
    readme = hash_object(clone, "blob", b"hello\n")
    tree = hash_object(
        clone,
        "tree",
        tree_bytes(
            (b"100644", name.encode(), bytes.fromhex(blob)),
            (b"100644", b"README.md", bytes.fromhex(readme)),
        ),
    )
    tip = commit_on(clone, tree, first)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    refused(result, tip, tree, blob, msg_id=case)
    assert f"remote: error: object {blob}: {case}: " in result.stderr


def test_gitmodules_blob_already_in_the_store_is_checked_again(gw, repo):
    """A blob pushed harmlessly as `notes.txt` becomes hostile once a new tree calls it
    .gitmodules: it is read from the store, as C git's fsck_finish does."""
    alice, path, clone, first, refused, unchanged = repo
    commit(clone, "notes.txt", GITMODULES["gitmodulesUrl"].decode())
    gw.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    base = local_git("rev-parse", "HEAD", cwd=clone).strip()
    blob = local_git("rev-parse", "HEAD:notes.txt", cwd=clone).strip()
    tree = hash_object(clone, "tree", tree_bytes((b"100644", b".gitmodules", bytes.fromhex(blob))))
    tip = commit_on(clone, tree, base)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    assert result.returncode != 0
    assert f"remote: error: object {blob}: gitmodulesUrl: " in result.stderr, result.stderr
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == base
    assert not has_object(gw.repo_dir(path), tip)


BAD_COMMITS = {
    "missingAuthor": b"tree {tree}\ncommitter A <a@b> 1700000000 +0000\n\nm\n",
    "badTimezone": b"tree {tree}\nauthor A <a@b> 1700000000 +01000\n"
    b"committer A <a@b> 1700000000 +0000\n\nm\n",
    "badEmail": b"tree {tree}\nauthor A <a<b> 1700000000 +0000\n"
    b"committer A <a@b> 1700000000 +0000\n\nm\n",
    "zeroPaddedDate": b"tree {tree}\nauthor A <a@b> 0170000000 +0000\n"
    b"committer A <a@b> 1700000000 +0000\n\nm\n",
    "badDateOverflow": b"tree {tree}\nauthor A <a@b> 99999999999999999999 +0000\n"
    b"committer A <a@b> 1700000000 +0000\n\nm\n",
    "multipleAuthors": b"tree {tree}\nauthor A <a@b> 1 +0000\nauthor B <b@b> 1 +0000\n"
    b"committer A <a@b> 1 +0000\n\nm\n",
    "missingCommitter": b"tree {tree}\nauthor A <a@b> 1700000000 +0000\n\nm\n",
}


@pytest.mark.parametrize("case", list(BAD_COMMITS))
def test_commit_with_bad_headers_is_refused(gw, repo, case):
    alice, path, clone, first, refused, unchanged = repo
    tree = local_git("rev-parse", "HEAD^{tree}", cwd=clone).strip()
    data = BAD_COMMITS[case].replace(b"{tree}\n", f"{tree}\nparent {first}\n".encode())
    bad = hash_object(clone, "commit", data)
    tip = commit_on(clone, tree, bad, "on top of a bad commit")
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    refused(result, tip, bad, msg_id=case)
    assert f"remote: error: object {bad}: {case}: " in result.stderr


def test_bad_tag_is_refused_and_every_ref_of_the_push_with_it(gw, repo):
    """One bad object refuses the whole push, as in C git: a good branch beside it waits."""
    alice, path, clone, first, refused, unchanged = repo
    good = commit(clone, "ok.txt", "fine\n")
    tag = hash_object(
        clone,
        "tag",
        f"object {good}\ntype commit\ntag v1\ntagger A a@b 1700000000 +0000\n\nm\n".encode(),
    )
    result = gw.git(
        alice,
        "push",
        "origin",
        "HEAD:refs/heads/main",
        f"{tag}:refs/tags/v1",
        cwd=clone,
        check=False,
    )
    assert result.returncode != 0
    assert f"remote: error: object {tag}: missingEmail: " in result.stderr
    assert f"[remote rejected] {tag} -> v1 (unpacker error)" in result.stderr, result.stderr
    assert "[remote rejected] HEAD -> main (unpacker error)" in result.stderr, result.stderr
    unchanged(tag, good)


def test_object_dulwich_cannot_parse_is_refused_too(gw, repo):
    """dulwich's own parse (packin) refuses some objects before fsck sees them, with its
    own words: still one refusal for the whole push, and nothing moves."""
    alice, path, clone, first, refused, unchanged = repo
    tree = local_git("rev-parse", "HEAD^{tree}", cwd=clone).strip()
    bad = hash_object(
        clone,
        "commit",
        f"tree {tree}\nparent {first}\nauthor A <a@b> 1 +00x0\n"
        f"committer A <a@b> 1 +0000\n\nm\n".encode(),
    )
    result = gw.git(alice, "push", "origin", f"{bad}:refs/heads/main", cwd=clone, check=False)
    assert "remote unpack failed: " in result.stderr, result.stderr
    assert re.search(r"\[remote rejected\] \S+ -> main \(unpacker error\)", result.stderr)
    unchanged(bad)


def test_legitimate_history_still_pushes(gw, repo, tmp_path):
    """Submodules with a normal .gitmodules, a merge, annotated and lightweight tags,
    dot files (.github, .gitignore, .gitkeep), files and directories named alike."""
    alice, path, clone, first, refused, unchanged = repo
    sub = tmp_path / "sub"
    local_git("init", "-q", str(sub), cwd=tmp_path)
    commit(sub, "lib.c", "int x;\n")
    local_git(
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        str(sub),
        "vendor/lib",
        cwd=clone,
    )
    local_git("commit", "-qm", "a submodule", cwd=clone)
    for name in [".github/workflows/ci.yml", ".gitignore", "a.b", "a/c", "a-b", ".gitkeep"]:
        commit(clone, name, "x\n")
    local_git("checkout", "-qb", "side", "HEAD~2", cwd=clone)
    commit(clone, "side.txt", "side\n")
    local_git("checkout", "-q", "main", cwd=clone)
    local_git("merge", "-q", "--no-edit", "side", cwd=clone)
    local_git("tag", "-a", "-m", "release", "v1.0", cwd=clone)
    local_git("tag", "light", cwd=clone)
    result = gw.git(alice, "push", "origin", "main", "side", "--tags", cwd=clone)
    assert "remote: error" not in result.stderr and "warning: object" not in result.stderr
    refs = bare_refs(gw.repo_dir(path))
    assert refs["refs/heads/main"] == local_git("rev-parse", "main", cwd=clone).strip()
    assert refs["refs/tags/v1.0"] == local_git("rev-parse", "v1.0", cwd=clone).strip()
    fsck(gw, path)
    again = tmp_path / "again"
    gw.git(alice, "clone", "-q", gw.url(path), str(again))
    assert (again / ".gitmodules").read_text() == (clone / ".gitmodules").read_text()


def test_tag_without_tagger_is_a_warning_only(gw, repo):
    """Early Git wrote tags without a tagger (C git: missingTaggerEntry, info): accepted."""
    alice, path, clone, first, refused, unchanged = repo
    tag = hash_object(clone, "tag", f"object {first}\ntype commit\ntag old\n\nold tag\n".encode())
    result = gw.git(alice, "push", "origin", f"{tag}:refs/tags/old", cwd=clone)
    assert f"remote: warning: object {tag}: missingTaggerEntry: " in result.stderr
    assert bare_refs(gw.repo_dir(path))["refs/tags/old"] == tag


# --- raw packs: what the real git client cannot even send -----------------------------------

RAW_TREES = {
    "emptyName": tree_bytes((b"100644", b"", SHA)),
    "badTree": b"100644 no-nul-and-no-sha",
    "badTree-mode": tree_bytes((b"10_0644", b"a", SHA)),
    "nullSha1": tree_bytes((b"160000", b"sub", b"\0" * 20)),
}


@pytest.mark.parametrize("case", list(RAW_TREES))
def test_raw_pack_with_hostile_tree_is_refused(gw, repo, case):
    alice, path, clone, first, refused, unchanged = repo
    blob = Blob.from_string(b"payload\n")
    data = RAW_TREES[case].replace(SHA, bytes.fromhex(blob.id.decode()))
    tree = RawObject.of(Tree, data)
    tip = make_commit(tree.id, [first.encode()])
    body = commands(
        (first.encode(), tip.id, b"refs/heads/main"), caps=b"report-status side-band-64k"
    ) + pack_of(tip, tree, blob)
    result = subprocess.run(
        [
            *gw.ssh_command(alice.key),
            "-p",
            str(gw.port),
            "git@127.0.0.1",
            f"git-receive-pack '{path}.git'",
        ],
        input=body,
        capture_output=True,
        env=gw.env,
        timeout=60,
    )
    report, text = sideband(result.stdout)
    if case == "badTree-mode" or case == "badTree":
        # dulwich's own parse in packin may refuse it first: refused either way
        assert report.get("unpack") != "ok", report
    else:
        assert report["unpack"] == "fsck error in packed object", report
        assert f"error: object {tree.id.decode()}: {case}: " in text, text
    assert report["refs/heads/main"] == "ng unpacker error", report
    unchanged(tip.id.decode(), tree.id.decode())


def test_fsck_objects_off_accepts_legacy_objects(private, tmp_path):
    """`fsck_objects = false`, for the rare repository with legacy objects (zero-padded
    modes, which C git wrote before 2006): accepted as before."""
    g = private("fsck_objects = false\n")
    alice, path, clone, first = seed(g, tmp_path)
    blob = hash_object(clone, "blob", b"old\n")
    tree = hash_object(clone, "tree", tree_bytes((b"0100644", b"old.txt", bytes.fromhex(blob))))
    tip = commit_on(clone, tree, first)
    g.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone)
    assert bare_refs(g.repo_dir(path))["refs/heads/main"] == tip


def test_a_repository_can_accept_one_class_of_legacy_objects(gw, repo):
    """The operator's per-repository exception, in C git's words: `git config
    receive.fsck.zeroPaddedFilemode warn` in the repository. Other classes stay errors."""
    alice, path, clone, first, refused, unchanged = repo
    local_git("config", "receive.fsck.zeroPaddedFilemode", "warn", cwd=gw.repo_dir(path))
    blob = bytes.fromhex(hash_object(clone, "blob", b"old\n"))
    hostile = hash_object(clone, "tree", tree_bytes((b"0100644", b".git", blob)))
    tip = commit_on(clone, hostile, first)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    refused(result, tip, hostile, msg_id="hasDotgit")
    assert f"remote: warning: object {hostile}: zeroPaddedFilemode: " in result.stderr
    legacy = hash_object(clone, "tree", tree_bytes((b"0100644", b"old.txt", blob)))
    tip = commit_on(clone, legacy, first)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone)
    assert f"remote: warning: object {legacy}: zeroPaddedFilemode: " in result.stderr
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == tip


def test_levels_change_severities():
    data = tree_bytes((b"0100644", b"a", SHA))
    for levels, expected in [
        ({}, [("zeroPaddedFilemode", True)]),
        ({"zeropaddedfilemode": "warn"}, [("zeroPaddedFilemode", False)]),
        ({"zeropaddedfilemode": "ignore"}, []),
    ]:
        c = checker.Checker(levels)
        c.check(b"0" * 40, Tree.type_num, data)
        assert [(p.msg_id, p.is_error) for p in c.problems] == expected, levels
    c = checker.Checker({"missingtaggerentry": "error"})
    c.check(
        b"0" * 40, Tag.type_num, b"object " + SHA.hex().encode() + b"\ntype commit\ntag v\n\nm\n"
    )
    assert [(p.msg_id, p.is_error) for p in c.problems] == [("missingTaggerEntry", True)]


def test_thin_pack_base_already_stored_is_not_checked(private, tmp_path):
    """A legacy tree the repository already has (accepted while fsck_objects was off)
    serves as a delta base of a thin pack: it is old, and the new push is accepted."""
    g = private("fsck_objects = false\n")
    alice, path, clone, first = seed(g, tmp_path)
    entries = [(b"0100644", f"f{i:03}.txt".encode(), None) for i in range(200)]
    blob = bytes.fromhex(hash_object(clone, "blob", b"same\n"))
    legacy = hash_object(clone, "tree", tree_bytes(*[(m, n, blob) for m, n, _ in entries]))
    old_tip = commit_on(clone, legacy, first)
    g.git(alice, "push", "origin", f"{old_tip}:refs/heads/main", cwd=clone)
    g.stop()
    (g.data / "gateway.toml").write_text("fsck_objects = true\n")
    g.start()
    # The same tree with one more entry: git sends it as a delta against the legacy tree.
    extra = tree_bytes(*[(m, n, blob) for m, n, _ in entries], (b"0100644", b"zzz.txt", blob))
    newer = hash_object(clone, "tree", extra)
    refused = g.git(
        alice,
        "push",
        "origin",
        f"{commit_on(clone, newer, old_tip)}:refs/heads/main",
        cwd=clone,
        check=False,
    )
    assert "zeroPaddedFilemode" in refused.stderr  # the new tree is checked ...
    assert f"object {legacy}" not in refused.stderr  # ... its stored base is not
    local_git(
        "fetch",
        "-q",
        "origin",
        cwd=clone,
        env={**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(alice.key))},
    )
    local_git("reset", "-q", "--hard", "origin/main", cwd=clone)
    tip = commit(clone, "new.txt", "new\n")
    g.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    assert bare_refs(g.repo_dir(path))["refs/heads/main"] == tip


# --- the checker alone ------------------------------------------------------------------------


def problems_of(kind: int, data: bytes) -> list[str]:
    c = checker.Checker()
    c.check(b"0" * 40, kind, data)
    return sorted({p.msg_id for p in c.problems})


@pytest.mark.parametrize(
    "name",
    [
        b".git",
        b".Git",
        b".GIT",
        b"git~1",
        b"GIT~1",
        b".git.",
        b".git ",
        b".git . .",
        b".git::$INDEX_ALLOCATION",
        ".g\u200cit".encode(),
        ".\ufeffgit".encode(),
        ".GI\u200dT".encode(),
        b"x\\.git",
        b"x\\git~1\\y",
    ],
)
def test_dotgit_forms(name):
    assert "hasDotgit" in problems_of(Tree.type_num, tree_bytes((b"40000", name, SHA)))


@pytest.mark.parametrize(
    "name",
    [
        b".github",
        b".gitignore",
        b".gitkeep",
        b"git",
        b".gi",
        b"git~2",
        b"a.git",
        b".git-blame-ignore-revs",
        b"xgit~1",
        ".gi\u00e9t".encode(),
    ],
)
def test_names_that_are_not_dotgit(name):
    assert problems_of(Tree.type_num, tree_bytes((b"40000", name, SHA))) == []


@pytest.mark.parametrize(
    "name",
    [
        b".gitmodules",
        b".GitModules",
        b".gitmodules . ",
        b".gitmodules:$DATA",
        b"gitmod~1",
        b"GITMOD~4",
        b"gi7eba~1",
        b"GI7EBA~9",
        ".git\u200cmodules".encode(),
    ],
)
def test_gitmodules_forms_are_found(name):
    c = checker.Checker()
    c.check(b"0" * 40, Tree.type_num, tree_bytes((b"100644", name, SHA)))
    assert c.gitmodules == {SHA.hex().encode()}, name


@pytest.mark.parametrize("name", [b".gitmodulesx", b"gitmod~5", b"gitmodules", b".gitmodule"])
def test_not_gitmodules(name):
    c = checker.Checker()
    c.check(b"0" * 40, Tree.type_num, tree_bytes((b"100644", name, SHA)))
    assert not c.gitmodules


def test_a_tree_dulwich_writes_is_clean():
    tree = Tree()
    for name, mode in [
        (b"a", 0o040000),
        (b"a.c", 0o100644),
        (b"a-b", 0o100755),
        (b"b", 0o120000),
        (b"sub", 0o160000),
        (b"a0", 0o040000),
        (b".gitmodules", 0o100644),
    ]:
        tree.add(name, mode, SHA.hex().encode())
    assert problems_of(Tree.type_num, tree.as_raw_string()) == []


def test_tree_order_rules():
    file_, dir_ = b"100644", b"40000"
    assert problems_of(2, tree_bytes((file_, b"a.c", SHA), (dir_, b"a", SHA))) == []  # a/ > a.c
    assert problems_of(2, tree_bytes((dir_, b"a", SHA), (file_, b"a.c", SHA))) == ["treeNotSorted"]
    assert problems_of(2, tree_bytes((file_, b"a", SHA), (dir_, b"a", SHA))) == ["duplicateEntries"]
    assert problems_of(
        2,
        tree_bytes(
            (file_, b"foo", SHA),
            (file_, b"foo.bar", SHA),
            (file_, b"foo.bar.baz", SHA),
            (dir_, b"foo.bar", SHA),
            (dir_, b"foo", SHA),
        ),
    ) == ["duplicateEntries"]


def test_tree_mode_rules():
    assert problems_of(2, tree_bytes((b"100664", b"a", SHA))) == ["badFilemode"]
    assert problems_of(2, tree_bytes((b"040000", b"a", SHA))) == ["zeroPaddedFilemode"]
    assert problems_of(2, tree_bytes((b"1100644", b"a", SHA))) == ["badFilemode"]  # C git: 16 bits
    assert problems_of(2, tree_bytes((b"+100644", b"a", SHA))) == ["badTree"]
    assert problems_of(2, tree_bytes((b"100644", b"a" * 5000, SHA))) == ["largePathname"]


def _commit(**headers) -> bytes:
    c = Commit()
    c.tree = SHA.hex().encode()
    c.parents = [SHA.hex().encode()]
    c.author = c.committer = b"A U Thor <a@example.com>"
    c.author_time = c.commit_time = int(time.time())
    c.author_timezone = c.commit_timezone = -3600
    c.message = b"message\n"
    return c.as_raw_string()


def test_commit_rules():
    good = _commit()
    assert problems_of(1, good) == []
    assert problems_of(1, good.replace(b"tree ", b"tree x", 1)) == ["badTreeSha1"]
    assert problems_of(1, good.replace(b"parent ", b"parent 12", 1)) == ["badParentSha1"]
    assert problems_of(1, good.replace(b"A U Thor <", b"A U Thor<", 1)) == [
        "missingSpaceBeforeEmail"
    ]
    assert problems_of(1, good.replace(b"author A U Thor ", b"author ", 1)) == [
        "missingNameBeforeEmail"
    ]
    assert problems_of(1, good.replace(b"-0100", b"-01", 1)) == ["badTimezone"]
    assert problems_of(1, good.replace(b"\n\n", b"\0\n\n", 1)) == ["nulInHeader"]
    assert problems_of(1, good.replace(b"message", b"mes\0sage")) == ["nulInCommit"]
    assert problems_of(1, good.split(b"\n\n")[0]) == ["unterminatedHeader"]
    assert problems_of(1, b"parent " + SHA.hex().encode() + b"\n\nx") == ["missingTree"]


def test_tag_rules():
    tag = Tag()
    tag.object = (Commit, SHA.hex().encode())
    tag.name = b"v1"
    tag.tagger = b"A <a@b>"
    tag.tag_time, tag.tag_timezone = 1700000000, 0
    tag.message = b"m\n"
    good = tag.as_raw_string()
    assert problems_of(4, good) == []
    assert problems_of(4, good.replace(b"tag v1", b"tag v..1")) == ["badTagName"]
    assert problems_of(4, good.replace(b"type commit", b"type commits")) == ["badType"]
    assert problems_of(4, good.replace(b"object ", b"object x")) == ["badObjectSha1"]
    assert problems_of(4, good.replace(b"tagger A <a@b>", b"tagger A a@b")) == ["missingEmail"]
    no_tagger = b"".join(line for line in good.splitlines(True) if not line.startswith(b"tagger"))
    c = checker.Checker()
    c.check(b"0" * 40, 4, no_tagger)
    assert [(p.msg_id, p.is_error) for p in c.problems] == [("missingTaggerEntry", False)]


@pytest.mark.parametrize(
    "url",
    [
        b"https://example.com/a/b.git",
        b"../sibling.git",
        b"./sub",
        b"git@example.com:a/b.git",
        b"ssh://git@example.com/a/b",
        b"git://example.com/a",
        b"/srv/git/a.git",
        b"file:///srv/a",
        b"https://user@example.com:8443/a/../b",
        b"../../x/y.git",
    ],
)
def test_submodule_urls_allowed(url):
    assert checker.submodule_url_ok(url)


@pytest.mark.parametrize(
    "url",
    [
        b"--upload-pack=touch /tmp/x",
        b"-u./payload",
        b"../../../:evil",
        b"..//example.com/x",
        b".././:x",
        b"http::https:///example.com",
        b"https://example.com/%0a",
        b"https://a\nb/",
        b"git://host/%0Ax",
        b"./%0a",
        b"https://host:0/",
        b"https://host:99999/",
        b"https://ho st/",
        b"https://host/../x",
        b"https://host/%zz",
    ],
)
def test_submodule_urls_refused(url):
    assert not checker.submodule_url_ok(url)


def test_submodule_names():
    for name in [b"lib", b"vendor/lib", b"a..b", b"..a", b"a/..b"]:
        assert checker.submodule_name_ok(name), name
    for name in [b"", b"..", b"../x", b"a/../../x", b"a\\..\\x", b"x/.."]:
        assert not checker.submodule_name_ok(name), name


def gitmodules_ids(data: bytes) -> list[str]:
    c = checker.Checker()
    c.check_gitmodules(b"0" * 40, data)
    return sorted({p.msg_id for p in c.problems})


def test_gitmodules_parsing_as_git_does():
    assert gitmodules_ids(b'[submodule "lib"]\n\tpath = lib\n\turl = https://x/lib.git\n') == []
    # Quotes, escapes, comments and continuations hide nothing.
    assert gitmodules_ids(b'[submodule "x"]\n url = "-"-upload-pack=x ; c\n') == ["gitmodulesUrl"]
    assert gitmodules_ids(b'[submodule "x"]\n url = \\\n --upload-pack=x\n') == ["gitmodulesUrl"]
    assert gitmodules_ids(b'[SubModule "x"]\n URL = --x\n') == ["gitmodulesUrl"]
    assert gitmodules_ids(b'\xef\xbb\xbf[submodule "x"]\r\n\turl = --x\r\n') == ["gitmodulesUrl"]
    assert gitmodules_ids(b'[submodule "\\.\\./x"]\n path = y\n') == ["gitmodulesName"]
    assert gitmodules_ids(b"[submodule.evil]\n url = --x\n") == ["gitmodulesUrl"]
    assert gitmodules_ids(b'[submodule "x"]\n url = "-x\n') == ["gitmodulesParse"]
    assert gitmodules_ids(b'[submodule "x"]\n path = -x\n url = "unterminated\n') == [
        "gitmodulesParse",
        "gitmodulesPath",
    ]
    assert gitmodules_ids(b'[submodule "x"]\n url = ok\0--x\n') == ["gitmodulesParse"]
    assert gitmodules_ids(b"[core]\n url = --not-a-submodule\n") == []
    assert gitmodules_ids(b"x" * (checker.GITMODULES_MAX + 1)) == ["gitmodulesLarge"]


def test_report_escapes_and_bounds():
    problems = [
        checker.Problem(
            b"1" * 40,
            "gitmodulesUrl",
            "disallowed submodule url: " + checker.shown(b"a\x1b[2Jb\nc"),
        )
    ]
    problems += [
        checker.Problem(b"%040d" % i, "treeNotSorted", "not properly sorted") for i in range(30)
    ]
    text = checker.report(problems).decode()
    assert "\x1b" not in text and "a\\x1b[2Jb\\x0ac" in text
    assert text.count("\n") == checker.MAX_REPORTED + 2  # + "... and N more" + "fatal:"
    assert "and 11 more" in text and text.endswith("fatal: fsck error in packed object\n")
    assert checker.shown(b"-" * 10000) == "-" * 200 + "..."


@pytest.mark.parametrize("parallel", [False, True], ids=["one process", "two processes"])
def test_only_objects_new_to_the_repository_are_checked(tmp_path, monkeypatch, parallel):
    """A pushed object that the store already has (a thin pack's base, or what another
    push brought) is not new: a legacy tree there is not held against the push. The
    objects are seen as the received pack is indexed, as a push sees them."""
    import io

    from dulwich.object_store import DiskObjectStore

    from gateway.git.receive import packreader, quarantine
    from gateway.git.receive.connectivity import Links
    from gateway.git.receive.newobjects import NewObjects

    if parallel:  # each of the two trees is walked by its own process
        monkeypatch.setattr(packreader, "PARALLEL_FROM", 1)
    legacy = RawObject.of(Tree, tree_bytes((b"0100644", b"old.txt", SHA)))
    fresh = RawObject.of(Tree, tree_bytes((b"100644", b".git", SHA)))
    pushed = pack_of(legacy, fresh)

    def problems(store: DiskObjectStore) -> list[tuple[bytes, str]]:
        q = quarantine.create(store.path)
        try:
            seen = NewObjects(store, Links([]), checker.Checker())
            packreader.receive_pack(q, io.BytesIO(pushed).read, None, None, visit=seen)
            return sorted((p.sha, p.msg_id) for p in seen.finish(q))
        finally:
            quarantine.remove(q)

    stores = {}
    for name in ("store", "empty"):
        (tmp_path / name / "pack").mkdir(parents=True)
        (tmp_path / name / "info").mkdir()
        stores[name] = DiskObjectStore(str(tmp_path / name))
    stores["store"].add_objects([(legacy, None)])
    assert problems(stores["store"]) == [(fresh.id, "hasDotgit")]
    assert problems(stores["empty"]) == sorted(
        [(fresh.id, "hasDotgit"), (legacy.id, "zeroPaddedFilemode")]
    )


def test_the_fast_path_for_usual_trees_agrees_with_the_entry_by_entry_rules():
    """Random small trees (names from a hostile alphabet, modes usual and not, any
    order): the regular-expression fast path finds exactly what the full rules find."""
    import random

    rng = random.Random(4)
    alphabet = [
        b"a",
        b"b",
        b".",
        b"g",
        b"G",
        b"i",
        b"t",
        b"/",
        b"\\",
        b"~",
        b"1",
        b" ",
        b"-",
        b"\xe2\x80\x8c",
    ]
    modes = [b"100644", b"100755", b"40000", b"120000", b"160000", b"0100644", b"100664"]
    for _ in range(3000):
        entries = []
        for _ in range(rng.randint(0, 6)):
            name = (
                rng.choice([b"a", b"a.b", b"a-b", b"ab", b"a0", b".gitmodules", b"g"])
                if rng.random() < 0.5
                else b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
            )
            entries.append((rng.choice(modes), name, rng.choice([SHA, b"\0" * 20])))
        if rng.random() < 0.7:
            entries.sort(key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
        data = tree_bytes(*entries)
        fast, slow = checker.Checker(), checker.Checker()
        fast.check_tree(b"0" * 40, data)
        slow._check_tree_entries(b"0" * 40, data)
        assert sorted(fast.problems, key=repr) == sorted(slow.problems, key=repr), entries
        assert fast.gitmodules == slow.gitmodules, entries


def test_sizes_are_read_from_pack_entries_without_inflating(tmp_path):
    """A .gitmodules or .gitattributes above its limit is refused by the size in its pack
    entry (a delta's result size from the delta's header), never read into memory."""
    from dulwich.object_store import DiskObjectStore

    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    base = b"".join(b"line %d of a long file\n" % i for i in range(100000))
    shas = [hash_object(repo, "blob", base + tail) for tail in (b"", b"one more\n", b"x")]
    subprocess.run(
        ["git", "pack-objects", "-q", "objects/pack/pack"],
        cwd=repo,
        check=True,
        input="\n".join(shas).encode(),
        capture_output=True,
    )
    listing = subprocess.run(
        "git verify-pack -v objects/pack/*.idx",
        shell=True,
        cwd=repo,
        capture_output=True,
        text=True,
    ).stdout
    assert any(
        line.split()[0] in shas and len(line.split()) >= 7
        for line in listing.splitlines()
        if line[:1].isalnum()
    ), listing  # at least one of them is a delta
    store = DiskObjectStore(str(repo / "objects"))
    for sha in shas:
        size = int(local_git("cat-file", "-s", sha, cwd=repo))
        assert checker._packed_size(store, sha.encode()) == (Blob.type_num, size)
        assert checker._read(store, store, sha.encode(), 1024) == (Blob.type_num, None)
    assert checker._read(store, store, shas[0].encode(), 10**8)[1] == base


def test_large_gitmodules_is_refused(gw, repo):
    alice, path, clone, first, refused, unchanged = repo
    big = b"".join(b"# padding line %d\n" % i for i in range(80000))  # 1.5 MB
    blob = hash_object(clone, "blob", b'[submodule "x"]\n\tpath = x\n' + big)
    tree = hash_object(clone, "tree", tree_bytes((b"100644", b".gitmodules", bytes.fromhex(blob))))
    tip = commit_on(clone, tree, first)
    result = gw.git(alice, "push", "origin", f"{tip}:refs/heads/main", cwd=clone, check=False)
    refused(result, tip, tree, blob, msg_id="gitmodulesLarge")


def test_agrees_with_c_git_fsck(tmp_path):
    """Differential: random trees (hostile names and modes, with and without order, some
    naming hostile .gitmodules) and randomly damaged commits and tags are written as
    loose objects and judged by C git's own `git fsck --strict`: the same message ids for
    every tree and .gitmodules, the same refusals for commits and tags."""
    import collections
    import hashlib
    import random
    import zlib

    repo = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    kinds = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}

    def write(kind: int, data: bytes) -> str:
        raw = kinds[kind] + b" %d\0" % len(data) + data
        sha = hashlib.sha1(raw).hexdigest()
        (repo / "objects" / sha[:2]).mkdir(exist_ok=True)
        (repo / "objects" / sha[:2] / sha[2:]).write_bytes(zlib.compress(raw))
        return sha

    rng = random.Random(2018)
    blob = bytes.fromhex(write(3, b"x\n"))
    texts = [
        *GITMODULES.values(),
        b'[submodule "x"]\n url = ../../:x\n',
        b'[submodule "x"]\n url = https://h/%0a\n',
        b'[submodule "x"]\n url = "-x"\n',
        b'[submodule "x"]\n url = http::https:///x\n',
        b'[submodule "a\\\\..\\\\b"]\n',
        b'[submodule "x"]\n url = ./ok\n path = ok\n',
    ]
    modules = {bytes.fromhex(write(3, text)): text for text in texts}
    names = [
        b"a",
        b"b",
        b"a.b",
        b"a-b",
        b".git",
        b".GIT",
        b"git~1",
        b".git.",
        b".git ",
        b"..",
        b".",
        b"a/b",
        b".gitmodules",
        b"gitmod~1",
        b".GITMODULES",
        ".g\u200cit".encode(),
        b"x\\.git",
        b".gitattributes",
        b".gitignore",
        b".mailmap",
        b"g",
        b"gi7eba~1",
    ]
    modes = [b"100644", b"100755", b"40000", b"120000", b"160000", b"0100644", b"100664", b"100600"]
    mine: dict[str, set[str]] = {}
    for _ in range(1500):
        entries = [
            (rng.choice(modes), rng.choice(names), rng.choice([blob, *modules]))
            for _ in range(rng.randint(1, 4))
        ]
        entries = [(m, n, blob if m == b"40000" else s) for m, n, s in entries]
        if rng.random() < 0.6:
            entries.sort(key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b""))
        data = tree_bytes(*entries)
        c = checker.Checker()
        tree = write(2, data)
        mine.setdefault(tree, set())
        c.check(tree.encode(), 2, data)
        c.finish(lambda sha, limit: (3, modules.get(bytes.fromhex(sha.decode()), b"x\n")))
        for p in c.problems:
            mine.setdefault(p.sha.decode(), set()).add(p.msg_id)
    root = write(
        1,
        f"tree {write(2, b'')}\nauthor A <a@b> 1 +0000\ncommitter A <a@b> 1 +0000\n\nr\n".encode(),
    )
    seeds = {
        1: f"tree {write(2, b'')}\nparent {root}\nauthor A U <a@b.c> 1700000000 +0100\n"
        f"committer A U <a@b.c> 1700000000 -0130\n\nmsg\n".encode(),
        4: f"object {root}\ntype commit\ntag v1\ntagger A <a@b> 1700000000 +0000\n\nm\n".encode(),
    }
    headers: dict[str, bool] = {}  # sha -> refused by us
    for _ in range(1500):
        kind = rng.choice([1, 4])
        data = bytearray(seeds[kind])
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(data) + 1)
            choice = rng.random()
            if choice < 0.4:
                data[min(pos, len(data) - 1)] = rng.choice(b" \n\t\0<>+-0123456789.abc")
            elif choice < 0.7:
                data[pos:pos] = bytes([rng.choice(b" \n\t\0<>+-0123456789.abc")])
            else:
                del data[pos : pos + rng.randint(1, 5)]
        c = checker.Checker()
        c.check(b"0" * 40, kind, bytes(data))
        headers[write(kind, bytes(data))] = any(p.is_error for p in c.problems)
    out = subprocess.run(
        ["git", "fsck", "--strict", "--no-dangling", "--no-reflogs", "--no-progress"],
        cwd=repo,
        capture_output=True,
        text=True,
        errors="replace",
    )
    theirs: dict[str, set[str]] = collections.defaultdict(set)
    refused_by_git = set()
    for line in (out.stdout + out.stderr).splitlines():
        found = re.match(r"(error|warning) in \w+ ([0-9a-f]{40}): (\w+):", line)
        if found:
            theirs[found.group(2)].add(found.group(3))
            if found.group(1) == "error":
                refused_by_git.add(found.group(2))
        found = re.match(r"error: ([0-9a-f]{40}): object could not be parsed", line)
        if found:
            refused_by_git.add(found.group(1))
    # C git reads an empty name as badTree (our emptyName); largePathname is newer than it.
    skip = {"badTree", "emptyName", "largePathname"}
    for sha in (set(mine) | set(theirs)) - set(headers) - {root}:
        assert mine.get(sha, set()) - skip == theirs.get(sha, set()) - skip, sha
    assert sum(bool(v) for v in mine.values()) > 500  # the test says something
    differ = [sha for sha, refused in headers.items() if refused != (sha in refused_by_git)]
    # Older C git (2.39) let strtoumax skip a newline before a date; newer git and we refuse.
    assert len(differ) <= 3, [(sha, theirs.get(sha)) for sha in differ]
    assert sum(headers.values()) > 500
