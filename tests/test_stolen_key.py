"""What the holder of a stolen SSH key can and cannot do (issue: hardening, findings 1, 2,
8, 9), end to end with the real `ssh`, answers on stdin, codes from pyotp; security-key
logins with the software authenticator of test_security_keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncssh
import pytest

from testkit import Gateway, User, fingerprint, make_key, unique
from testkit.security_key import SoftwareSecurityKey, run_with
from testkit.twosv import CODE_RE, Session, audit_actions, enable, error_lines, fresh_code

NOT_ENOUGH = "A recovery code is not enough here"


def shown_codes(output: str) -> list[str]:
    return [m.group(1) for m in CODE_RE.finditer(output)]


def session_workspace(gw: Gateway, *members: tuple[User, str]) -> str:
    ws = gw.workspace(*members)
    gw.cli("workspace", "require-2sv", ws, "session")
    return ws


def policy_of(gw: Gateway, ws: str) -> str:
    return json.loads(gw.cli("workspace", "show", ws, "--json").stdout)["require_2sv"]


@pytest.fixture
def hook_events(gw):
    """Events handed to HOOKS_DIR/2sv-event.d, read back as a list of dicts."""
    events_file = gw.root / f"{unique('events')}.jsonl"
    hook_dir = gw.root / "hooks" / "2sv-event.d"
    hook_dir.mkdir(parents=True, exist_ok=True)
    hook = hook_dir / f"60-{events_file.stem}"
    hook.write_text(f"#!/bin/sh\ncat >> {events_file}\n")
    hook.chmod(0o755)

    def read() -> list[dict]:
        if not events_file.exists():
            return []
        return [json.loads(line) for line in events_file.read_text().splitlines()]

    yield read
    hook.unlink()


# --- finding 1: recovery codes and security keys under the session policy ---------------


def test_under_the_session_policy_the_key_alone_reads_no_codes_and_plants_no_key(gw):
    alice = gw.user()
    secret, codes, _ = enable(gw, alice)
    session_workspace(gw, (alice, "write"))
    # The key alone: no code shown, however asked.
    for answer in ("", codes[0] + "\n", "junk\n"):
        result = gw.ssh(alice, "recovery-codes", input=answer)
        assert result.returncode != 0 and not shown_codes(result.stdout), answer
        assert len(error_lines(result.stderr)) == 1, result.stderr
    assert NOT_ENOUGH in gw.ssh(alice, "recovery-codes", input=codes[1] + "\n").stderr
    # Planting a security key of the thief's with a recovery code: refused, none added.
    planted = SoftwareSecurityKey()
    refused = gw.ssh(alice, "security-key", "add", "mine", input=f"{planted.line}\n{codes[2]}\n")
    assert refused.returncode != 0 and NOT_ENOUGH in refused.stderr
    assert "No security keys registered." in gw.ssh(alice, "security-key", "list").stdout
    # Regenerating with a recovery code: refused, the old set still works.
    again = gw.ssh(alice, "recovery-codes", "regenerate", input=f"yes\n{codes[3]}\n")
    assert again.returncode != 0 and NOT_ENOUGH in again.stderr and not shown_codes(again.stdout)
    # The owner, with the app's code, sees them (codes 0-3 were only refused, not used).
    owner = gw.ssh(alice, "recovery-codes", input=fresh_code(secret) + "\n")
    assert owner.returncode == 0, owner.stderr
    assert shown_codes(owner.stdout) == codes and "(used)" not in owner.stdout


def test_a_registered_security_key_login_counts_under_the_session_policy(gw):
    alice = gw.user()
    sk = SoftwareSecurityKey()
    added = gw.ssh(alice, "security-key", "add", "yubikey", input=sk.line + "\n")
    codes = shown_codes(added.stdout)
    session_workspace(gw, (alice, "write"))
    assert gw.ssh(alice, "recovery-codes").returncode != 0
    # No app enrolled: the refusal says what would do.
    refused = gw.ssh(alice, "recovery-codes", input=codes[0] + "\n")
    assert "authenticator app or a login with one of your security keys" in refused.stderr
    with_touch = run_with(gw, sk, "recovery-codes")
    assert with_touch.exit_status == 0 and shown_codes(with_touch.stdout) == codes


@pytest.mark.database
def test_the_setting_guards_codes_for_every_account(tmp_path):
    g = Gateway(tmp_path / "guarded")
    g.cli("init")
    (g.data / "gateway.toml").write_text("recovery_codes_need_second_factor = true\n")
    g.start()
    try:
        alice = g.user()  # in no workspace at all
        secret, codes, _ = enable(g, alice)
        refused = g.ssh(alice, "recovery-codes", input=codes[0] + "\n")
        assert refused.returncode != 0 and not shown_codes(refused.stdout)
        assert NOT_ENOUGH in refused.stderr
        shown = g.ssh(alice, "recovery-codes", input=fresh_code(secret) + "\n")
        assert shown.returncode == 0 and shown_codes(shown.stdout) == codes
    finally:
        g.stop()


def test_without_the_policy_or_setting_codes_stay_the_lost_phone_path(gw):
    """SPEC §5's default (Bitbucket's model): the key's holder reads the codes."""
    alice = gw.user()
    _, codes, _ = enable(gw, alice)
    shown = gw.ssh(alice, "recovery-codes")
    assert shown.returncode == 0 and shown_codes(shown.stdout) == codes


def test_replace_asks_for_the_old_factor_even_after_a_security_key_login(gw):
    alice = gw.user()
    secret, codes, _ = enable(gw, alice)
    sk = SoftwareSecurityKey()
    added = gw.ssh(alice, "security-key", "add", "yk", input=f"{sk.line}\n{fresh_code(secret)}\n")
    assert added.returncode == 0, added.stderr
    replaced = run_with(gw, sk, "2sv replace", input="\n")
    assert replaced.exit_status != 0
    assert "Code from your old device, or a recovery code" in replaced.stderr
    assert "ERROR: A verification code is six digits" in replaced.stderr
    assert "Scan this QR code" not in replaced.stdout


def test_adding_any_login_key_reaches_the_hooks(gw, hook_events, tmp_path):
    alice = gw.user()
    extra = make_key(gw.keys_dir, unique("extra"))
    gw.cli("key", "add", alice.name, f"{extra}.pub", "--title", "extra")
    sk = SoftwareSecurityKey()
    assert gw.ssh(alice, "security-key", "add", "yk", input=sk.line + "\n").returncode == 0
    (tmp_path / "keydir" / alice.name).mkdir(parents=True)
    dropped = make_key(tmp_path, "dropped")
    (tmp_path / "keydir" / alice.name / "dropped.pub").write_text(
        Path(f"{dropped}.pub").read_text()
    )
    gw.cli("keys", "sync", "--keydir", str(tmp_path / "keydir"))
    mine = [(e["event"], e["detail"]) for e in hook_events() if e["account"] == alice.name]
    assert ("key.add", fingerprint(extra)) in mine
    assert ("key.add", fingerprint(dropped)) in mine
    assert ("2sv.security_key_added", sk.get_fingerprint("sha256")) in mine


# --- finding 1: users see and remove their own login keys, operators see them all -------


def test_users_list_and_remove_their_own_login_keys(gw, hook_events):
    alice = gw.user()
    stolen_path = make_key(gw.keys_dir, unique("stolen"))
    gw.cli("key", "add", alice.name, f"{stolen_path}.pub", "--title", "old laptop")
    stolen = User(alice.name, stolen_path)
    listed = gw.ssh(alice, "keys")
    assert listed.returncode == 0, listed.stderr
    own_line = next(line for line in listed.stdout.splitlines() if fingerprint(alice.key) in line)
    assert "(this login)" in own_line
    assert "old laptop" in listed.stdout and fingerprint(stolen_path) in listed.stdout
    # 2SV off: a confirmation, then the key no longer logs in.
    assert gw.ssh(alice, "keys", "remove", fingerprint(stolen_path), input="no\n").returncode != 0
    removed = gw.ssh(alice, "keys", "remove", fingerprint(stolen_path), input="yes\n")
    assert removed.returncode == 0, removed.stderr
    assert gw.ssh(stolen, "whoami").returncode != 0
    assert ("key.remove", fingerprint(stolen_path)) in [
        (e["event"], e["detail"]) for e in hook_events() if e["account"] == alice.name
    ]
    assert "key.remove" in [e["action"] for e in audit_actions(gw, alice)]


def test_removing_a_login_key_needs_a_second_factor_when_2sv_is_on(gw):
    alice = gw.user()
    secret, codes, _ = enable(gw, alice)
    other = make_key(gw.keys_dir, unique("other"))
    gw.cli("key", "add", alice.name, f"{other}.pub")
    refused = gw.ssh(alice, "keys", "remove", fingerprint(other), input="yes\n")
    assert refused.returncode != 0
    assert gw.ssh(User(alice.name, other), "whoami").returncode == 0
    done = gw.ssh(alice, "keys", "remove", fingerprint(other), input=fresh_code(secret) + "\n")
    assert done.returncode == 0, done.stderr
    assert gw.ssh(User(alice.name, other), "whoami").returncode != 0
    # Security keys and unknown fingerprints are pointed elsewhere, one line each.
    sk = SoftwareSecurityKey()
    gw.ssh(alice, "security-key", "add", "yk", input=f"{sk.line}\n{codes[0]}\n")
    pointed = gw.ssh(alice, "keys", "remove", sk.get_fingerprint("sha256"), input=codes[1] + "\n")
    assert pointed.returncode != 0 and "security-key remove" in pointed.stderr
    unknown = gw.ssh(alice, "keys", "remove", "SHA256:nope\x1b[31m")
    assert error_lines(unknown.stderr) and "\x1b" not in unknown.stderr


def test_the_operator_sees_every_key_that_logs_in_after_removing_a_stolen_one(gw):
    """The thief's flow without the session policy (codes readable with the key alone):
    read a code, plant a security key with it. The operator who removes the stolen key
    is shown the planted one, and `account disable` stops every login."""
    alice = gw.user()
    _, codes, _ = enable(gw, alice)
    stolen_path = make_key(gw.keys_dir, unique("stolen"))
    gw.cli("key", "add", alice.name, f"{stolen_path}.pub", "--title", "laptop")
    stolen = User(alice.name, stolen_path)
    code = shown_codes(gw.ssh(stolen, "recovery-codes").stdout)[0]
    planted = SoftwareSecurityKey()
    assert (
        gw.ssh(stolen, "security-key", "add", "mine", input=f"{planted.line}\n{code}\n").returncode
        == 0
    )
    shown = gw.cli("account", "show", alice.name).stdout
    assert planted.get_fingerprint("sha256") in shown and "security key" in shown
    removed = gw.cli("key", "remove", fingerprint(stolen_path)).stdout
    assert "still has 2 key(s) that log in" in removed
    assert planted.get_fingerprint("sha256") in removed and "security key" in removed
    assert f"gateway account disable {alice.name}" in removed
    assert run_with(gw, planted, "whoami").stdout.strip() == alice.name
    gw.cli("account", "disable", alice.name)
    with pytest.raises(asyncssh.PermissionDenied):
        run_with(gw, planted, "whoami")
    gw.cli("account", "enable", alice.name)


# --- finding 2: a policy change needs a fresh second factor -----------------------------


def test_a_stolen_admin_key_cannot_switch_the_policy_off(gw, work):
    admin, member = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (member, "write"))
    secret, codes, _ = enable(gw, admin)
    gw.cli("workspace", "require-2sv", ws, "on")
    for answer in ("", "000000\n"):
        refused = gw.ssh(admin, "workspace", "require-2sv", ws, "off", input=answer)
        assert refused.returncode != 0 and len(error_lines(refused.stderr)) == 1, refused.stderr
    widened = gw.ssh(admin, "workspace", "require-2sv", ws, "session", "--window", "10080")
    assert widened.returncode != 0
    # Codes are readable with the key alone here, so a recovery code does not count,
    # typed or behind a two-step session opened with one.
    assert (
        NOT_ENOUGH
        in gw.ssh(admin, "workspace", "require-2sv", ws, "off", input=codes[0] + "\n").stderr
    )
    assert gw.ssh(admin, "2sv", "verify", input=codes[1] + "\n").returncode == 0
    assert gw.ssh(admin, "workspace", "require-2sv", ws, "off").returncode != 0
    assert policy_of(gw, ws) == "on"
    # The owner's app code does it, and is audited.
    done = gw.ssh(admin, "workspace", "require-2sv", ws, "off", input=fresh_code(secret) + "\n")
    assert done.returncode == 0, done.stderr
    assert policy_of(gw, ws) == "off"
    changes = [e for e in audit_actions(gw, admin) if e["action"] == "workspace.require_2sv"]
    assert changes and "on -> off" in changes[-1]["detail"]


def test_a_fresh_session_or_a_security_key_login_allows_a_policy_change(gw):
    admin = gw.user()
    ws = gw.workspace((admin, "admin"))
    secret, _, _ = enable(gw, admin)
    assert gw.ssh(admin, "2sv", "verify", input=fresh_code(secret) + "\n").returncode == 0
    assert gw.ssh(admin, "workspace", "require-2sv", ws, "on").returncode == 0
    # After 15 minutes the session is no longer fresh enough.
    gw.sql(
        "UPDATE twosv_sessions SET verified_at = verified_at - 16 * 60 WHERE key_fingerprint = ?",
        fingerprint(admin.key),
    )
    assert gw.ssh(admin, "workspace", "require-2sv", ws, "off").returncode != 0
    sk = SoftwareSecurityKey()
    gw.cli("key", "add", admin.name, "-", input=sk.line + "\n")  # a plain key first ...
    # ... promoted the way `security-key add` promotes an existing key
    gw.sql(
        "UPDATE ssh_keys SET kind = 'security-key' WHERE fingerprint = ?",
        sk.get_fingerprint("sha256"),
    )
    switched = run_with(gw, sk, f"workspace require-2sv {ws} off")
    assert switched.exit_status == 0, switched.stderr
    assert policy_of(gw, ws) == "off"


# --- finding 8: state is checked again after a prompt -----------------------------------


def test_a_prompt_answered_after_the_key_was_removed_changes_nothing(gw):
    alice = gw.user()
    secret, _, _ = enable(gw, alice)
    laptop_path = make_key(gw.keys_dir, unique("laptop"))
    gw.cli("key", "add", alice.name, f"{laptop_path}.pub")
    laptop = User(alice.name, laptop_path)
    waiting = Session(gw, laptop, "2sv", "verify")
    waiting.proc.stderr.read1(4096)  # the prompt is on stderr
    gw.cli("key", "remove", fingerprint(laptop_path))
    waiting.answer(fresh_code(secret))
    result = waiting.finish()
    assert result.returncode != 0 and "This key is no longer accepted" in result.stderr
    ((rows,),) = gw.sql(
        "SELECT count(*) FROM twosv_sessions WHERE key_fingerprint = ?", fingerprint(laptop_path)
    )
    assert rows == 0


def test_an_admin_removed_during_the_code_prompt_does_not_change_the_policy(gw):
    admin, other = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (other, "admin"))
    secret, _, _ = enable(gw, admin)
    waiting = Session(gw, admin, "workspace", "require-2sv", ws, "on")
    waiting.proc.stderr.read1(4096)
    gw.cli("member", "remove", ws, admin.name)
    waiting.answer(fresh_code(secret))
    result = waiting.finish()
    assert result.returncode != 0 and "Only admins" in result.stderr
    assert policy_of(gw, ws) == "off"


# --- finding 9: titles and emails are one printable line, and escaped when shown --------

ESCAPES = ["evil\x1b[2J", "two\nlines", "c1\x9bcontrol", "bidi\u202eoverride", "x" * 101]


def test_titles_and_emails_with_escapes_are_refused_when_stored(gw, work):
    alice = gw.user()
    key = make_key(gw.keys_dir, unique("k"))
    for bad in ESCAPES:
        result = gw.cli("key", "add", alice.name, f"{key}.pub", "--title", bad, check=False)
        assert result.returncode == 1 and result.stderr.startswith("ERROR: Invalid title"), bad
        assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
        if len(bad) < 100:  # a long title is a fine email address
            email = gw.cli(
                "account", "add", unique("m"), "--email", f"a{bad}@example.com", check=False
            )
            assert email.returncode == 1 and "Invalid email" in email.stderr, bad
    repo = gw.repo(gw.workspace((alice, "admin")))
    access = gw.cli(
        "access-key", "add", repo, f"{key}.pub", "--title", "ci\x1b]0;x\x07", check=False
    )
    assert access.returncode == 1 and "Invalid access key title" in access.stderr
    refused = gw.ssh(alice, "security-key", "add", "yk\x1b[31m", input="")
    assert refused.returncode != 0 and "\x1b" not in refused.stderr
    assert not json.loads(gw.cli("key", "list", alice.name, "--json").stdout)[1:]


def test_a_keydir_file_name_with_an_escape_is_reported_escaped(gw, tmp_path):
    keydir = tmp_path / "keydir"
    name = unique("kd")
    (keydir / name).mkdir(parents=True)
    key = make_key(tmp_path, "k")
    (keydir / name / "lap\x1btop.pub").write_text(Path(f"{key}.pub").read_text())
    result = gw.cli("keys", "sync", "--keydir", str(keydir), check=False)
    assert result.returncode == 1 and "Invalid title" in result.stderr
    assert "\x1b" not in result.stderr + result.stdout


def test_stored_escapes_are_shown_escaped_everywhere(gw):
    """Rows written before titles were checked (or by hand) still reach no terminal raw."""
    alice = gw.user()
    gw.sql(
        "UPDATE ssh_keys SET title = ? WHERE fingerprint = ?",
        "t\x1b[2J\u202e",
        fingerprint(alice.key),
    )
    gw.sql("UPDATE accounts SET email = ? WHERE name = ?", "a\x1b]0;x\x07@b", alice.name)
    gw.sql(
        "INSERT INTO audit (at, actor, action, target, outcome, detail) "
        "VALUES (0, ?, 'forged', 'x', 'ok', ?)",
        alice.name,
        "line\n2026-01-01T00:00:00Z operator fake x ok",
    )
    outputs = [
        gw.ssh(alice).stdout,
        gw.ssh(alice, "keys").stdout,
        gw.cli("key", "list", alice.name).stdout,
        gw.cli("account", "list").stdout,
        gw.cli("account", "show", alice.name).stdout,
    ]
    for text in outputs:
        assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
    assert "t?[2J?" in outputs[0]
    audit_text = gw.cli("audit", "--account", alice.name).stdout
    assert not re.search(r"^2026-01-01T00:00:00Z operator fake", audit_text, re.M)


def test_a_pending_enrolment_key_is_shown_again_only_to_the_same_ssh_key(gw):
    """A failed `2sv enable` keeps its key for a rerun; another key of the account (the
    stolen old laptop's) must not be shown it, or its holder could read every code."""
    from testkit.twosv import URI_RE

    alice = gw.user()
    old_path = make_key(gw.keys_dir, unique("old"))
    gw.cli("key", "add", alice.name, f"{old_path}.pub")

    def shown_secret(user: User) -> str:
        result = gw.ssh(user, "2sv", "enable", input="")
        assert result.returncode != 0 and "No code given" in result.stderr
        return URI_RE.search(result.stdout).group(1)

    first = shown_secret(alice)
    assert shown_secret(alice) == first
    assert shown_secret(User(alice.name, old_path)) != first
