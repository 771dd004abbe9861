"""`workspace show NAME` and `workspace require-2sv NAME on|off|session [--window MINUTES]
[--dry-run]`."""

from __future__ import annotations

import re

from .. import names, wording
from ..errors import Refusal
from ..kinds import Factor, KeyKind, Requirement, Role
from ..services import workspaces as workspace_service
from ..store import twosv as twosv_store
from ..store import workspaces
from ..twosv.service import Accepted
from .context import Context
from .suggest import usage
from .twosv import codes_guarded, second_factor, service

# A two-step session counts for a policy change only if it is this fresh (minutes).
FRESH_SESSION = 15


async def membership(ctx: Context, name: str) -> tuple[workspaces.Workspace, str]:
    """The workspace and the caller's role; non-members cannot tell it exists."""
    try:
        workspace = await workspaces.find(ctx.db, names.workspace_name(name))
    except Refusal:
        workspace = None
    role = None
    if workspace is not None:
        role = await workspaces.role_of(ctx.db, workspace.id, ctx.identity.account_id)
    if workspace is None or role is None:
        raise Refusal(f"Workspace not found: {names.printable(name)}")
    return workspace, role


async def show(ctx: Context, name: str) -> int:
    workspace, role = await membership(ctx, name)
    members = await workspaces.members(ctx.db, workspace.id)
    lacking = None  # each member's 2SV is for admins to see
    if role == Role.ADMIN:
        lacking = set(await workspace_service.members_without_2sv(ctx.db, workspace.id))
    for line in wording.show(workspace, members, lacking):
        await ctx.say(line)
    return 0


async def require_2sv(
    ctx: Context, name: str, policy_word: str, window: int | None, dry_run: bool = False
) -> int:
    workspace, role = await membership(ctx, name)
    requirement = workspace_service.check_requirement(policy_word, window)
    if role != Role.ADMIN:
        raise Refusal(f'Only admins of workspace "{workspace.name}" can change its policy.')
    if dry_run:  # changes nothing, so asks for no second factor
        lacking = []
        if requirement != Requirement.OFF:
            lacking = await workspace_service.members_without_2sv(ctx.db, workspace.id)
        for line in wording.preview(lacking, requirement != Requirement.OFF):
            await ctx.say(line)
        await ctx.say(wording.dry_run(workspace))
        return 0
    svc = service(ctx)
    if not (await svc.state()).enabled:
        # Also to turn it off: the change needs a second factor (below).
        raise Refusal(
            "Enable two-step verification on your own account first: "
            f"{ctx.settings.ssh_command('2sv enable')}"
        )
    typed = await fresh_factor(ctx, svc, workspace)
    # The code prompt may have waited: the key and the admin role must still stand.
    await ctx.check_still_valid()
    if await workspaces.role_of(ctx.db, workspace.id, ctx.identity.account_id) != Role.ADMIN:
        raise Refusal(f'Only admins of workspace "{workspace.name}" can change its policy.')
    if requirement == Requirement.SESSION and typed is not None:
        # The code just typed is what `2sv verify` asks for: the admin's own key keeps
        # working under the new policy instead of being refused at the next command.
        await svc.open_session(ctx.identity.key_fingerprint, typed.kind)
    change = await workspace_service.set_requirement(
        ctx.db, workspace, requirement, window, actor=ctx.identity.account
    )
    await ctx.say(wording.policy_changed(change.workspace, change.after, change.window))
    if change.after == Requirement.SESSION:
        await ctx.say(await _own_session(ctx, change.window))
    if change.after != Requirement.OFF:
        lacking = await workspace_service.members_without_2sv(ctx.db, workspace.id)
        if lacking:
            await ctx.say(wording.lacking_2sv(lacking, applied=True))
    return 0


async def _own_session(ctx: Context, window: int) -> str:
    """What the new `session` policy means for the admin's own keys, right now."""
    if ctx.identity.key_kind == KeyKind.SECURITY_KEY:
        return "Logins with your security keys count as a two-step session."
    key = f'"{names.shown(ctx.identity.key_title)}" ({ctx.identity.key_fingerprint})'
    verified_at = await twosv_store.session_verified_at(
        ctx.db, ctx.identity.key_fingerprint, ctx.identity.account_id
    )
    seconds = 0 if verified_at is None else verified_at + window * 60 - ctx.clock()
    left = -int(-seconds // 60)  # whole minutes, rounded up
    again = ctx.settings.ssh_command("2sv verify")
    if left <= 0:
        return f"This key, {key}, has no open two-step session: open one with: {again}"
    return (
        f"Your two-step session for this key, {key}, lasts {left} more min; each other key "
        f"of yours needs its own. After that, open a new one with: {again}"
    )


async def fresh_factor(
    ctx: Context,
    svc,
    workspace: workspaces.Workspace,
    prompt: str = "Verification code (to change the workspace's policy): ",
) -> Accepted | None:
    """A stolen admin key alone must not open the workspace: a policy (or branch rule)
    change needs a security-key login, a fresh two-step session for this key, or a code
    now (returned). Recovery codes (typed, or behind the session) count only where the
    key alone cannot read them."""
    if ctx.identity.key_kind == KeyKind.SECURITY_KEY:
        return None
    guarded = await codes_guarded(ctx)
    found = await twosv_store.session(ctx.db, ctx.identity.key_fingerprint, ctx.identity.account_id)
    window = min(workspace.session_window, FRESH_SESSION) * 60
    if (
        found is not None
        and found[0] <= ctx.clock() < found[0] + window
        and (guarded or found[1] in (Factor.TOTP, Factor.SECURITY_KEY))
    ):
        return None
    return await second_factor(ctx, svc, prompt, recovery_codes=guarded)


def _parse_options(args: list[str]) -> tuple[int | None, bool]:
    """`--window MINUTES` and `--dry-run`, in any order."""
    window, dry_run = None, False
    while args:
        if args[0] == "--dry-run":
            dry_run, args = True, args[1:]
        elif args[0] == "--window" and len(args) >= 2 and re.fullmatch(r"[0-9]{1,7}", args[1]):
            window, args = int(args[1]), args[2:]
        else:
            typed = names.printable(args[0], 40)
            raise Refusal(f"Invalid arguments at '{typed}': expected --window MINUTES or --dry-run")
    return window, dry_run


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if len(args) == 2 and args[0] == "show":
        return await show(ctx, args[1])
    if len(args) >= 3 and args[0] == "require-2sv":
        return await require_2sv(ctx, args[1], args[2], *_parse_options(list(args[3:])))
    raise usage(
        ctx,
        "workspace",
        "show NAME | require-2sv NAME on|off|session [--window MINUTES] [--dry-run]",
        args,
        ("show", "require-2sv"),
    )
