"""`security-key list | add TITLE | remove FINGERPRINT` (SPEC §5).

A security key is an `sk-*` SSH key: logging in with it needs the key's touch, so a login
made with it counts as the second factor.
"""

from __future__ import annotations

from .. import names, sshkeys
from ..errors import Refusal
from ..names import printable, shown
from ..services import keys as key_service
from .context import Context
from .suggest import usage
from .twosv import event, guarded_factor, second_factor, service, show_new_codes


async def list_keys(ctx: Context) -> int:
    found = await key_service.security_keys(ctx.db, ctx.identity.account)
    if not found:
        await ctx.say("No security keys registered.")
    for key in found:
        await ctx.say(f"{key.fingerprint}  {key.algorithm}  {shown(key.title)}")
    return 0


async def add(ctx: Context, title: str) -> int:
    names.title(title)
    svc = service(ctx)
    state = await svc.state()
    line = await ctx.ask("Paste the security key's public key line (ssh-keygen -t ed25519-sk): ")
    if line is None:
        raise Refusal("No key given; nothing changed.")
    key = sshkeys.parse_line(line)
    if not key.is_security_key:
        raise Refusal(
            "Not a security key: expected an sk-ssh-ed25519@openssh.com or "
            "sk-ecdsa-sha2-nistp256@openssh.com public key"
        )
    if state.enabled:
        await guarded_factor(ctx, svc)
    await ctx.check_still_valid()
    codes = await svc.add_security_key(
        key, title, 0 if state.enabled else ctx.settings.recovery_codes, state
    )
    await event(ctx, "2sv.security_key_added", detail=key.fingerprint)
    await ctx.say(f'Security key "{title}" ({key.fingerprint}) registered.')
    if codes:
        await ctx.say("Two-step verification is now on.")
        await show_new_codes(ctx, codes)
    return 0


async def remove(ctx: Context, fingerprint: str) -> int:
    svc = service(ctx)
    own = {k.fingerprint: k for k in await key_service.security_keys(ctx.db, ctx.identity.account)}
    if fingerprint not in own:
        raise Refusal(f"No security key {printable(fingerprint)} on your account")
    # Always a second factor: a security key is a 2SV method and a login key of its owner.
    await second_factor(ctx, svc)
    await ctx.check_still_valid()
    last_method = await svc.remove_security_key(fingerprint)
    await event(ctx, "2sv.security_key_removed", detail=fingerprint)
    await ctx.say(f"Security key {fingerprint} removed.")
    if last_method:
        await ctx.say("That was your last two-step method: two-step verification is now off.")
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if args == ("list",):
        return await list_keys(ctx)
    if len(args) == 2 and args[0] == "add":
        return await add(ctx, args[1])
    if len(args) == 2 and args[0] == "remove":
        return await remove(ctx, args[1])
    raise usage(
        ctx, "security-key", "list|add TITLE|remove FINGERPRINT", args, ("list", "add", "remove")
    )
