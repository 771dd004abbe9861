"""`keys` and `keys remove FINGERPRINT`: the SSH keys that log in to the caller's account.

A key that logs in is what the holder of a stolen key would add to stay in after the
stolen one is revoked, so its owner sees every one here and can remove them: security
keys through `security-key remove` (they are 2SV methods too), keydir keys by the operator
(a sync would bring the file's key back).
"""

from __future__ import annotations

import time

from ..errors import Refusal
from ..names import printable, shown
from ..store import keys
from .context import Context
from .suggest import usage
from .twosv import event, second_factor, service


def describe(key: keys.StoredKey, in_use: str = "") -> str:
    """One login key on one line, for its owner (`keys`) and the operator's CLI."""
    kind = "security key" if key.kind == "security-key" else "key"
    added = time.strftime("%Y-%m-%d", time.gmtime(key.created_at))
    this = "  (this login)" if key.fingerprint == in_use else ""
    return f"{key.fingerprint}  {key.algorithm}  {kind}, added {added} by {key.source}  " \
           f"{shown(key.title)}{this}"


async def list_keys(ctx: Context) -> int:
    found = await keys.list_for(ctx.db, ctx.identity.account)
    await ctx.say(f"Keys that log in to {ctx.identity.account}:")
    for key in found:
        await ctx.say("  " + describe(key, ctx.identity.key_fingerprint))
    await ctx.say(f"Remove one with: {ctx.settings.ssh_command('keys remove FINGERPRINT')}")
    return 0


async def _own_plain_key(ctx: Context, fingerprint: str) -> keys.StoredKey:
    """The caller's own key that `keys remove` may remove, or a refusal saying why not."""
    key = await keys.find(ctx.db, fingerprint)
    if key is None or key.account_id != ctx.identity.account_id:
        raise Refusal(f"No key {printable(fingerprint)} on your account")
    if key.kind == "security-key":
        raise Refusal("That is a security key, a two-step method too; remove it with: "
                      f"{ctx.settings.ssh_command('security-key remove ' + fingerprint)}")
    if key.source == "keydir":
        raise Refusal("That key comes from the operator's keydir; ask the operator to remove "
                      "its file (a sync would add it back).")
    return key


async def remove(ctx: Context, fingerprint: str) -> int:
    key = await _own_plain_key(ctx, fingerprint)
    svc = service(ctx)
    if (await svc.state()).enabled:
        await second_factor(ctx, svc)
    else:
        answer = await ctx.ask(f'Remove key "{shown(key.title)}" ({fingerprint})? Type yes to go on: ')
        if answer is None or answer.strip().lower() != "yes":
            raise Refusal("Not confirmed; nothing changed.")
    await ctx.check_still_valid()
    await _own_plain_key(ctx, fingerprint)  # the prompt may have waited: still so?
    await keys.remove(ctx.db, fingerprint)
    await event(ctx, "key.remove", detail=fingerprint)
    await ctx.say(f"Key {fingerprint} removed; it no longer logs in.")
    if fingerprint == ctx.identity.key_fingerprint:
        await ctx.say("That was the key of this login.")
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if args in ((), ("list",)):
        return await list_keys(ctx)
    if len(args) == 2 and args[0] == "remove":
        return await remove(ctx, args[1])
    raise usage(ctx, "keys", "[list] | keys remove FINGERPRINT", args, ("list", "remove"))

