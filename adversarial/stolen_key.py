"""The holder of a stolen SSH key: what they try in order to take 2SV over, open the
workspace, stay in after the key is revoked, or forge what others read."""

from __future__ import annotations

import json
import re
import sqlite3

from testkit import Gateway, User, fingerprint, make_key

from .suite import Result

NOT_ENOUGH = "A recovery code is not enough here"


def _codes_in(text: str) -> bool:
    return re.search(r"^\s+[0-9a-z]{5}-[0-9a-z]{5}", text, re.M) is not None


def stolen_key(g: Gateway) -> Result:
    from testkit.security_key import SoftwareSecurityKey, run_with
    from testkit.twosv import Session, enable, fresh_code

    result = Result("stolen key (2SV takeover, policy, persistence, forged text)")
    victim = g.user()
    secret, codes, _ = enable(g, victim)
    ws = g.workspace((victim, "admin"))
    g.cli("workspace", "require-2sv", ws, "session")

    def policy() -> str:
        return json.loads(g.cli("workspace", "show", ws, "--json").stdout)["require_2sv"]

    # 1. The codes, under the session policy, with the key alone.
    for answer in ("", "\n", codes[0] + "\n", "123456\n", "x" * 2000 + "\n"):
        shown = g.ssh(victim, "recovery-codes", input=answer)
        result.check(
            shown.returncode != 0 and not _codes_in(shown.stdout),
            f"recovery-codes with {answer[:20]!r}: {shown.stdout[:200]!r}",
        )
    # 2. Planting a security key, and regenerating the codes, with a recovery code.
    planted = SoftwareSecurityKey()
    add = g.ssh(victim, "security-key", "add", "mine", input=f"{planted.line}\n{codes[1]}\n")
    listed = g.ssh(victim, "security-key", "list").stdout
    result.check(
        add.returncode != 0 and NOT_ENOUGH in add.stderr and "mine" not in listed,
        f"security-key add with a recovery code: {add.stderr.strip()!r}",
    )
    regen = g.ssh(victim, "recovery-codes", "regenerate", input=f"yes\n{codes[2]}\n")
    result.check(
        regen.returncode != 0 and not _codes_in(regen.stdout),
        f"recovery-codes regenerate with a recovery code: {regen.stderr.strip()!r}",
    )
    # 3. Switching the policy off or widening the window, with no factor or a wrong one.
    for args, answer in (
        ((ws, "off"), ""),
        ((ws, "off"), "000000\n"),
        ((ws, "session", "--window", "10080"), ""),
        ((ws, "on"), codes[3][:5] + "\n"),
    ):
        changed = g.ssh(victim, "workspace", "require-2sv", *args, input=answer)
        result.check(
            changed.returncode != 0 and policy() == "session",
            f"require-2sv {' '.join(args[1:])} with {answer!r}: {changed.stderr.strip()!r}",
        )
    # 4. A prompt held open while the operator revokes the key: nothing changes.
    second = make_key(g.keys_dir, "stolen-second")
    g.cli("key", "add", victim.name, f"{second}.pub")
    thief = User(victim.name, second)
    waiting = Session(g, thief, "2sv", "verify")
    waiting.proc.stderr.read1(4096)
    g.cli("key", "remove", fingerprint(f"{second}.pub"))
    waiting.answer(fresh_code(secret))
    after = waiting.finish()
    db = sqlite3.connect(g.data / "gateway.db")
    rows = db.execute(
        "SELECT count(*) FROM twosv_sessions WHERE key_fingerprint = ?",
        (fingerprint(f"{second}.pub"),),
    ).fetchone()[0]
    db.close()
    result.check(
        after.returncode != 0 and rows == 0, "2sv verify answered after the key was revoked"
    )
    # 5. What the operator sees after revoking: every key that still logs in.
    g.cli("key", "add", victim.name, f"{second}.pub")
    revoked = g.cli("key", "remove", fingerprint(f"{second}.pub")).stdout
    result.check(
        "key(s) that log in" in revoked and fingerprint(f"{victim.key}.pub") in revoked,
        f"key remove lists what still logs in: {revoked!r}",
    )
    # 6. Text that would forge a terminal or an audit line.
    for title in (
        "a\x1b[2J",
        "line\n2026-01-01T00:00:00Z operator key.add x ok",
        "\u202eevil",
        "\x9b31m",
        "t" * 500,
    ):
        added = g.cli("key", "add", victim.name, f"{second}.pub", "--title", title, check=False)
        result.check(
            added.returncode == 1
            and added.stderr.startswith("ERROR: ")
            and "\x1b" not in added.stderr
            and "\n" not in added.stderr.strip(),
            f"key title {title[:30]!r}",
        )
    sk_title = g.ssh(victim, "security-key", "add", "x\x1b]0;owned\x07", input="")
    result.check(sk_title.returncode != 0 and "\x1b" not in sk_title.stderr, "security-key title")
    # 7. Without a registered security key, a login with the planted one is no one.
    try:
        run_with(g, planted, "whoami")
        result.check(False, "a planted security key logged in")
    except Exception:
        result.check(True, "")
    result.notes = "session policy; the victim's key alone, and a revoked key mid-prompt"
    return result
