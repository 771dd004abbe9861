"""SSH commands run in this process (testkit/inprocess.py): a Context on a temporary
SQLite database and in-memory streams, no server and no ssh client. The texts asserted
are those the end-to-end tests assert through the real `ssh` (test_ssh, test_first_hour,
test_twosv, test_stolen_key, test_workspace_policy), so a change of wording fails here
first, in milliseconds.
"""

from __future__ import annotations

import pyotp
import pytest

from gateway.store import workspaces
from testkit import fingerprint
from testkit.inprocess import Answering, InProcessGateway
from testkit.twosv import CODE_RE, URI_RE

PORT = 2222


@pytest.fixture
async def inproc(tmp_path):
    g = await InProcessGateway.open(tmp_path, listen=f"127.0.0.1:{PORT}")
    yield g
    await g.close()


async def test_greeting(inproc):
    user, alice = await inproc.user("alice")
    result = await inproc.run(alice, "")
    assert result.returncode == 0 and result.stderr == ""
    greeting = (
        f'Hi alice! You\'ve authenticated with key "alice@test" '
        f"({fingerprint(user.pub)}). Shell access is disabled; use git to clone and push."
    )
    assert greeting in result.stdout.splitlines()
    assert "Two-step verification is disabled." in result.stdout


async def test_whoami_and_help(inproc):
    _, rita = await inproc.user("rita")
    result = await inproc.run(rita, "whoami")
    assert (result.returncode, result.stdout, result.stderr) == (0, "rita\n", "")
    result = await inproc.run(rita, "help")
    assert result.returncode == 0 and result.stderr == ""
    assert f"ssh://git@127.0.0.1:{PORT}/WORKSPACE/NAME.git" in result.stdout
    for command in ("help", "whoami"):
        assert f"ssh -p {PORT} git@127.0.0.1 {command}" in result.stdout, result.stdout


async def test_whoami_with_arguments_is_refused(inproc):
    _, rita = await inproc.user("rita")
    result = await inproc.run(rita, "whoami extra")
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("ERROR: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "typed,first_line",
    [
        ("recovery-code", "Unknown command: recovery-code. Did you mean 'recovery-codes'?"),
        ("whoiam", "Unknown command: whoiam. Did you mean 'whoami'?"),
        ("2sv enabel", "Unknown command: 2sv enabel. Did you mean '2sv enable'? Usage: "),
        ("workspace shwo acme", "Unknown command: workspace shwo. Did you mean 'workspace show'?"),
        ("keys remvoe SHA256:x", "Unknown command: keys remvoe. Did you mean 'keys remove'?"),
    ],
)
async def test_typos_get_a_suggestion(inproc, typed, first_line):
    _, user = await inproc.user("typist")
    result = await inproc.run(user, typed)
    assert result.returncode not in (0, 255) and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"ERROR: {first_line}"), lines
    assert "Traceback" not in result.stderr


async def test_nonsense_gets_no_suggestion(inproc):
    _, user = await inproc.user("typist")
    result = await inproc.run(user, "frobnicate")
    assert result.stderr.splitlines()[0] == "ERROR: Unknown command: frobnicate"
    usage = await inproc.run(user, "2sv status extra")  # a real subcommand: just usage
    assert usage.stderr.splitlines()[0].startswith("ERROR: Usage: ssh ")


async def test_2sv_status_then_enable_with_a_code_for_the_secret_shown(inproc):
    _, alice = await inproc.user("alice")
    status = await inproc.run(alice, "2sv status")
    assert "Two-step verification is disabled." in status.stdout

    def answer(shown: str) -> str | None:
        match = URI_RE.search(shown)
        return pyotp.TOTP(pyotp.parse_uri(match.group(1)).secret).now() if match else None

    result = await inproc.run(alice, "2sv enable", input=Answering(answer))
    assert result.returncode == 0, result.stderr
    assert "Two-step verification is now on." in result.stdout
    codes = [m.group(1) for m in CODE_RE.finditer(result.stdout)]
    assert len(codes) == 6 and len(set(codes)) == 6
    assert "Store them somewhere safe" in result.stdout
    status = await inproc.run(alice, "2sv status")
    assert "Two-step verification is enabled (totp); 6 of 6 recovery codes left." in status.stdout
    greeting = await inproc.run(alice, "")
    assert "Two-step verification is enabled (totp)" in greeting.stdout


async def test_keys_lists_every_login_key_and_marks_this_one(inproc):
    user, alice = await inproc.user("alice")
    stolen, _ = await inproc.key("alice", alice.account_id, "old laptop")
    _, bob = await inproc.user("bob")
    listed = await inproc.run(alice, "keys")
    assert listed.returncode == 0, listed.stderr
    assert "Keys that log in to alice:" in listed.stdout
    own_line = next(line for line in listed.stdout.splitlines() if fingerprint(user.pub) in line)
    assert "(this login)" in own_line
    assert "old laptop" in listed.stdout and fingerprint(stolen.pub) in listed.stdout
    assert f"ssh -p {PORT} git@127.0.0.1 keys remove FINGERPRINT" in listed.stdout
    assert "old laptop" not in (await inproc.run(bob, "keys")).stdout  # another account's


async def test_keys_remove_without_2sv_asks_for_yes(inproc):
    user, alice = await inproc.user("alice")
    other, _ = await inproc.user("other")
    refused = await inproc.run(alice, f"keys remove {fingerprint(other.pub)}", input="yes\n")
    assert refused.returncode != 0
    assert f"ERROR: No key {fingerprint(other.pub)} on your account" in refused.stderr
    spare, _ = await inproc.key("alice", alice.account_id, "spare")
    kept = await inproc.run(alice, f"keys remove {fingerprint(spare.pub)}", input="no\n")
    assert kept.returncode != 0
    removed = await inproc.run(alice, f"keys remove {fingerprint(spare.pub)}", input="yes\n")
    assert removed.returncode == 0, removed.stderr
    assert fingerprint(spare.pub) not in (await inproc.run(alice, "keys")).stdout


async def test_workspace_show_to_an_admin_a_member_and_an_outsider(inproc):
    _, admin = await inproc.user("admin")
    _, member = await inproc.user("member")
    _, outsider = await inproc.user("outsider")
    ws = await workspaces.add(inproc.db, "acme")
    await workspaces.set_member(inproc.db, ws.id, admin.account_id, "admin")
    await workspaces.set_member(inproc.db, ws.id, member.account_id, "write")
    await inproc.db.commit()
    shown = (await inproc.run(admin, "workspace show acme")).stdout
    assert "require-2sv:  off" in shown
    assert "admin\tadmin  2SV off" in shown and "member\twrite  2SV off" in shown
    member_view = await inproc.run(member, "workspace show acme")
    assert member_view.returncode == 0 and "2SV" not in member_view.stdout
    hidden = await inproc.run(outsider, "workspace show acme")
    assert hidden.returncode != 0 and "Workspace not found: acme" in hidden.stderr
    no_2sv = await inproc.run(admin, "workspace require-2sv acme on")
    assert no_2sv.returncode != 0
    assert no_2sv.stderr.startswith(
        "ERROR: Enable two-step verification on your own account "
        f"first: ssh -p {PORT} git@127.0.0.1 2sv enable"
    )
    not_admin = await inproc.run(member, "workspace require-2sv acme on")
    assert not_admin.returncode != 0 and "Only admins" in not_admin.stderr
