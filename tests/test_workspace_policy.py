"""Workspace 2SV policy and access keys, end to end with the real `git` and `ssh`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit import Gateway, User, fingerprint, make_key, unique
from testkit.localgit import commit, fsck
from testkit.twosv import enable, fresh_code


def ssh_base(gw: Gateway) -> str:
    return f"ssh -p {gw.port} git@127.0.0.1"


def seeded_repo(gw: Gateway, owner: User, ws: str, work: Path, public: bool = False) -> str:
    path = gw.repo(ws, public=public)
    tree = work / unique("seed")
    gw.git(owner, "clone", gw.url(path), str(tree))
    commit(tree, "README.md", "hello\n")
    gw.git(owner, "push", "origin", "HEAD:main", cwd=tree)
    return path


def audit(gw: Gateway, account: str) -> list[dict]:
    return json.loads(gw.cli("audit", "--account", account, "--json", "--limit", "500").stdout)


@pytest.fixture
def team(gw, work):
    """An admin with 2SV, a member without, a workspace with a private and a public repo."""
    admin, member = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (member, "write"))
    private = seeded_repo(gw, admin, ws, work)
    public = seeded_repo(gw, admin, ws, work, public=True)
    secret, codes, _ = enable(gw, admin)
    return admin, member, ws, private, public, secret


def test_policy_on_refuses_member_without_2sv_until_they_enrol(gw, team, work):
    admin, member, ws, private, public, _ = team
    admin_secret = team[5]
    on = gw.ssh(admin, "workspace", "require-2sv", ws, "on", input=fresh_code(admin_secret) + "\n")
    assert on.returncode == 0, on.stderr
    assert member.name in on.stdout  # told who loses access
    expected = (
        f'ERROR: Workspace "{ws}" requires two-step verification.\n'
        f"Turn it on with: {ssh_base(gw)} 2sv enable"
    )
    clone = gw.git(member, "clone", gw.url(private), str(work / "c1"), check=False)
    assert clone.returncode != 0 and expected in clone.stderr
    archive = gw.ssh(member, f"git-upload-archive '{private}.git'")
    assert archive.returncode != 0 and expected in archive.stderr
    # Public reads stay open; pushes to the public repository do not.
    gw.git(member, "clone", gw.url(public), str(work / "pub"))
    commit(work / "pub", "x.txt")
    push = gw.git(member, "push", "origin", "HEAD:main", cwd=work / "pub", check=False)
    assert push.returncode != 0 and expected in push.stderr
    # A non-member reads the public repository too.
    outsider = gw.user()
    gw.git(outsider, "ls-remote", gw.url(public))
    # The greeting says what is missing.
    assert f'Workspace "{ws}" requires two-step verification' in gw.ssh(member).stdout
    # After enrolling, the same member gets through with no operator action.
    enable(gw, member)
    assert f'Workspace "{ws}"' not in gw.ssh(member).stdout
    gw.git(member, "clone", gw.url(private), str(work / "c2"))
    gw.git(member, "push", "origin", "HEAD:main", cwd=work / "pub")
    fsck(gw, public)
    refusals = [e for e in audit(gw, member.name) if e["outcome"] == "denied"]
    assert {e["target"] for e in refusals} >= {private, public}
    assert all("requires 2SV" in e["detail"] for e in refusals)
    changes = [e for e in audit(gw, admin.name) if e["action"] == "workspace.require_2sv"]
    assert changes and changes[-1]["target"] == ws and "off -> on" in changes[-1]["detail"]


def _backdate_session(gw: Gateway, fingerprint: str, minutes: int) -> None:
    gw.sql(
        "UPDATE twosv_sessions SET verified_at = verified_at - ? WHERE key_fingerprint = ?",
        minutes * 60,
        fingerprint,
    )


def test_policy_session_needs_a_verified_session_per_key(gw, team, work):
    admin, member, ws, private, public, admin_secret = team
    assert (
        gw.ssh(
            admin,
            "workspace",
            "require-2sv",
            ws,
            "session",
            "--window",
            "5",
            input=fresh_code(admin_secret) + "\n",
        ).returncode
        == 0
    )
    secret, codes, _ = enable(gw, member)
    expected = (
        f'ERROR: Workspace "{ws}" requires a verified two-step session.\n'
        f"Open one with: {ssh_base(gw)} 2sv verify"
    )
    refused = gw.git(member, "ls-remote", gw.url(private), check=False)
    assert refused.returncode != 0 and expected in refused.stderr
    assert "requires a verified two-step session" in gw.ssh(member).stdout
    assert gw.ssh(member, "2sv", "verify", input=fresh_code(secret) + "\n").returncode == 0
    gw.git(member, "ls-remote", gw.url(private))
    # A session opened with one key does not open another key of the same account.
    second = make_key(gw.keys_dir, unique("second"))
    gw.cli("key", "add", member.name, f"{second}.pub", "--title", "second")
    other = User(member.name, second)
    refused = gw.git(other, "ls-remote", gw.url(private), check=False)
    assert expected in refused.stderr
    # After the window (5 minutes), the first key is refused again.
    _backdate_session(gw, fingerprint(member.key), 6)
    refused = gw.git(member, "ls-remote", gw.url(private), check=False)
    assert refused.returncode != 0 and expected in refused.stderr


def test_only_admins_with_2sv_set_the_policy(gw, work):
    admin, member = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (member, "write"))
    no_2sv = gw.ssh(admin, "workspace", "require-2sv", ws, "on")
    assert no_2sv.returncode != 0
    assert no_2sv.stderr.startswith(
        f"ERROR: Enable two-step verification on your own account first: {ssh_base(gw)} 2sv enable"
    )
    enable(gw, member)
    not_admin = gw.ssh(member, "workspace", "require-2sv", ws, "on")
    assert not_admin.returncode != 0 and "Only admins" in not_admin.stderr
    outsider = gw.user()
    hidden = gw.ssh(outsider, "workspace", "show", ws)
    assert hidden.returncode != 0 and f"Workspace not found: {ws}" in hidden.stderr
    admin_secret, _, _ = enable(gw, admin)
    # One code opens a two-step session; the policy changes below ride on it.
    assert gw.ssh(admin, "2sv", "verify", input=fresh_code(admin_secret) + "\n").returncode == 0
    for bad in (
        ("maybe",),
        ("session", "--window", "0"),
        ("session", "--window", "10081"),
        ("on", "--window"),
        ("on", "extra"),
    ):
        result = gw.ssh(admin, "workspace", "require-2sv", ws, *bad)
        assert result.returncode != 0 and result.stderr.startswith("ERROR: "), bad
    assert "require-2sv:  off" in gw.ssh(admin, "workspace", "show", ws).stdout
    assert gw.ssh(admin, "workspace", "require-2sv", ws, "on").returncode == 0
    shown = gw.ssh(admin, "workspace", "show", ws).stdout
    assert "require-2sv:  on" in shown
    assert f"{admin.name}\tadmin  2SV on" in shown
    assert f"{member.name}\twrite  2SV on" in shown
    member_view = gw.ssh(member, "workspace", "show", ws).stdout
    assert "2SV" not in member_view  # compliance is shown to admins only
    assert gw.ssh(admin, "workspace", "require-2sv", ws, "off").returncode == 0


def test_operator_require_2sv_lists_who_would_lose_access(gw, work):
    admin, member = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (member, "read"))
    enable(gw, admin)
    dry = gw.cli("workspace", "require-2sv", ws, "on", "--dry-run")
    assert (
        member.name in dry.stdout and admin.name not in dry.stdout.split(":", 1)[1].split("\n")[0]
    )
    assert json.loads(gw.cli("workspace", "show", ws, "--json").stdout)["require_2sv"] == "off"
    gw.cli("workspace", "require-2sv", ws, "session", "--window", "30")
    shown = json.loads(gw.cli("workspace", "show", ws, "--json").stdout)
    assert shown["require_2sv"] == "session" and shown["session_window"] == 30
    bad = gw.cli("workspace", "require-2sv", ws, "sometimes", check=False)
    assert bad.returncode == 2
    window = gw.cli("workspace", "require-2sv", ws, "session", "--window", "99999", check=False)
    assert window.returncode == 1 and "Invalid window" in window.stderr
    created = unique("ws")
    gw.cli("workspace", "add", created, "--require-2sv")
    assert json.loads(gw.cli("workspace", "show", created, "--json").stdout)["require_2sv"] == "on"


def test_access_keys_are_read_only_bound_and_outside_the_policy(gw, team, work):
    admin, member, ws, private, public, admin_secret = team
    assert (
        gw.ssh(
            admin, "workspace", "require-2sv", ws, "on", input=fresh_code(admin_secret) + "\n"
        ).returncode
        == 0
    )
    deploy_key = make_key(gw.keys_dir, unique("deploy"))
    gw.cli("access-key", "add", private, f"{deploy_key}.pub", "--title", "ci")
    deploy = User("deploy", deploy_key)
    clone = work / "deploy"
    gw.git(deploy, "clone", gw.url(private), str(clone))
    assert (clone / "README.md").exists()
    commit(clone, "from-ci.txt")
    push = gw.git(deploy, "push", "origin", "HEAD:main", cwd=clone, check=False)
    assert push.returncode != 0
    assert f'ERROR: Permission to {private} denied to access key "ci" (read-only).' in push.stderr
    elsewhere = gw.git(deploy, "ls-remote", gw.url(public), check=False)
    assert elsewhere.returncode != 0 and f"Repository not found: {public}" in elsewhere.stderr
    for command in (("2sv", "status"), ("recovery-codes",), ("workspace", "show", ws), ("whoami",)):
        refused = gw.ssh(deploy, *command)
        assert refused.returncode != 0 and "access key" in refused.stderr, command
    assert "access key" in gw.ssh(deploy).stdout
    # A write key pushes; a key cannot be both an account key and an access key.
    writer_key = make_key(gw.keys_dir, unique("writer"))
    gw.cli("access-key", "add", private, f"{writer_key}.pub", "--write")
    gw.git(User("writer", writer_key), "push", "origin", "HEAD:main", cwd=clone)
    fsck(gw, private)
    both = gw.cli("key", "add", member.name, f"{writer_key}.pub", check=False)
    assert both.returncode == 1 and "already in use" in both.stderr
    reverse = gw.cli("access-key", "add", private, f"{member.key}.pub", check=False)
    assert reverse.returncode == 1 and "already in use" in reverse.stderr
    listed = json.loads(gw.cli("access-key", "list", "--json").stdout)
    assert {k["title"] for k in listed if k["repository"] == private} >= {"ci"}


def test_admin_setting_session_keeps_their_key_and_says_which_key_needs_one(gw, work):
    """The code typed for the change opens the admin's session too, so they are not locked
    out; a refusal names the key that needs `2sv verify`, for when plain ssh offers another."""
    admin = gw.user()
    ws = gw.workspace((admin, "admin"))
    private = seeded_repo(gw, admin, ws, work)
    admin_secret, recovery_codes, _ = enable(gw, admin)
    changed = gw.ssh(
        admin, "workspace", "require-2sv", ws, "session", input=fresh_code(admin_secret) + "\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert (
        f'Workspace "{ws}" now requires: session (a verified two-step session, 15 min window).'
    ) in changed.stdout
    assert 'Your two-step session for this key, "' in changed.stdout
    assert f"({fingerprint(admin.key)}), lasts 15 more min" in changed.stdout
    gw.git(admin, "ls-remote", gw.url(private))  # not locked out
    # Another key of the admin's: refused, and told which key needs the session.
    second = make_key(gw.keys_dir, unique("second"))
    gw.cli("key", "add", admin.name, f"{second}.pub", "--title", "desk")
    other = User(admin.name, second)
    refused = gw.git(other, "ls-remote", gw.url(private), check=False)
    assert refused.returncode != 0
    assert (
        f'ERROR: Workspace "{ws}" requires a verified two-step session.\n'
        f"Open one with: {ssh_base(gw)} 2sv verify\n"
        f'It must be opened with the key used here: "desk" ({fingerprint(second)}); '
        "if ssh offers another key first, add -i with this key's file."
    ) in refused.stderr
    assert fingerprint(admin.key) not in refused.stderr  # the key with a session is not it
    verify = gw.ssh(other, "2sv", "verify", input=recovery_codes[0] + "\n")  # the code is used
    assert verify.returncode == 0, verify.stderr
    gw.git(other, "ls-remote", gw.url(private))


def test_cli_and_ssh_word_the_policy_and_show_the_same(gw, team):
    admin, member, ws, private, public, admin_secret = team
    over_ssh = gw.ssh(
        admin, "workspace", "require-2sv", ws, "on", input=fresh_code(admin_secret) + "\n"
    ).stdout
    by_cli = gw.cli("workspace", "require-2sv", ws, "on").stdout
    line = f'Workspace "{ws}" now requires: on.'
    assert line in over_ssh.splitlines() and line in by_cli.splitlines()
    lacking = [text for text in over_ssh.splitlines() if text.startswith("Members without")]
    assert lacking and member.name in lacking[0]
    shown_ssh = gw.ssh(admin, "workspace", "show", ws).stdout.splitlines()
    shown_cli = gw.cli("workspace", "show", ws).stdout.splitlines()
    assert shown_cli[: len(shown_ssh)] == shown_ssh  # the CLI adds the repositories after
    assert f"  {member.name}\twrite  2SV off (does not meet the policy)" in shown_ssh
    assert shown_cli[len(shown_ssh)].startswith("repositories:")
