"""A login key's lifecycle end to end: `key add --expires`, a keydir line's
`expiry-time`, an expired key refused at login (gateway serve and `authorized-keys`), the
last use recorded once a minute and shown, and `key list --unused-since`."""

from __future__ import annotations

import json
import subprocess
import time

from testkit import Gateway, fingerprint, make_key, unique


def one_error(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    return lines[0]


def key_json(gw: Gateway, account: str, fp: str) -> dict:
    found = json.loads(gw.cli("key", "list", account, "--json").stdout)
    (key,) = [k for k in found if k["fingerprint"] == fp]
    return key


def set_column(gw: Gateway, fp: str, column: str, value: int | None) -> None:
    """Move a key's dates back in time (what a test cannot wait for)."""
    assert column in ("last_used_at", "created_at", "expires_at")
    gw.sql(f"UPDATE ssh_keys SET {column} = ? WHERE fingerprint = ?", value, fp)


def test_key_add_expires_is_stored_shown_and_the_key_logs_in(gw: Gateway):
    user = gw.user()
    key = make_key(gw.keys_dir, unique("k"))
    added = gw.cli(
        "key", "add", user.name, f"{key}.pub", "--title", "ci", "--expires", "2999-01-31"
    )
    assert "It stops logging in at 2999-01-31 00:00 UTC." in added.stdout
    fp = fingerprint(key)
    shown = key_json(gw, user.name, fp)
    assert shown["expires_at"] == 32474736000 and shown["expired"] is False
    listing = gw.cli("key", "list", user.name).stdout
    assert "expires 2999-01-31 00:00 UTC" in listing
    greeting = gw.ssh(key)
    assert greeting.returncode == 0, greeting.stderr
    assert "This key expires on 2999-01-31 00:00 UTC." in greeting.stdout
    audit = gw.cli("audit", "--account", user.name).stdout
    assert f"key.add {user.name} ok {fp} expires=32474736000" in audit


def test_expires_in_the_past_or_not_a_date_is_bad_usage(gw: Gateway):
    user = gw.user()
    key = make_key(gw.keys_dir, unique("k"))
    before = gw.cli("key", "list", user.name, "--json").stdout
    for bad, says in (
        ("2001-01-01", "is in the past"),
        ("tomorrow", "is not a date"),
        ("2027-02-30", "is not a date"),
        ("\x1b[31m", "is not a date"),
    ):
        line = one_error(
            gw.cli("key", "add", user.name, f"{key}.pub", "--expires", bad, check=False), 2
        )
        assert says in line and "\x1b" not in line, line
    assert gw.cli("key", "list", user.name, "--json").stdout == before  # nothing added


def test_an_expired_key_cannot_log_in_and_is_listed_as_expired(gw: Gateway, tmp_path):
    name = unique("exp")
    key = make_key(gw.keys_dir, name)
    fresh = make_key(gw.keys_dir, unique("fresh"))
    keydir = tmp_path / "keys" / name
    keydir.mkdir(parents=True)
    # OpenSSH's own option: sshd, reading the same line, would refuse the key too.
    (keydir / "old.pub").write_text(
        f'expiry-time="20200101Z" {key.with_suffix(".pub").read_text()}'
    )
    (keydir / "new.pub").write_text(
        f'expiry-time="29990101",no-pty {fresh.with_suffix(".pub").read_text()}'
    )
    gw.cli("keys", "sync", "--keydir", str(tmp_path / "keys"))
    old = key_json(gw, name, fingerprint(key))
    assert old["expired"] is True and old["expires_at"] == 1577836800
    assert "EXPIRED 2020-01-01 00:00 UTC" in gw.cli("account", "show", name).stdout

    refused = gw.ssh(key, "whoami")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    log = gw.server_log()
    assert f"reason=key-expired key={fingerprint(key)}" in log

    ok = gw.ssh(fresh)
    assert ok.returncode == 0, ok.stderr
    assert f'Your key "old" ({fingerprint(key)}) expired on 2020-01-01' in ok.stdout

    # Behind OpenSSH: no authorized_keys line for it, so sshd refuses it as well.
    key_type, blob = key.with_suffix(".pub").read_text().split()[:2]
    lookup = gw.cli("authorized-keys", "git", key_type, blob)
    assert lookup.stdout == ""

    # The file's expiry changed: so does the key's.
    (keydir / "old.pub").write_text(key.with_suffix(".pub").read_text())
    synced = gw.cli("keys", "sync", "--keydir", str(tmp_path / "keys")).stdout
    assert f"expiry changed {name} {fingerprint(key)}" in synced
    assert key_json(gw, name, fingerprint(key))["expires_at"] is None
    assert gw.ssh(key, "whoami").stdout.strip() == name


def test_a_bad_expiry_time_in_a_keydir_file_is_reported_and_nothing_changes(gw: Gateway, tmp_path):
    name = unique("bad")
    key = make_key(gw.keys_dir, name)
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / f"{name}.pub").write_text(
        f'expiry-time="2027-01-31" {key.with_suffix(".pub").read_text()}'
    )
    result = gw.cli("keys", "sync", "--keydir", str(keydir), check=False)
    assert result.returncode == 1
    assert "is not YYYYMMDD[HHMM[SS]][Z]" in result.stderr and "Traceback" not in result.stderr
    assert gw.cli("account", "show", name, check=False).returncode == 1  # not created


def test_last_use_is_recorded_once_a_minute_and_shown(gw: Gateway):
    user = gw.user()
    fp = fingerprint(user.key)
    assert key_json(gw, user.name, fp)["last_used_at"] is None
    assert "never used" in gw.cli("key", "list", user.name).stdout
    assert gw.ssh(user, "whoami").returncode == 0
    # Written in the background after the login: wait for it, up to a few seconds.
    deadline = time.monotonic() + 10
    while key_json(gw, user.name, fp)["last_used_at"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    used = key_json(gw, user.name, fp)["last_used_at"]
    assert used is not None and abs(used - time.time()) < 120
    today = time.strftime("%Y-%m-%d", time.gmtime(used))
    assert f"last used {today}" in gw.cli("account", "show", user.name).stdout
    assert f"last used {today}" in gw.ssh(user, "keys").stdout

    # Within the minute the server does not write again, however many logins.
    set_column(gw, fp, "last_used_at", used - 3600)
    for _ in range(3):
        assert gw.ssh(user, "whoami").returncode == 0
    time.sleep(0.5)  # room for a (wrong) background write to land
    assert key_json(gw, user.name, fp)["last_used_at"] == used - 3600


def test_unused_since_finds_stale_keys(gw: Gateway):
    user = gw.user()
    stale = make_key(gw.keys_dir, unique("stale"))
    gw.cli("key", "add", user.name, f"{stale}.pub", "--title", "old laptop")
    long_ago = int(time.time()) - 100 * 86400
    set_column(gw, fingerprint(stale), "created_at", long_ago - 86400)
    set_column(gw, fingerprint(stale), "last_used_at", long_ago)
    found = gw.cli("key", "list", user.name, "--unused-since", "90d").stdout
    assert fingerprint(stale) in found and fingerprint(user.key) not in found
    assert (
        fingerprint(stale) not in gw.cli("key", "list", user.name, "--unused-since", "101d").stdout
    )
    everyone = json.loads(gw.cli("key", "list", "--unused-since", "90d", "--json").stdout)
    assert fingerprint(stale) in [k["fingerprint"] for k in everyone]
    line = one_error(gw.cli("key", "list", "--unused-since", "ninety", check=False), 2)
    assert "is not an age" in line
