"""Signing keys end to end: `ssh ... signing-key add|list|remove` over the real `ssh`,
`gateway signing-key add|list|remove` on the command line, their audit rows, bad input
refused with one line, and the keys a push is checked against (store.for_push)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from gateway.config import Settings
from gateway.store import db as store_db
from gateway.store import signing_keys
from testkit.keys import fingerprint, make_key
from testkit.twosv import audit_actions, enable, error_lines, fresh_code


def signing_key(gw, name: str, kind: str = "ed25519"):
    key = make_key(gw.keys_dir, name, kind)
    return key, fingerprint(str(key) + ".pub")


def add_over_ssh(gw, user, title: str, text: str):
    return gw.ssh(user, "signing-key", "add", title, input=text)


def test_owner_adds_lists_and_removes_signing_keys(gw):
    user = gw.user()
    laptop, laptop_fp = signing_key(gw, f"{user.name}-laptop")
    rsa, rsa_fp = signing_key(gw, f"{user.name}-rsa", "rsa")
    result = add_over_ssh(gw, user, "laptop", (laptop.parent / f"{laptop.name}.pub").read_text())
    assert result.returncode == 0, result.stderr
    assert f'Signing key "laptop" ({laptop_fp}) registered.' in result.stdout
    assert add_over_ssh(gw, user, "rsa", rsa.with_suffix(".pub").read_text()).returncode == 0
    listed = gw.ssh(user, "signing-key", "list").stdout
    assert laptop_fp in listed and rsa_fp in listed and "ssh-rsa" in listed
    removed = gw.ssh(user, "signing-key", "remove", "laptop")  # by title
    assert removed.returncode == 0 and laptop_fp in removed.stdout
    assert gw.ssh(user, "signing-key", "remove", rsa_fp).returncode == 0  # by fingerprint
    assert "No signing keys registered." in gw.ssh(user, "signing-key", "list").stdout
    actions = [(a["action"], a["detail"]) for a in audit_actions(gw, user)]
    for fp in (laptop_fp, rsa_fp):
        assert ("signing-key.add", fp) in actions and ("signing-key.remove", fp) in actions


def test_the_login_key_itself_may_sign(gw):
    user = gw.user()
    result = add_over_ssh(gw, user, "login", user.pub.read_text())
    assert result.returncode == 0, result.stderr


def test_bad_signing_keys_are_refused_with_one_line(gw):
    user, other = gw.user(), gw.user()
    key, fp = signing_key(gw, f"{user.name}-k")
    pub = key.with_suffix(".pub").read_text()
    assert add_over_ssh(gw, user, "k", pub).returncode == 0
    ca = make_key(gw.keys_dir, f"{user.name}-ca")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "x", str(key) + ".pub"], check=True)
    cert = (gw.keys_dir / f"{key.name}-cert.pub").read_text()
    cases = {
        "duplicate": (pub, f"Signing key {fp} is already registered"),
        "other": (other.pub.read_text(), "belongs to another account"),
        "private": (key.read_text(), "This is a private key"),
        "cert": (cert, "This is a certificate"),
        "junk": ("hello world\n", "Not an OpenSSH public key line"),
        "long": ("ssh-ed25519 " + "A" * 9000 + "\n", "Too long for a public key line"),
    }
    for title, (text, message) in cases.items():
        result = add_over_ssh(gw, user, title, text)
        assert result.returncode != 0, title
        errors = error_lines(result.stderr)
        assert len(errors) == 1 and message in errors[0], (title, result.stderr)
        assert "Traceback" not in result.stderr
    other_key, _ = signing_key(gw, f"{user.name}-k2")
    same_title = add_over_ssh(gw, user, "k", other_key.with_suffix(".pub").read_text())
    assert "A signing key titled 'k' exists already" in same_title.stderr
    bad_title = add_over_ssh(gw, user, "x" * 101, pub)
    assert "Invalid signing key title" in bad_title.stderr
    assert "No key given" in add_over_ssh(gw, user, "empty", "").stderr
    assert "No signing key nope on account" in gw.ssh(user, "signing-key", "remove", "nope").stderr
    assert "Usage:" in gw.ssh(user, "signing-key", "frob").stderr
    # nothing half-written: only the first key is there
    assert gw.ssh(user, "signing-key", "list").stdout.count("SHA256:") == 1


def test_with_2sv_on_adding_needs_a_second_factor(gw):
    user = gw.user()
    secret, _codes, _ = enable(gw, user)
    key, fp = signing_key(gw, f"{user.name}-k")
    pub = key.with_suffix(".pub").read_text()
    refused = add_over_ssh(gw, user, "k", pub)
    assert refused.returncode != 0 and "No code given; nothing changed." in refused.stderr
    assert "SHA256:" not in gw.ssh(user, "signing-key", "list").stdout
    result = add_over_ssh(gw, user, "k", pub + fresh_code(secret) + "\n")
    assert result.returncode == 0, result.stderr
    assert fp in gw.ssh(user, "signing-key", "list").stdout


def test_operator_cli(gw):
    user = gw.user()
    key, fp = signing_key(gw, f"{user.name}-k")
    pub = str(key) + ".pub"
    out = gw.cli("signing-key", "add", user.name, pub, "--title", "work").stdout
    assert out.strip() == f"Added signing key {fp} (work) to {user.name}"
    listed = json.loads(gw.cli("signing-key", "list", user.name, "--json").stdout)
    assert [(k["fingerprint"], k["title"], k["account"]) for k in listed] == [
        (fp, "work", user.name)
    ]
    assert f"{user.name}\t{fp}" in gw.cli("signing-key", "list").stdout
    again = gw.cli("signing-key", "add", user.name, "-", input=Path(pub).read_text(), check=False)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"ERROR: Signing key {fp} is already registered"
    )
    missing = gw.cli("signing-key", "add", user.name, "/nonexistent.pub", check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr
    nobody = gw.cli("signing-key", "add", "nobody-here", pub, check=False)
    assert nobody.returncode == 1 and len(nobody.stderr.strip().splitlines()) == 1
    removed = gw.cli("signing-key", "remove", user.name, "work").stdout
    assert removed.strip() == f"Removed signing key {fp} (work) from {user.name}"
    gw.cli("signing-key", "add", user.name, pub)
    assert fp in gw.cli("signing-key", "remove", fp).stdout  # SPEC's form
    unknown = gw.cli("signing-key", "remove", "SHA256:nope", check=False)
    assert unknown.returncode == 1 and "No such signing key" in unknown.stderr
    usage = gw.cli("signing-key", "remove", "a", "b", "c", check=False)
    assert usage.returncode == 2
    actions = [(a["actor"], a["action"]) for a in audit_actions(gw, user)]
    assert ("operator", "signing-key.add") in actions
    assert ("operator", "signing-key.remove") in actions


def test_keys_a_push_is_checked_against(gw):
    user, gone = gw.user(), gw.user()
    key, fp = signing_key(gw, f"{user.name}-k")
    gone_key, gone_fp = signing_key(gw, f"{gone.name}-k")
    gw.cli("signing-key", "add", user.name, str(key) + ".pub")
    gw.cli("signing-key", "add", gone.name, str(gone_key) + ".pub")
    gw.cli("account", "disable", gone.name)

    async def read() -> dict[str, str]:
        settings = Settings(data_dir=gw.data, database_url=gw.database_url or "")
        async with await store_db.open_backend(settings, migrate=False) as backend:
            db = await backend.connect()
            try:
                return await signing_keys.for_push(db)
            finally:
                await db.close()

    found = asyncio.run(read())
    assert found[fp] == user.name
    assert gone_fp not in found  # a disabled account vouches for nothing
