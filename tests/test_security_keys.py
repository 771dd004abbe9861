"""Security keys (FIDO `sk-*` SSH keys) as a 2SV method.

The real `ssh` client needs hardware to sign with an sk key, so logins with one use an
asyncssh client with a software authenticator (testkit/security_key.py, test code only:
it signs the way a FIDO token does, with or without the user-presence flag).
Registration goes through the real `ssh` client.
"""

from __future__ import annotations

import asyncssh
import pytest

from testkit.security_key import SoftwareSecurityKey, run_with
from testkit.twosv import CODE_RE, audit_actions, enable, error_lines, fresh_code


@pytest.fixture
def alice(gw):
    return gw.user()


def test_first_security_key_turns_2sv_on(gw, alice):
    sk = SoftwareSecurityKey()
    added = gw.ssh(alice, "security-key", "add", "yubikey", input=sk.line + "\n")
    assert added.returncode == 0, added.stderr
    assert 'Security key "yubikey"' in added.stdout
    assert "Two-step verification is now on." in added.stdout
    assert len(CODE_RE.findall(added.stdout)) == 6
    status = gw.ssh(alice, "2sv", "status").stdout
    assert "enabled (security-key)" in status
    listed = gw.ssh(alice, "security-key", "list").stdout
    assert "yubikey" in listed and "sk-ssh-ed25519@openssh.com" in listed
    # Logging in with it (touch given) is the account, and counts as the second factor.
    who = run_with(gw, sk, "whoami")
    assert who.exit_status == 0 and who.stdout.strip() == alice.name
    verified = run_with(gw, sk, "2sv verify")
    assert verified.exit_status == 0, verified.stderr
    assert "Two-step session open" in verified.stdout
    assert "2sv.security_key_added" in [e["action"] for e in audit_actions(gw, alice)]


def test_a_signature_without_touch_is_refused(gw, alice):
    sk = SoftwareSecurityKey(touch=False)
    assert gw.ssh(alice, "security-key", "add", "lazy", input=sk.line + "\n").returncode == 0
    with pytest.raises(asyncssh.PermissionDenied):
        run_with(gw, sk, "whoami")
    sk.touch = True
    assert run_with(gw, sk, "whoami").stdout.strip() == alice.name


def test_add_refuses_keys_that_are_not_security_keys(gw, alice):
    plain = alice.pub.read_text()
    for line in (plain, "garbage", ""):
        result = gw.ssh(alice, "security-key", "add", "phone", input=line + "\n")
        assert result.returncode != 0
        assert len(error_lines(result.stderr)) == 1, result.stderr
    assert "Two-step verification is disabled." in gw.ssh(alice, "2sv", "status").stdout


def test_adding_a_key_when_2sv_is_on_needs_a_code(gw, alice):
    secret, codes, _ = enable(gw, alice)
    sk = SoftwareSecurityKey()
    no_code = gw.ssh(alice, "security-key", "add", "yubikey", input=sk.line + "\n")
    assert no_code.returncode != 0
    assert "security-key" not in gw.ssh(alice, "2sv", "status").stdout
    ok = gw.ssh(alice, "security-key", "add", "yubikey", input=f"{sk.line}\n{fresh_code(secret)}\n")
    assert ok.returncode == 0, ok.stderr
    assert not CODE_RE.findall(ok.stdout)  # the existing recovery codes stay
    assert "enabled (totp, security-key)" in gw.ssh(alice, "2sv", "status").stdout
    # A session made with the security key needs no code: disable goes through on stdin-less.
    disabled = run_with(gw, sk, "2sv disable")
    assert disabled.exit_status == 0, disabled.stderr
    assert "disabled" in gw.ssh(alice, "2sv", "status").stdout


def test_removing_the_last_method_needs_a_code(gw, alice):
    sk = SoftwareSecurityKey()
    added = gw.ssh(alice, "security-key", "add", "yubikey", input=sk.line + "\n")
    codes = CODE_RE.findall(added.stdout)
    fingerprint = sk.get_fingerprint("sha256")
    refused = gw.ssh(alice, "security-key", "remove", fingerprint, input="")
    assert refused.returncode != 0
    other = gw.ssh(alice, "security-key", "remove", "SHA256:nope", input=codes[0][0] + "\n")
    assert other.returncode != 0 and "No security key" in other.stderr
    removed = gw.ssh(alice, "security-key", "remove", fingerprint, input=codes[0][0] + "\n")
    assert removed.returncode == 0, removed.stderr
    assert "two-step verification is now off" in removed.stdout
    assert "Two-step verification is disabled." in gw.ssh(alice, "2sv", "status").stdout
    with pytest.raises(asyncssh.PermissionDenied):
        run_with(gw, sk, "whoami")
