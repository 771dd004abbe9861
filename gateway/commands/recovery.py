"""`recovery-codes` and `recovery-codes regenerate` (SPEC §5)."""

from __future__ import annotations

from .. import wording
from ..errors import Refusal
from .context import Context
from .suggest import usage
from .twosv import codes_guarded, event, guarded_factor, second_factor, service, show_new_codes


async def show(ctx: Context) -> int:
    svc = service(ctx)
    if not (await svc.state()).enabled:
        raise Refusal("Two-step verification is not enabled, so there are no recovery codes.")
    if await codes_guarded(ctx):  # not for the SSH key alone (SPEC §5)
        await second_factor(ctx, svc, recovery_codes=False)
        await ctx.check_still_valid()
    codes = await svc.recovery_codes()
    await event(ctx, "2sv.recovery_codes_shown")
    await ctx.say("Your recovery codes (each works once):")
    for code, used in codes:
        await ctx.say(f"  {code}{'  (used)' if used else ''}")
    left = sum(1 for _, used in codes if not used)
    if left < 2:
        await ctx.say(wording.few_codes_left(left, ctx.settings.ssh_command))
    return 0


async def regenerate(ctx: Context) -> int:
    svc = service(ctx)
    if not (await svc.state()).enabled:
        raise Refusal("Two-step verification is not enabled, so there are no recovery codes.")
    answer = await ctx.ask("This replaces all your recovery codes. Type yes to go on: ")
    if answer is None or answer.strip().lower() != "yes":
        raise Refusal("Not confirmed; your recovery codes are unchanged.")
    await guarded_factor(ctx, svc)
    await ctx.check_still_valid()
    codes = await svc.new_recovery_codes(ctx.settings.recovery_codes)
    await event(ctx, "2sv.recovery_codes_regenerated")
    await show_new_codes(ctx, codes)
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if not args:
        return await show(ctx)
    if args == ("regenerate",):
        return await regenerate(ctx)
    raise usage(ctx, "recovery-codes", "[regenerate]", args, ("regenerate",))
