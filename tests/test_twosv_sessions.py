"""`2sv sessions [revoke]` and what `2sv verify` says, through the real `ssh` and `git`
against `gateway serve`: a session opened with one key is seen (and closed) from another
key of the same account, and a closed session no longer meets a `session` policy."""

from __future__ import annotations

import re

from testkit import Gateway, User, fingerprint, make_key, unique
from testkit.twosv import enable

UNTIL_RE = re.compile(r"until (\d{4}-\d\d-\d\d \d\d:\d\d) UTC")


def test_sessions_listed_with_until_and_revoked_from_another_key(gw: Gateway, tmp_path):
    user = gw.user()
    other = make_key(gw.keys_dir, unique("k2"))
    gw.cli("key", "add", user.name, f"{other}.pub", "--title", "desktop")
    _secret, codes, _ = enable(gw, user)
    workspace = gw.workspace((user, "write"))
    gw.cli("workspace", "require-2sv", workspace, "session", "--window", "120")
    repo = gw.repo(workspace)

    assert gw.ssh(user, "2sv", "sessions").stdout.strip() == "No open two-step sessions."
    refused = gw.git(user, "ls-remote", gw.url(repo), check=False)
    assert refused.returncode != 0 and "requires a verified two-step session" in refused.stderr

    verified = gw.ssh(user, "2sv", "verify", input=codes[0] + "\n")
    assert verified.returncode == 0, verified.stderr
    said = UNTIL_RE.search(verified.stdout)
    assert said and f"({fingerprint(user.key)}) until" in verified.stdout, verified.stdout
    assert gw.git(user, "ls-remote", gw.url(repo)).returncode == 0

    listed = gw.ssh(User(user.name, other), "2sv", "sessions")
    assert listed.returncode == 0, listed.stderr
    (line,) = [ln for ln in listed.stdout.splitlines() if fingerprint(user.key) in ln]
    assert "opened " in line and "with recovery-code" in line
    assert f"until {said.group(1)} UTC" in line  # the workspace's 120 minutes, as verify said
    assert "(this login)" not in line

    revoked = gw.ssh(User(user.name, other), "2sv", "sessions", "revoke")
    assert revoked.returncode == 0 and "Closed 1 two-step session(s)" in revoked.stdout
    assert gw.ssh(user, "2sv", "sessions").stdout.strip() == "No open two-step sessions."
    again = gw.git(user, "ls-remote", gw.url(repo), check=False)
    assert again.returncode != 0 and "requires a verified two-step session" in again.stderr
    audit = gw.cli("audit", "--account", user.name).stdout
    assert "2sv.sessions_revoke" in audit and "closed=1" in audit


def test_sessions_usage(gw: Gateway):
    user = gw.user()
    bad = gw.ssh(user, "2sv", "sessions", "close")
    assert bad.returncode == 1
    assert "Usage: ssh -p" in bad.stderr and "2sv sessions [revoke]" in bad.stderr
    typo = gw.ssh(user, "2sv", "sesions")
    assert "Did you mean '2sv sessions'?" in typo.stderr
