"""Branch rules end to end: each rule kind allowed and refused with the real `git push`,
mixed and `--atomic` pushes, the audit rows, management over SSH (admins, with their own
second factor) and by the operator's CLI, `--dry-run`, and bad input."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testkit import Gateway, User, fingerprint, local_git, make_key, unique
from testkit.localgit import commit, fsck
from testkit.pushes import bare_refs
from testkit.twosv import enable, fresh_code


def rule(gw: Gateway, target: str, pattern: str, *options: str) -> None:
    gw.cli("branch-rule", "add", target, pattern, *options)


def denied_rows(gw: Gateway, account: str) -> list[str]:
    entries = json.loads(gw.cli("audit", "--account", account, "--json", "--limit", "500").stdout)
    return [
        e["detail"] for e in entries if e["action"] == "repo.write" and e["outcome"] == "denied"
    ]


@pytest.fixture
def team(gw: Gateway, work: Path):
    """A writer and an admin in one workspace, a repository with main pushed, and a
    clone of it for each."""
    writer, admin = gw.user(), gw.user()
    ws = gw.workspace((writer, "write"), (admin, "admin"))
    path = gw.repo(ws)
    tree = work / "writer"
    gw.git(writer, "clone", gw.url(path), str(tree))
    first = commit(tree, "README.md", "hello\n")
    gw.git(writer, "push", "origin", "HEAD:main", cwd=tree)
    other = work / "admin"
    gw.git(admin, "clone", gw.url(path), str(other))
    return writer, admin, ws, path, tree, other, first


def refused(result, ref: str, reason: str) -> bool:
    return result.returncode != 0 and f"{ref} ({reason})" in result.stderr


def test_push_list_lets_only_the_named_update(gw, team, work):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, path, "release/*", "--push", "admin")
    result = gw.git(writer, "push", "origin", "HEAD:release/1.0", cwd=tree, check=False)
    assert refused(result, "release/1.0", "rule refs/heads/release/*: only admin may push")
    assert "refs/heads/release/1.0" not in bare_refs(gw.repo_dir(path))
    gw.git(admin, "push", "origin", "HEAD:release/1.0", cwd=other)
    # An account by name; refs the rule does not match stay open to every writer.
    rule(gw, path, "release/*", "--push", writer.name)
    gw.git(writer, "push", "origin", "HEAD:release/2.0", cwd=tree)
    gw.git(admin, "push", "origin", "HEAD:topic", cwd=other)
    assert "refs/heads/release/1.0: rule refs/heads/release/*: only admin may push" in (
        denied_rows(gw, writer.name)
    )
    fsck(gw, path)


def test_access_keys_hold_the_write_role_or_are_named_by_key(gw, team, work):
    writer, admin, ws, path, tree, other, first = team
    key = make_key(gw.keys_dir, unique("deploy"))
    gw.cli("access-key", "add", path, str(key) + ".pub", "--write")
    deploy = User("deploy", key)
    rule(gw, path, "deploy/*", "--push", "admin")
    result = gw.git(deploy, "push", "origin", "HEAD:deploy/a", cwd=tree, check=False)
    assert refused(result, "deploy/a", "rule refs/heads/deploy/*: only admin may push")
    rule(gw, path, "deploy/*", "--push", "write")
    gw.git(deploy, "push", "origin", "HEAD:deploy/a", cwd=tree)
    rule(gw, path, "deploy/*", "--push", "admin", "--push", f"key:{fingerprint(key)}")
    gw.git(deploy, "push", "origin", "HEAD:deploy/b", cwd=tree)
    # A rule asking for a two-step session cannot be met by an access key.
    rule(gw, path, "deploy/*", "--require-2sv-session")
    result = gw.git(deploy, "push", "origin", "HEAD:deploy/c", cwd=tree, check=False)
    assert refused(
        result,
        "deploy/c",
        "rule refs/heads/deploy/*: needs a two-step session, which an access key cannot open",
    )


def test_no_create_and_no_delete_on_tags(gw, team):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, path, "refs/tags/v*", "--no-create")
    local_git("tag", "v1", cwd=tree)
    local_git("tag", "build-1", cwd=tree)
    result = gw.git(writer, "push", "origin", "v1", "build-1", cwd=tree, check=False)
    assert refused(result, "v1", "rule refs/tags/v*: creation not allowed")
    refs = bare_refs(gw.repo_dir(path))
    assert "refs/tags/build-1" in refs and "refs/tags/v1" not in refs  # the other went on
    gw.cli("branch-rule", "remove", path, "refs/tags/v*")
    gw.git(writer, "push", "origin", "v1", cwd=tree)
    rule(gw, path, "refs/tags/v*", "--no-delete")
    result = gw.git(writer, "push", "origin", "--delete", "v1", cwd=tree, check=False)
    assert refused(result, "v1", "rule refs/tags/v*: deletion not allowed")
    gw.git(writer, "push", "origin", "--delete", "build-1", cwd=tree)
    assert "refs/tags/v1" in bare_refs(gw.repo_dir(path))


def test_no_force_allows_fast_forwards_only(gw, team):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, path, "topic/**", "--no-force")
    gw.git(writer, "push", "origin", "HEAD:topic/a/b", cwd=tree)
    second = commit(tree, "two.txt")
    gw.git(writer, "push", "origin", "HEAD:topic/a/b", cwd=tree)  # fast-forward
    local_git("reset", "-q", "--hard", first, cwd=tree)
    commit(tree, "rewrite.txt")
    result = gw.git(writer, "push", "--force", "origin", "HEAD:topic/a/b", cwd=tree, check=False)
    assert refused(
        result, "topic/a/b", "rule refs/heads/topic/**: force-push not allowed (not a fast-forward)"
    )
    # A rewind is not a fast-forward either.
    result = gw.git(
        writer, "push", "--force", "origin", f"{first}:topic/a/b", cwd=tree, check=False
    )
    assert refused(
        result, "topic/a/b", "rule refs/heads/topic/**: force-push not allowed (not a fast-forward)"
    )
    assert bare_refs(gw.repo_dir(path))["refs/heads/topic/a/b"] == second


def test_step_up_two_step_session(gw, team, work):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, path, "main", "--require-2sv-session")
    commit(tree, "two.txt")
    result = gw.git(writer, "push", "origin", "HEAD:main", cwd=tree, check=False)
    assert refused(result, "main", "rule refs/heads/main: needs a two-step session")
    assert (
        f"remote: refs/heads/main needs an open two-step session for the key in use. "
        f"Open one with: ssh -p {gw.port} git@127.0.0.1 2sv verify"
    ) in result.stderr, result.stderr
    # Other refs need none, whatever the workspace's policy (off here).
    gw.git(writer, "push", "origin", "HEAD:side", cwd=tree)
    secret, _codes, _ = enable(gw, writer)
    verified = gw.ssh(writer, "2sv", "verify", input=fresh_code(secret) + "\n")
    assert verified.returncode == 0, verified.stderr
    gw.git(writer, "push", "origin", "HEAD:main", cwd=tree)
    fsck(gw, path)


def signed_commit(tree: Path, key: Path, name: str) -> str:
    """A commit signed the way a user sets git up to sign (gpg.format=ssh)."""
    (tree / name).write_text(f"{name}\n")
    local_git("add", name, cwd=tree)
    local_git(
        "-c", "gpg.format=ssh", "-c", f"user.signingKey={key}",
        "commit", "-q", "-S", "-m", f"add {name}", cwd=tree,
    )  # fmt: skip
    return local_git("rev-parse", "HEAD", cwd=tree).strip()


def forged(tree: Path, sha: str) -> str:
    """`sha`'s commit with its message changed after signing, signature kept."""
    raw = subprocess.run(
        ["git", "cat-file", "commit", sha], cwd=tree, capture_output=True, check=True
    ).stdout
    changed = raw.replace(b"add ", b"add (changed) ", 1)
    return subprocess.run(
        ["git", "hash-object", "-t", "commit", "-w", "--stdin"],
        cwd=tree, input=changed, capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip


def test_require_signed_verifies_what_the_push_brings(gw, team):
    writer, admin, ws, path, tree, other, first = team
    mine = make_key(gw.keys_dir, unique("sign"))
    theirs = make_key(gw.keys_dir, unique("sign"))
    gw.cli("signing-key", "add", writer.name, str(mine) + ".pub")
    gw.cli("signing-key", "add", admin.name, str(theirs) + ".pub")
    rule(gw, path, "main", "--require-signed", "--own-keys")
    reason = "rule refs/heads/main: {}: {}"
    # Unsigned: refused, naming the commit.
    unsigned = commit(tree, "unsigned.txt")
    result = gw.git(writer, "push", "origin", "HEAD:main", cwd=tree, check=False)
    assert refused(result, "main", reason.format(unsigned, "unsigned")), result.stderr
    # Signed with the pusher's registered key: accepted.
    local_git("reset", "-q", "--hard", first, cwd=tree)
    good = signed_commit(tree, mine, "signed.txt")
    gw.git(writer, "push", "origin", "HEAD:main", cwd=tree)
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == good
    # Content changed after signing: refused.
    fake = forged(tree, signed_commit(tree, mine, "forged.txt"))
    result = gw.git(writer, "push", "origin", f"{fake}:main", cwd=tree, check=False)
    assert refused(
        result, "main", reason.format(fake, "bad signature: it does not match the signed content")
    ), result.stderr
    # Another account's key, with --own-keys: refused.
    local_git("reset", "-q", "--hard", good, cwd=tree)
    by_admin = signed_commit(tree, theirs, "theirs.txt")
    result = gw.git(writer, "push", "origin", "HEAD:main", cwd=tree, check=False)
    assert refused(
        result,
        "main",
        reason.format(
            by_admin,
            f"signed by {fingerprint(theirs)}, which is not one of the pusher's signing keys",
        ),
    ), result.stderr
    # Signed, then the key removed: refused.
    local_git("reset", "-q", "--hard", good, cwd=tree)
    late = signed_commit(tree, mine, "late.txt")
    gw.cli("signing-key", "remove", writer.name, fingerprint(mine))
    result = gw.git(writer, "push", "origin", "HEAD:main", cwd=tree, check=False)
    assert refused(
        result,
        "main",
        reason.format(
            late, f"signed by {fingerprint(mine)}, which is not a registered signing key"
        ),
    ), result.stderr
    assert bare_refs(gw.repo_dir(path))["refs/heads/main"] == good
    assert any("signature" in row or late in row for row in denied_rows(gw, writer.name))
    fsck(gw, path)


def test_require_signed_tags(gw, team):
    """A rule on tags checks the tag's own signature and every commit it brings under
    the rule: with no other tag there yet, the whole history it names."""
    writer, admin, ws, path, tree, other, first = team
    key = make_key(gw.keys_dir, unique("sign"))
    gw.cli("signing-key", "add", writer.name, str(key) + ".pub")
    rule(gw, path, "refs/tags/v*", "--require-signed")
    signing = ("-c", "gpg.format=ssh", "-c", f"user.signingKey={key}")
    local_git("tag", "-a", "-m", "plain", "v1", cwd=tree)
    plain = local_git("rev-parse", "v1", cwd=tree).strip()
    local_git(*signing, "tag", "-s", "-m", "signed", "v2", cwd=tree)
    result = gw.git(writer, "push", "origin", "v1", "v2", cwd=tree, check=False)
    assert refused(result, "v1", f"rule refs/tags/v*: {plain}: unsigned"), result.stderr
    # v2 is signed, but the commit it names (main's first) is not.
    assert refused(result, "v2", f"rule refs/tags/v*: {first}: unsigned"), result.stderr
    # A history signed from its root, and a signed tag on it: accepted.
    local_git("checkout", "-q", "--orphan", "signed-root", cwd=tree)
    local_git("rm", "-q", "-rf", ".", cwd=tree)
    signed_commit(tree, key, "root.txt")
    local_git(*signing, "tag", "-s", "-m", "signed", "v3", cwd=tree)
    gw.git(writer, "push", "origin", "v3", cwd=tree)
    assert "refs/tags/v3" in bare_refs(gw.repo_dir(path))
    fsck(gw, path)


def test_mixed_push_and_atomic(gw, team):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, path, "frozen", "--no-create")
    result = gw.git(writer, "push", "origin", "HEAD:frozen", "HEAD:open", cwd=tree, check=False)
    assert refused(result, "frozen", "rule refs/heads/frozen: creation not allowed")
    refs = bare_refs(gw.repo_dir(path))
    assert "refs/heads/open" in refs and "refs/heads/frozen" not in refs
    atomic = gw.git(
        writer, "push", "--atomic", "origin", "HEAD:frozen", "HEAD:also-open", cwd=tree, check=False
    )
    assert refused(atomic, "frozen", "rule refs/heads/frozen: creation not allowed")
    assert "(atomic push failed)" in atomic.stderr
    refs = bare_refs(gw.repo_dir(path))
    assert "refs/heads/also-open" not in refs and "refs/heads/frozen" not in refs


def test_workspace_defaults_are_inherited_and_combine(gw, team, work):
    writer, admin, ws, path, tree, other, first = team
    rule(gw, ws, "release/*", "--no-delete")
    rule(gw, path, "release/**", "--push", "admin")
    listed = json.loads(gw.cli("branch-rule", "list", path, "--json").stdout)
    assert [(r["pattern"], r["inherited"]) for r in listed] == [
        ("refs/heads/release/*", True),
        ("refs/heads/main", False),
        ("refs/heads/release/**", False),
    ]
    text = gw.cli("branch-rule", "list", path).stdout
    assert "refs/heads/release/*  --no-delete  (workspace default)" in text
    gw.git(admin, "push", "origin", "HEAD:release/1", cwd=other)
    result = gw.git(admin, "push", "origin", "--delete", "release/1", cwd=other, check=False)
    assert refused(result, "release/1", "rule refs/heads/release/*: deletion not allowed")
    result = gw.git(writer, "push", "origin", "HEAD:release/2", cwd=tree, check=False)
    assert refused(result, "release/2", "rule refs/heads/release/**: only admin may push")
    # A new repository of the workspace inherits the default too.
    assert "refs/heads/release/*" in gw.cli("branch-rule", "list", gw.repo(ws)).stdout


def test_dry_run_lists_recent_pushes_the_rule_would_refuse(gw, team):
    writer, admin, ws, path, tree, other, first = team
    gw.git(writer, "push", "origin", "HEAD:scratch", cwd=tree)
    local_git("commit", "-q", "--amend", "-m", "rewritten", cwd=tree)
    gw.git(writer, "push", "--force", "origin", "HEAD:scratch", cwd=tree)
    before = gw.cli("branch-rule", "list", path, "--json").stdout
    out = gw.cli("branch-rule", "add", path, "scratch", "--no-force", "--dry-run").stdout
    assert f"{writer.name} {path} refs/heads/scratch force: rule refs/heads/scratch: " in out
    assert "1 ref update(s) of recent pushes would have been refused" in out
    assert "Dry run: nothing changed." in out
    assert gw.cli("branch-rule", "list", path, "--json").stdout == before
    out = gw.cli("branch-rule", "add", path, "scratch", "--push", "admin", "--dry-run").stdout
    assert "2 ref update(s)" in out  # the creation and the force-push, both by a writer
    out = gw.cli("branch-rule", "add", ws, "nothing-here", "--no-delete", "--dry-run").stdout
    assert "No recent push would have been refused by this rule." in out


def test_admins_manage_rules_over_ssh_with_their_own_second_factor(gw, team):
    writer, admin, ws, path, tree, other, first = team
    listed = gw.ssh(writer, "branch-rule", "list", path)  # any member may read them
    assert listed.returncode == 0 and "refs/heads/main  --no-force --no-delete" in listed.stdout
    by_writer = gw.ssh(writer, "branch-rule", "add", path, "x", "--no-delete")
    assert (
        f'ERROR: Only admins of workspace "{ws}" can change its branch rules.' in by_writer.stderr
    )
    bad = gw.ssh(admin, "branch-rule", "add", path, "**", "--no-delete", "--dry-run")
    assert bad.returncode != 0 and bad.stderr.startswith("ERROR: Invalid ref pattern '**'")
    assert len(bad.stderr.strip().splitlines()) == 1
    no_2sv = gw.ssh(admin, "branch-rule", "add", path, "x", "--no-delete")
    assert "needs two-step verification on your own account" in no_2sv.stderr
    # --dry-run changes nothing, so it needs no second factor.
    assert (
        gw.ssh(admin, "branch-rule", "add", path, "x", "--no-delete", "--dry-run").returncode == 0
    )
    secret, _codes, _ = enable(gw, admin)
    asked = gw.ssh(admin, "branch-rule", "add", path, "x", "--no-delete")  # no code typed
    assert asked.returncode != 0 and "No code given; nothing changed." in asked.stderr
    assert "refs/heads/x" not in gw.cli("branch-rule", "list", path).stdout
    # A fresh `2sv verify` session for the key in use is the second factor for a while.
    verified = gw.ssh(admin, "2sv", "verify", input=fresh_code(secret) + "\n")
    assert verified.returncode == 0, verified.stderr
    added = gw.ssh(admin, "branch-rule", "add", path, "x", "--no-delete")
    assert added.returncode == 0, added.stderr
    assert f"Added branch rule on {path}: refs/heads/x  --no-delete" in added.stdout
    again = gw.ssh(admin, "branch-rule", "add", path, "x", "--no-delete", "--no-force")
    assert f"Replaced branch rule on {path}: refs/heads/x  --no-force --no-delete" in again.stdout
    removed = gw.ssh(admin, "branch-rule", "remove", path, "refs/heads/x")
    assert removed.returncode == 0, removed.stderr
    assert "Removed branch rule" in removed.stdout
    stranger = gw.user()
    hidden = gw.ssh(stranger, "branch-rule", "list", path)
    assert hidden.returncode != 0 and f"ERROR: Workspace not found: {ws}" in hidden.stderr


BAD_INPUT = [
    (("PATH", ""), "Invalid ref pattern '': it is empty"),
    (("PATH", "**"), "`**` alone is every branch"),
    (("PATH", "release/"), "it ends with '/'"),
    (("PATH", "a\x01b"), "control character"),
    (("PATH", "a..b"), "it contains '..'"),
    (("PATH", "rel**"), "** must be a whole component"),
    (("PATH", "refs/*/x"), "the namespace after refs/ must be written out"),
    (("PATH", "main"), "A rule must restrict something"),
    (("PATH", "main", "--own-keys"), "--own-keys goes with --require-signed"),
    (("PATH", "main", "--push", "read"), "read role cannot push"),
    (("PATH", "main", "--push", "nosuchaccount"), "No such account in --push: nosuchaccount"),
    (("PATH", "main", "--push", "key:abc"), "Invalid key in --push"),
    (("WS/nosuchrepo", "main", "--no-force"), "No such repository: WS/nosuchrepo"),
    (("nosuchws", "main", "--no-force"), "nosuchws"),
]


def test_bad_input_is_one_line_and_changes_nothing(gw, team):
    writer, admin, ws, path, tree, other, first = team
    before = gw.cli("branch-rule", "list", path, "--json").stdout
    for args, message in BAD_INPUT:
        args = tuple(a.replace("PATH", path).replace("WS", ws) for a in args)
        result = gw.cli("branch-rule", "add", *args, check=False)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), lines
        assert message.replace("WS", ws) in lines[0], lines
    assert gw.cli("branch-rule", "list", path, "--json").stdout == before
    missing = gw.cli("branch-rule", "remove", path, "nothing", check=False)
    assert missing.returncode == 1 and "No rule for refs/heads/nothing" in missing.stderr
