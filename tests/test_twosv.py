"""Two-step verification end to end: the real `ssh` client, answers on stdin, codes from pyotp."""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyotp
import pytest

from testkit import BACKOFF_SECONDS, User
from testkit.twosv import (
    CODE_RE,
    URI_RE,
    Session,
    audit_actions,
    code_at,
    enable,
    error_lines,
    fresh_code,
)


@pytest.fixture
def alice(gw) -> User:
    return gw.user()


def test_enable_shows_qr_details_and_recovery_codes(gw, alice):
    assert "Two-step verification is disabled." in gw.ssh(alice, "2sv", "status").stdout
    session = Session(gw, alice, "2sv", "enable")
    uri = session.read_until(URI_RE).group(1)
    session.read_until(re.compile(r"Key: +[A-Z2-7 ]+\n"))  # the URI comes first, the Key last
    out = session.out.decode()
    assert "▀" in out or "█" in out  # the QR code, drawn with block characters
    assert f"Account: gateway:{alice.name}" in out
    parsed = pyotp.parse_uri(uri)
    assert uri.startswith(f"otpauth://totp/gateway:{alice.name}?")
    assert parsed.issuer == "gateway"  # from the label: the URI carries only what apps need
    assert len(parsed.byte_secret()) == 20  # 160 bits
    key_line = re.search(r"Key:\s+([A-Z2-7 ]+)", out).group(1)
    assert key_line.replace(" ", "") == parsed.secret
    session.answer("000000" if parsed.now() != "000000" else "111111")  # wrong: asked again
    session.answer("not a code")  # malformed: asked again
    session.answer(code_at(parsed.secret))
    result = session.finish()
    assert result.returncode == 0, result.stderr
    assert "does not match" in result.stdout
    assert "Two-step verification is now on." in result.stdout
    codes = [m.group(1) for m in CODE_RE.finditer(result.stdout)]
    assert len(codes) == 6 and len(set(codes)) == 6
    assert "Store them somewhere safe" in result.stdout
    status = gw.ssh(alice, "2sv", "status").stdout
    assert "Two-step verification is enabled (totp); 6 of 6 recovery codes left." in status
    greeting = gw.ssh(alice).stdout
    assert "Two-step verification is enabled (totp)" in greeting
    assert "two-step verification: enabled" in gw.cli("account", "show", alice.name).stdout.lower()
    assert gw.ssh(alice, "recovery-codes").stdout.count("-") >= 6
    actions = [e["action"] for e in audit_actions(gw, alice)]
    assert "2sv.enable" in actions


def test_interrupted_or_wrong_enrolment_leaves_2sv_off(gw, alice):
    closed = gw.ssh(alice, "2sv", "enable", input="")
    assert closed.returncode != 0
    assert "ERROR: No code given; nothing changed." in closed.stderr
    wrong = gw.ssh(alice, "2sv", "enable", input="000000\n000001\n000002\n")
    assert wrong.returncode != 0 and "ERROR: No correct code; nothing changed." in wrong.stderr
    assert "Two-step verification is disabled." in gw.ssh(alice, "2sv", "status").stdout
    ((account_id,),) = gw.sql("SELECT id FROM accounts WHERE name = ?", alice.name)
    rows = gw.sql("SELECT totp_secret FROM twosv WHERE account_id = ?", account_id)
    assert rows == [] or rows[0][0] is None  # no orphan secret


def test_commands_that_need_2sv_on(gw, alice):
    for command in (
        ("2sv", "disable"),
        ("2sv", "verify"),
        ("recovery-codes",),
        ("recovery-codes", "regenerate"),
        ("2sv", "replace"),
    ):
        result = gw.ssh(alice, *command, input="123456\n")
        assert result.returncode != 0, command
        assert len(error_lines(result.stderr)) == 1, result.stderr
        assert "not enabled" in result.stderr or "no authenticator app" in result.stderr


def test_enable_twice_is_refused(gw, alice):
    enable(gw, alice)
    again = gw.ssh(alice, "2sv", "enable", input="")
    assert again.returncode != 0
    assert "already on" in again.stderr and "2sv replace" in again.stderr


def test_verify_accepts_spaces_refuses_replay_and_lookalikes(gw, alice):
    secret, codes, _ = enable(gw, alice)
    code = fresh_code(secret)
    for typed in ("１２３４５６", "12345", "1234567", "12a456", "x" * 2000):
        bad = gw.ssh(alice, "2sv", "verify", input=typed + "\n")
        assert bad.returncode != 0 and error_lines(bad.stderr), typed
        assert "Traceback" not in bad.stderr
    ok = gw.ssh(alice, "2sv", "verify", input=f"{code[:3]} {code[3:]}\n")
    assert ok.returncode == 0, ok.stderr
    assert "Two-step session open" in ok.stdout
    replay = gw.ssh(alice, "2sv", "verify", input=code + "\n")
    assert replay.returncode != 0 and "already used" in replay.stderr
    actions = audit_actions(gw, alice)
    refused = [e for e in actions if e["action"] == "2sv.code_refused"]
    # The malformed inputs were not guesses; the replayed code was.
    assert len(refused) == 1
    assert any(e["action"] == "2sv.verify" for e in actions)


def test_two_connections_racing_with_one_code(gw, alice):
    secret, _, _ = enable(gw, alice)
    code = fresh_code(secret)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda _: gw.ssh(alice, "2sv", "verify", input=code + "\n"), range(4))
        )
    assert sum(r.returncode == 0 for r in results) == 1, [r.stderr for r in results]


def test_failed_codes_back_off_across_connections(gw, alice):
    secret, codes, _ = enable(gw, alice)
    for _ in range(5):
        wrong = gw.ssh(alice, "2sv", "verify", input="000000\n")
        assert "Wrong verification code." in wrong.stderr or "already used" in wrong.stderr
    # Now even a correct code (or recovery code) is refused until the back-off ends.
    locked = gw.ssh(alice, "2sv", "verify", input=codes[0] + "\n")
    assert locked.returncode != 0 and "Too many failed codes" in locked.stderr
    # Refused unseen, and audited like every refused code (SPEC §5).
    refused = [e for e in audit_actions(gw, alice) if e["action"] == "2sv.code_refused"]
    assert len(refused) == 6 and refused[-1]["detail"] == "back-off", refused
    time.sleep(BACKOFF_SECONDS + 0.5)
    # The next failure doubles the back-off.
    gw.ssh(alice, "2sv", "verify", input="000000\n")
    locked = gw.ssh(alice, "2sv", "verify", input=codes[0] + "\n")
    assert "Too many failed codes" in locked.stderr
    time.sleep(2 * BACKOFF_SECONDS + 0.5)
    ok = gw.ssh(alice, "2sv", "verify", input=codes[0] + "\n")
    assert ok.returncode == 0, ok.stderr
    # The success reset the count: one wrong code does not lock again.
    gw.ssh(alice, "2sv", "verify", input="000000\n")
    assert gw.ssh(alice, "2sv", "verify", input=codes[1] + "\n").returncode == 0


def test_recovery_codes_list_use_and_regenerate(gw, alice):
    secret, codes, _ = enable(gw, alice)
    listed = gw.ssh(alice, "recovery-codes").stdout
    assert [m.group(1) for m in CODE_RE.finditer(listed)] == codes
    # Case-insensitive, with or without the hyphen; each works once.
    assert gw.ssh(alice, "2sv", "verify", input=codes[0].upper() + "\n").returncode == 0
    assert gw.ssh(alice, "2sv", "verify", input=codes[1].replace("-", "") + "\n").returncode == 0
    again = gw.ssh(alice, "2sv", "verify", input=codes[0] + "\n")
    assert again.returncode != 0 and "already used" in again.stderr
    listed = gw.ssh(alice, "recovery-codes").stdout
    used = {m.group(1) for m in CODE_RE.finditer(listed) if m.group(2)}
    assert used == {codes[0], codes[1]}
    assert "Warning" not in listed
    for code in codes[2:5]:
        assert gw.ssh(alice, "2sv", "verify", input=code + "\n").returncode == 0
    assert "Warning: only 1 recovery codes left" in gw.ssh(alice, "recovery-codes").stdout
    # Regenerate: needs "yes" and a code.
    no = gw.ssh(alice, "recovery-codes", "regenerate", input="no\n")
    assert no.returncode != 0 and "unchanged" in no.stderr
    regen = gw.ssh(alice, "recovery-codes", "regenerate", input=f"yes\n{fresh_code(secret)}\n")
    assert regen.returncode == 0, regen.stderr
    new_codes = [m.group(1) for m in CODE_RE.finditer(regen.stdout)]
    assert len(new_codes) == 6 and not set(new_codes) & set(codes)
    old = gw.ssh(alice, "2sv", "verify", input=codes[5] + "\n")
    assert old.returncode != 0
    actions = [e["action"] for e in audit_actions(gw, alice)]
    for expected in (
        "2sv.recovery_codes_shown",
        "2sv.recovery_code_used",
        "2sv.recovery_codes_regenerated",
        "2sv.code_refused",
    ):
        assert expected in actions


def test_twenty_parallel_uses_of_one_recovery_code(gw, alice):
    _, codes, _ = enable(gw, alice)
    with ThreadPoolExecutor(20) as pool:
        results = list(
            pool.map(lambda _: gw.ssh(alice, "2sv", "verify", input=codes[2] + "\n"), range(20))
        )
    assert sum(r.returncode == 0 for r in results) == 1
    assert all("Traceback" not in r.stderr for r in results)


def test_disable_needs_a_code(gw, alice):
    secret, codes, _ = enable(gw, alice)
    assert gw.ssh(alice, "2sv", "disable", input="").returncode != 0
    wrong = gw.ssh(alice, "2sv", "disable", input="000000\n")
    assert wrong.returncode != 0
    assert "enabled" in gw.ssh(alice, "2sv", "status").stdout
    ok = gw.ssh(alice, "2sv", "disable", input=codes[3] + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "Two-step verification is disabled." in gw.ssh(alice, "2sv", "status").stdout
    assert gw.ssh(alice, "recovery-codes").returncode != 0
    assert "2sv.disable" in [e["action"] for e in audit_actions(gw, alice)]


def test_replace_keeps_old_device_until_new_one_is_verified(gw, alice):
    old_secret, codes, _ = enable(gw, alice)
    # Start a replacement with a recovery code, then give up: the old device still works.
    session = Session(gw, alice, "2sv", "replace")
    session.answer(codes[0])
    session.read_until(URI_RE)
    session.proc.stdin.close()
    assert session.finish().returncode != 0
    assert gw.ssh(alice, "2sv", "verify", input=fresh_code(old_secret) + "\n").returncode == 0
    # A full replacement: then codes of the old device are refused, the new one works.
    session = Session(gw, alice, "2sv", "replace")
    session.answer(codes[1])
    new_secret = pyotp.parse_uri(session.read_until(URI_RE).group(1)).secret
    assert new_secret != old_secret
    session.answer(code_at(new_secret))
    result = session.finish()
    assert result.returncode == 0, result.stderr
    assert "new device is set up" in result.stdout
    assert gw.ssh(alice, "2sv", "verify", input=code_at(old_secret, -1) + "\n").returncode != 0
    assert "2sv.replace" in [e["action"] for e in audit_actions(gw, alice)]


def test_secrets_and_codes_are_sealed_at_rest(gw, alice):
    secret, codes, _ = enable(gw, alice)
    raw = b""
    for name in ("gateway.db", "gateway.db-wal"):
        path = gw.data / name
        if path.exists():
            raw += path.read_bytes()
    assert secret.encode() not in raw
    assert pyotp.TOTP(secret).byte_secret() not in raw
    for code in codes:
        assert code.encode() not in raw and code.replace("-", "").encode() not in raw
    log = gw.server_log()
    assert secret not in log and not any(code in log for code in codes)


def test_2sv_events_reach_hooks(gw, alice):
    events_file = gw.root / "events.jsonl"
    hook_dir = gw.root / "hooks" / "2sv-event.d"
    hook_dir.mkdir(parents=True, exist_ok=True)
    hook = hook_dir / "50-record"
    hook.write_text(f"#!/bin/sh\ncat >> {events_file}\n")
    hook.chmod(0o755)
    try:
        secret, codes, _ = enable(gw, alice)
        gw.ssh(alice, "2sv", "verify", input="000000\n")
        gw.ssh(alice, "recovery-codes")
    finally:
        hook.unlink()
    mine = [
        json.loads(line)
        for line in events_file.read_text().splitlines()
        if json.loads(line)["account"] == alice.name
    ]
    assert [e["event"] for e in mine] == [
        "2sv.enable",
        "2sv.code_refused",
        "2sv.recovery_codes_shown",
    ]
    text = events_file.read_text()
    assert secret not in text and not any(code in text for code in codes)
    assert mine[1]["outcome"] == "denied"


def test_no_operator_command_turns_off_2sv(gw, alice):
    enable(gw, alice)
    help_text = gw.cli("--help").stdout + gw.cli("account", "--help").stdout
    assert "2sv" not in help_text.lower().replace("require-2sv", "")
    gw.cli("account", "disable", alice.name)
    gw.cli("account", "enable", alice.name)
    assert "enabled" in gw.ssh(alice, "2sv", "status").stdout


def test_shipped_syslog_hook_passes_the_event_on(tmp_path):
    """The example hook in hooks/2sv-event.d hands the JSON event to `logger`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "logged"
    fake_logger = bin_dir / "logger"
    fake_logger.write_text(f'#!/bin/sh\necho "$@" > {record}\ncat >> {record}\n')
    fake_logger.chmod(0o755)
    hook = Path(__file__).resolve().parent.parent / "hooks" / "2sv-event.d" / "50-syslog"
    event = '{"event": "2sv.enable", "account": "alice"}\n'
    result = subprocess.run(
        [str(hook)],
        input=event,
        text=True,
        capture_output=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    logged = record.read_text()
    assert logged.startswith("-t gateway-2sv")
    assert '"event": "2sv.enable"' in logged


def test_answers_typed_at_a_terminal(gw, alice):
    """With `ssh -tt` the client's terminal is raw: the gateway echoes, handles backspace
    and takes Enter (\\r) as the end of the answer."""
    secret, _, _ = enable(gw, alice)
    code = fresh_code(secret)
    typed = code[:3] + "9\x7f" + code[3:] + "\r"
    result = gw.ssh(alice, "2sv", "verify", input=typed, extra=("-tt",))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Two-step session open" in result.stdout
    assert "\r\n" in result.stdout  # lines end as a terminal needs


def wrong_codes(secret: str, count: int) -> list[str]:
    valid = {code_at(secret, offset) for offset in (-1, 0, 1, 2)}
    return [c for c in (f"{d}" * 6 for d in range(10)) if c not in valid][:count]


def test_enrolment_typos_are_not_tries_and_a_rerun_shows_the_same_key(gw, alice):
    """An empty line or a malformed answer is asked again without using one of the three
    tries; after three wrong codes, `2sv enable` again shows the same key, so the entry
    already added to the app works."""
    first = Session(gw, alice, "2sv", "enable")
    uri = first.read_until(URI_RE).group(1)
    secret = pyotp.parse_uri(uri).secret
    wrong = wrong_codes(secret, 3)
    for answer in ("", "12345", wrong[0], "", "not a code", wrong[1], wrong[2]):
        first.answer(answer)
    failed = first.finish()
    assert failed.returncode != 0
    assert "ERROR: No correct code; nothing changed." in failed.stderr
    assert failed.stdout.count("does not match") == 2  # the third wrong code ends it
    assert failed.stdout.count("A verification code is six digits.") == 2
    assert failed.stdout.count("URI:") == 1  # one secret for every try
    again = Session(gw, alice, "2sv", "enable")
    assert again.read_until(URI_RE).group(1) == uri
    again.answer(code_at(secret))
    done = again.finish()
    assert done.returncode == 0, done.stderr
    assert "Two-step verification is now on." in done.stdout
    # Once confirmed, it is no longer pending: a new device gets a new key.
    replace = Session(gw, alice, "2sv", "replace")
    replace.answer(fresh_code(secret))
    assert pyotp.parse_uri(replace.read_until(URI_RE).group(1)).secret != secret
    replace.proc.stdin.close()
    assert replace.finish().returncode != 0
