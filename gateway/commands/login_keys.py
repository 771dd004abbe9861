"""`keys` and `keys remove FINGERPRINT`: the SSH keys that log in to the caller's account.

A key that logs in is what the holder of a stolen key would add to stay in after the
stolen one is revoked, so its owner sees every one here and can remove them: security
keys through `security-key remove` (they are 2SV methods too), keydir keys by the operator
(a sync would bring the file's key back).
"""

from __future__ import annotations

from .. import wording
from ..errors import Refusal
from ..names import shown
from ..services import keys as key_service
from .context import Context
from .suggest import usage
from .twosv import second_factor, service


async def list_keys(ctx: Context) -> int:
    found = await key_service.list_for(ctx.db, ctx.identity.account)
    await ctx.say(f"Keys that log in to {ctx.identity.account}:")
    for line in wording.login_key_lines(found, ctx.identity.key_fingerprint):
        await ctx.say(line)
    await ctx.say(f"Remove one with: {ctx.settings.ssh_command('keys remove FINGERPRINT')}")
    return 0


async def remove(ctx: Context, fingerprint: str) -> int:
    key = await key_service.own_plain_key(
        ctx.db, ctx.identity.account_id, fingerprint, ctx.settings.ssh_command
    )
    svc = service(ctx)
    if (await svc.state()).enabled:
        await second_factor(ctx, svc)
    else:
        answer = await ctx.ask(
            f'Remove key "{shown(key.title)}" ({fingerprint})? Type yes to go on: '
        )
        if answer is None or answer.strip().lower() != "yes":
            raise Refusal("Not confirmed; nothing changed.")
    await ctx.check_still_valid()
    await key_service.remove_own(
        ctx.db,
        ctx.identity.account_id,
        ctx.identity.account,
        fingerprint,
        ssh_command=ctx.settings.ssh_command,
        hooks_dir=ctx.settings.hooks_dir,
        key_fingerprint=ctx.identity.key_fingerprint,
        remote_addr=ctx.remote_addr,
    )
    await ctx.say(f"Key {fingerprint} removed; it no longer logs in.")
    if fingerprint == ctx.identity.key_fingerprint:
        await ctx.say("That was the key of this login.")
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if args in ((), ("list",)):
        return await list_keys(ctx)
    if len(args) == 2 and args[0] == "remove":
        return await remove(ctx, args[1])
    if args[:1] == ("add",):  # by design: a stolen key must not be able to add another
        raise Refusal(
            "Login keys are added by an operator on the server (gateway key add "
            f"{ctx.identity.account} FILE); over SSH you can list and remove them."
        )
    raise usage(ctx, "keys", "[list] | keys remove FINGERPRINT", args, ("list", "remove"))
