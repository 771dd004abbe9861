"""`workspace show NAME` and `workspace require-2sv NAME on|off|session [--window MINUTES]`."""

from __future__ import annotations

import re

from .. import access, names
from ..errors import Refusal
from ..store import twosv as twosv_store
from ..store import workspaces
from .context import Context
from .suggest import usage
from .twosv import codes_guarded, second_factor, service

# A two-step session counts for a policy change only if it is this fresh (minutes).
FRESH_SESSION = 15


async def _membership(ctx: Context, name: str) -> tuple[workspaces.Workspace, str]:
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


def _describe(workspace: workspaces.Workspace) -> str:
    if workspace.require_2sv == "session":
        return f"session (a verified two-step session, {workspace.session_window} min window)"
    return workspace.require_2sv


async def show(ctx: Context, name: str) -> int:
    workspace, role = await _membership(ctx, name)
    members = await workspaces.members(ctx.db, workspace.id)
    lacking = set(await access.members_without_2sv(ctx.db, workspace.id)) if role == "admin" else set()
    await ctx.say(f"workspace:    {workspace.name}")
    await ctx.say(f"require-2sv:  {_describe(workspace)}")
    await ctx.say(f"members:      {len(members)}")
    for member in members:
        note = ""
        if role == "admin":
            note = "  2SV off" if member.account in lacking else "  2SV on"
            if member.account in lacking and workspace.require_2sv != "off":
                note += " (does not meet the policy)"
        await ctx.say(f"  {member.account}\t{member.role}{note}")
    return 0


async def require_2sv(ctx: Context, name: str, policy_word: str, window: int | None) -> int:
    workspace, role = await _membership(ctx, name)
    access.check_policy(policy_word, window)
    if role != "admin":
        raise Refusal(f'Only admins of workspace "{workspace.name}" can change its policy.')
    svc = service(ctx)
    if not (await svc.state()).enabled:
        # Also to turn it off: the change needs a second factor (below).
        raise Refusal("Enable two-step verification on your own account first: "
                      f"{ctx.settings.ssh_command('2sv enable')}")
    await _fresh_factor(ctx, svc, workspace)
    # The code prompt may have waited: the key and the admin role must still stand.
    await ctx.check_still_valid()
    if await workspaces.role_of(ctx.db, workspace.id, ctx.identity.account_id) != "admin":
        raise Refusal(f'Only admins of workspace "{workspace.name}" can change its policy.')
    await access.set_policy(ctx.db, workspace, policy_word, window, ctx.identity.account)
    await ctx.say(f'Workspace "{workspace.name}" now requires: {policy_word}.')
    if policy_word != "off":
        lacking = await access.members_without_2sv(ctx.db, workspace.id)
        if lacking:
            await ctx.say("Members without two-step verification, who cannot use its private "
                          f"repositories or push until they turn it on: {', '.join(lacking)}")
    return 0


async def _fresh_factor(ctx: Context, svc, workspace: workspaces.Workspace) -> None:
    """A stolen admin key alone must not open the workspace: a policy change needs a
    security-key login, a fresh two-step session for this key, or a code now. Recovery
    codes (typed, or behind the session) count only where the key alone cannot read them."""
    if ctx.identity.key_kind == "security-key":
        return
    guarded = await codes_guarded(ctx)
    found = await twosv_store.session(ctx.db, ctx.identity.key_fingerprint,
                                      ctx.identity.account_id)
    window = min(workspace.session_window, FRESH_SESSION) * 60
    if found is not None and found[0] <= ctx.clock() < found[0] + window:
        if guarded or found[1] in ("totp", "security-key"):
            return
    await second_factor(ctx, svc, "Verification code (to change the workspace's policy): ",
                        recovery_codes=guarded)


def _parse_window(args: list[str]) -> int | None:
    if not args:
        return None
    if len(args) == 2 and args[0] == "--window" and re.fullmatch(r"[0-9]{1,7}", args[1]):
        return int(args[1])
    raise Refusal("Invalid arguments: expected --window MINUTES")


async def run(ctx: Context, args: tuple[str, ...]) -> int:
    if len(args) == 2 and args[0] == "show":
        return await show(ctx, args[1])
    if len(args) >= 3 and args[0] == "require-2sv":
        return await require_2sv(ctx, args[1], args[2], _parse_window(list(args[3:])))
    raise usage(ctx, "workspace", "show NAME | require-2sv NAME on|off|session [--window MINUTES]",
                args, ("show", "require-2sv"))
