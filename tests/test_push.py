"""The push pipeline with the real `git` client: hooks, quarantine, atomic pushes, push
options, leases, the hooks that ship in hooks/ and the default branch's default rule."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from testkit import Gateway, local_git
from testkit.localgit import commit, fsck, remote_refs
from testkit.pushes import SHIPPED_HOOKS


@pytest.fixture
def pushed(gw: Gateway, work: Path):
    alice = gw.user()
    ws = gw.workspace((alice, "write"))
    path = gw.repo(ws)
    clone = work / "clone"
    gw.git(alice, "clone", gw.url(path), str(clone))
    first = commit(clone, "README.md", "hello\n")
    gw.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    return alice, path, clone, first


def object_in_store(gw: Gateway, path: str, sha: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", sha], cwd=gw.repo_dir(path)).returncode == 0


def test_pre_receive_reads_quarantined_objects_and_can_decline(gw, pushed, hooks):
    alice, path, clone, first = pushed
    hooks(
        "pre-receive",
        """#!/bin/sh
status=0
while read -r old new ref; do
  echo "checking $ref"
  git cat-file -p "$new" | head -n 1
  git log -1 --format=%s "$new"
  case "$(git log -1 --format=%s "$new")" in *forbidden*) echo "no forbidden commits"; status=1;; esac
done
echo "quarantine: ${GIT_QUARANTINE_PATH:+set}"
exit $status
""",  # noqa: E501 (a shell script: its case line stays whole)
    )
    bad = commit(clone, "bad.txt", message="a forbidden change")
    refused = gw.git(alice, "push", "origin", "main", cwd=clone, check=False)
    assert refused.returncode != 0
    assert "remote: checking refs/heads/main" in refused.stderr
    assert "remote: a forbidden change" in refused.stderr  # read from the quarantine
    assert "remote: quarantine: set" in refused.stderr
    assert "remote: no forbidden commits" in refused.stderr
    assert "[remote rejected] main -> main (pre-receive hook declined)" in refused.stderr
    # Nothing of the declined push became visible: no ref moved, no object moved in.
    assert remote_refs(gw, alice, path)["refs/heads/main"] == first
    assert not object_in_store(gw, path, bad)
    assert not list((gw.repo_dir(path) / "objects").glob("incoming-*"))
    fsck(gw, path)
    local_git("commit", "-q", "--amend", "-m", "an allowed change", cwd=clone)
    accepted = gw.git(alice, "push", "origin", "main", cwd=clone)
    assert "remote: an allowed change" in accepted.stderr
    good = local_git("rev-parse", "HEAD", cwd=clone).strip()
    assert remote_refs(gw, alice, path)["refs/heads/main"] == good
    assert object_in_store(gw, path, good)
    fsck(gw, path)


def test_hook_environment_arguments_and_stdin(gw, pushed, hooks, work):
    alice, path, clone, first = pushed
    record = work / "record"
    hooks(
        "pre-receive",
        f"""#!/bin/sh
{{
  echo "account=$GATEWAY_ACCOUNT workspace=$GATEWAY_WORKSPACE repository=$GATEWAY_REPOSITORY"
  echo "key=$GATEWAY_KEY_FINGERPRINT remote=$GATEWAY_REMOTE_ADDR gitdir=$GIT_DIR"
  echo "options=$GIT_PUSH_OPTION_COUNT [$GIT_PUSH_OPTION_0] [$GIT_PUSH_OPTION_1]"
  lines=0
  while read -r old new ref; do lines=$((lines + 1)); echo "line $ref"; done
  echo "lines=$lines"
}} >> {record}
""",
    )
    hooks(
        "update",
        f"""#!/bin/sh
echo "update $1 $2 $3" >> {record}
""",
    )
    hooks(
        "post-receive.d/20-record",
        f"""#!/bin/sh
while read -r old new ref; do echo "post $ref" >> {record}; done
""",
    )
    hooks(
        "post-update",
        f"""#!/bin/sh
echo "post-update $*" >> {record}
""",
    )
    local_git("checkout", "-q", "-b", "topic", cwd=clone)
    topic = commit(clone, "topic.txt")
    gw.git(
        alice, "push", "-o", "ci.skip", "-o", "reviewer=bob", "origin", "main", "topic", cwd=clone
    )
    text = record.read_text()
    ws, name = path.split("/")
    assert f"account={alice.name} workspace={ws} repository={path}" in text
    assert "key=SHA256:" in text and "remote=127.0.0.1:" in text
    assert f"gitdir={gw.repo_dir(path).resolve()}" in text
    assert "options=2 [ci.skip] [reviewer=bob]" in text
    # Newline-terminated stdin lines: a `while read` loop sees the last ref too.
    assert "lines=1" in text and "line refs/heads/topic" in text
    assert f"update refs/heads/topic {'0' * 40} {topic}" in text
    assert "post refs/heads/topic" in text
    assert "post-update refs/heads/topic" in text


def test_update_hook_declines_one_ref_and_atomic_declines_all(gw, pushed, hooks):
    alice, path, clone, first = pushed
    hooks(
        "update",
        """#!/bin/sh
case "$1" in refs/heads/frozen*) echo "$1 is frozen"; exit 1;; esac
""",
    )
    local_git("branch", "frozen", cwd=clone)
    local_git("branch", "open", cwd=clone)
    result = gw.git(alice, "push", "origin", "frozen", "open", cwd=clone, check=False)
    assert result.returncode != 0
    assert "[remote rejected] frozen -> frozen (hook declined)" in result.stderr
    assert "remote: refs/heads/frozen is frozen" in result.stderr
    refs = remote_refs(gw, alice, path)
    assert "refs/heads/open" in refs and "refs/heads/frozen" not in refs
    local_git("branch", "also-open", cwd=clone)
    atomic = gw.git(
        alice, "push", "--atomic", "origin", "frozen", "also-open", cwd=clone, check=False
    )
    assert atomic.returncode != 0
    assert "(hook declined)" in atomic.stderr and "(atomic push failed)" in atomic.stderr
    refs = remote_refs(gw, alice, path)
    assert "refs/heads/also-open" not in refs and "refs/heads/frozen" not in refs
    fsck(gw, path)


def test_force_with_lease_with_a_stale_lease_is_refused(gw, pushed, work):
    alice, path, clone, first = pushed
    other = work / "other"
    gw.git(alice, "clone", gw.url(path), str(other))
    theirs = commit(other, "theirs.txt")
    gw.git(alice, "push", "origin", "main", cwd=other)
    local_git("reset", "-q", "--hard", first, cwd=clone)
    commit(clone, "mine.txt")
    stale = gw.git(
        alice, "push", f"--force-with-lease=main:{first}", "origin", "main", cwd=clone, check=False
    )
    assert stale.returncode != 0 and "stale info" in stale.stderr
    assert remote_refs(gw, alice, path)["refs/heads/main"] == theirs


def test_default_branch_is_protected_by_a_default_rule(gw, pushed):
    """What the shipped hook did is a branch rule every repository starts with; turning
    it off is a rule change, not a git config edit."""
    alice, path, clone, first = pushed
    listed = json.loads(gw.cli("branch-rule", "list", path, "--json").stdout)
    assert [(r["pattern"], r["no_force"], r["no_delete"]) for r in listed] == [
        ("refs/heads/main", True, True)
    ]
    second = commit(clone, "two.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)  # fast-forward: fine
    local_git("reset", "-q", "--hard", first, cwd=clone)
    rewritten = commit(clone, "rewrite.txt")
    forced = gw.git(alice, "push", "--force", "origin", "main", cwd=clone, check=False)
    assert forced.returncode != 0
    assert (
        "[remote rejected] main -> main "
        "(rule refs/heads/main: force-push not allowed (not a fast-forward))"
    ) in forced.stderr, forced.stderr
    deleted = gw.git(alice, "push", "origin", "--delete", "main", cwd=clone, check=False)
    assert deleted.returncode != 0
    assert "[remote rejected] main (rule refs/heads/main: deletion not allowed)" in deleted.stderr
    assert remote_refs(gw, alice, path)["refs/heads/main"] == second
    # Other branches can be force-pushed and deleted.
    gw.git(alice, "push", "origin", "HEAD:refs/heads/scratch", cwd=clone)
    gw.git(alice, "push", "--force", "origin", f"{first}:refs/heads/scratch", cwd=clone)
    gw.git(alice, "push", "origin", "--delete", "scratch", cwd=clone)
    # Turned off for this one repository: the rule is removed.
    gw.cli("branch-rule", "remove", path, "main")
    gw.git(alice, "push", "--force", "origin", "main", cwd=clone)
    assert remote_refs(gw, alice, path)["refs/heads/main"] == rewritten
    fsck(gw, path)


def test_no_default_branch_hook_ships():
    assert not (SHIPPED_HOOKS / "pre-receive.d" / "10-protect-default-branch").exists()


def test_shipped_post_receive_example_logs_pushes(gw, pushed, hooks, work):
    alice, path, clone, first = pushed
    bin_dir = work / "bin"
    bin_dir.mkdir()
    logged = work / "logged"
    (bin_dir / "logger").write_text(f'#!/bin/sh\necho "$@" >> {logged}\n')
    (bin_dir / "logger").chmod(0o755)
    shipped = (SHIPPED_HOOKS / "post-receive.d" / "50-log-pushes").read_text()
    # The hook finds `logger` on PATH; point it at the stand-in for this test.
    hooks(
        "post-receive.d/50-log-pushes",
        shipped.replace("#!/bin/sh\n", f"#!/bin/sh\nPATH={bin_dir}:$PATH\n", 1),
    )
    tip = commit(clone, "logged.txt")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    line = logged.read_text()
    assert (
        f"account={alice.name} repository={path} ref=refs/heads/main old={first} new={tip}" in line
    )


def test_hook_is_never_given_to_a_shell(gw, pushed, hooks, work):
    """Ref names reach hooks as arguments, never through a shell."""
    alice, path, clone, first = pushed
    record = work / "args"
    hooks(
        "update",
        f"""#!/bin/sh
printf '%s\\n' "$1" >> {record}
""",
    )
    name = "refs/heads/x$(touch${IFS}pwned)"
    local_git("branch", "-f", "tmp", cwd=clone)
    result = gw.git(alice, "push", "origin", f"tmp:{name}", cwd=clone, check=False)
    if result.returncode == 0:
        assert record.read_text().strip() == name
    assert not (gw.repo_dir(path) / "pwned").exists() and not (gw.root / "pwned").exists()
