"""`branch-rule list TARGET`, `branch-rule add TARGET PATTERN [options] [--dry-run]` and
`branch-rule remove TARGET PATTERN`, where TARGET is WORKSPACE/NAME (a repository's
rules) or WORKSPACE (the defaults every repository of it inherits).

Any member may list; only admins change, and a change asks for the admin's own fresh
second factor as a policy change does (a stolen admin key alone must not lift a
protection). `--dry-run` changes nothing and asks for none.
"""

from __future__ import annotations

from .. import names, wording
from ..errors import Refusal
from ..kinds import Role
from ..services import branch_rules as service
from .context import Context
from .suggest import usage
from .twosv import service as twosv_service
from .workspace import fresh_factor, membership

SYNOPSIS = (
    "list WORKSPACE[/NAME] | add WORKSPACE[/NAME] PATTERN [--push WHO]... [--no-force] "
    "[--no-delete] [--no-create] [--require-2sv-session] [--require-signed [--own-keys]] "
    "[--dry-run] | remove WORKSPACE[/NAME] PATTERN"
)
FLAGS = {
    "--no-force": "no_force",
    "--no-delete": "no_delete",
    "--no-create": "no_create",
    "--require-2sv-session": "require_2sv_session",
    "--require-signed": "require_signed",
    "--own-keys": "own_keys",
}


async def _scope(ctx: Context, target: str, change: bool) -> service.Scope:
    """The rules' scope; members only (others cannot tell it exists), admins to change."""
    workspace, role = await membership(ctx, target.partition("/")[0])
    if change and role != Role.ADMIN:
        raise Refusal(f'Only admins of workspace "{workspace.name}" can change its branch rules.')
    return await service.scope(ctx.db, target)


def _options(args: list[str]) -> tuple[list[str], dict[str, bool], bool]:
    """(--push entries, flags, --dry-run), in any order."""
    push: list[str] = []
    flags: dict[str, bool] = {}
    dry_run = False
    while args:
        word = args.pop(0)
        if word == "--push" and args:
            push.append(args.pop(0))
        elif word in FLAGS:
            flags[FLAGS[word]] = True
        elif word == "--dry-run":
            dry_run = True
        else:
            raise Refusal(
                f"Invalid arguments at '{names.printable(word, 40)}': expected --push WHO, "
                + ", ".join(FLAGS)
                + " or --dry-run"
            )
    return push, flags, dry_run


async def _second_factor(ctx: Context, where: service.Scope) -> None:
    svc = twosv_service(ctx)
    if not (await svc.state()).enabled:
        raise Refusal(
            "Changing branch rules needs two-step verification on your own account: "
            f"{ctx.settings.ssh_command('2sv enable')}"
        )
    await fresh_factor(ctx, svc, where.workspace, "Verification code (to change branch rules): ")
    # The code prompt may have waited: the key and the admin role must still stand.
    await ctx.check_still_valid()
    await _scope(ctx, where.label, change=True)


async def add(ctx: Context, target: str, pattern: str, args: list[str]) -> int:
    where = await _scope(ctx, target, change=True)
    push, flags, dry_run = _options(args)
    rule = await service.make_rule(ctx.db, pattern, push, **flags)
    if dry_run:
        for line in wording.would_refuse(await service.dry_run(ctx.db, where, rule), rule):
            await ctx.say(line)
        return 0
    await _second_factor(ctx, where)
    change = await service.add(ctx.db, where, rule, actor=ctx.identity.account)
    await ctx.say(wording.branch_rule_added(change.scope, change.rule, change.replaced is not None))
    return 0


async def remove(ctx: Context, target: str, pattern: str) -> int:
    where = await _scope(ctx, target, change=True)
    await _second_factor(ctx, where)
    change = await service.remove(ctx.db, where, pattern, actor=ctx.identity.account)
    await ctx.say(wording.branch_rule_removed(change.scope, change.rule))
    return 0


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if len(args) == 2 and args[0] == "list":
        where = await _scope(ctx, args[1], change=False)
        for line in wording.branch_rules(where.label, await service.listed(ctx.db, where)):
            await ctx.say(line)
        return 0
    if len(args) >= 3 and args[0] == "add":
        return await add(ctx, args[1], args[2], list(args[3:]))
    if len(args) == 3 and args[0] == "remove":
        return await remove(ctx, args[1], args[2])
    raise usage(ctx, "branch-rule", SYNOPSIS, args, ("list", "add", "remove"))
