"""The greeting, `help` and `whoami`."""

from __future__ import annotations

from .. import access, decision, expiry, wording
from ..kinds import Requirement
from ..names import shown
from ..store import keys, repos, workspaces
from . import twosv
from .context import Context


async def greeting(ctx: Context) -> int:
    who = ctx.identity
    await ctx.say(
        f'Hi {who.account}! You\'ve authenticated with key "{shown(who.key_title)}" '
        f"({who.key_fingerprint}). Shell access is disabled; use git to clone and push."
    )
    for line in await key_lifetime(ctx):
        await ctx.say(line)
    state = await twosv.service(ctx).state()
    for line in wording.twosv_state(state, ctx.settings.ssh_command):
        await ctx.say(line)
    for line in await unmet_policies(ctx, state.enabled):
        await ctx.say(line)
    return 0


async def key_lifetime(ctx: Context) -> list[str]:
    """When the key (or certificate) in use stops working, and which of the account's
    other keys already have."""
    who, now = ctx.identity, ctx.clock()
    if who.certificate is not None:
        return [
            f"You logged in with {who.certificate.label} (principal "
            f'"{shown(who.certificate.principal)}"), valid until '
            f"{expiry.shown_time(who.certificate.valid_before)}."
        ]
    lines = []
    for key in await keys.list_for(ctx.db, who.account):
        if key.fingerprint == who.key_fingerprint and key.expires_at is not None:
            lines.append(f"This key expires on {expiry.shown_time(key.expires_at)}.")
        elif key.fingerprint != who.key_fingerprint and key.expired(now):
            lines.append(
                f'Your key "{shown(key.title)}" ({key.fingerprint}) expired on '
                f"{expiry.shown_time(key.expires_at or 0)}."
            )
    return lines


async def unmet_policies(ctx: Context, twosv_enabled: bool) -> list[str]:
    """One line per workspace whose 2SV policy this account does not meet."""
    facts = await access.twosv_facts(ctx.db, ctx.identity)
    lines = []
    for workspace, _role in await workspaces.memberships(ctx.db, ctx.identity.account_id):
        if workspace.require_2sv == Requirement.OFF:
            continue
        if not twosv_enabled:
            lines.append(
                f'Workspace "{workspace.name}" requires two-step verification: '
                f"{ctx.settings.ssh_command('2sv enable')}"
            )
        elif workspace.require_2sv == Requirement.SESSION:
            as_repo = decision.RepoFacts("", True, session_window_minutes=workspace.session_window)
            if not decision.session_open(ctx.identity, facts, as_repo, ctx.clock()):
                lines.append(
                    f'Workspace "{workspace.name}" requires a verified two-step session: '
                    f"{ctx.settings.ssh_command('2sv verify')}"
                )
    return lines


async def access_key_greeting(ctx: Context) -> int:
    who = ctx.identity
    repo = await repos.find_by_id(ctx.db, who.access_repo_id)
    mode = "read and write" if who.access_write else "read-only"
    await ctx.say(
        f'Hi! You\'ve authenticated with access key "{shown(who.key_title)}" '
        f"({who.key_fingerprint}) for {repo.full_name if repo else '?'} ({mode}). "
        "Shell access is disabled; use git."
    )
    return 0


async def whoami(ctx: Context) -> int:
    await ctx.say(ctx.identity.account)
    return 0


async def help_text(ctx: Context) -> int:
    s = ctx.settings
    host = f"ssh://{s.ssh_user}@{s.public_host}:{s.public_port}"
    await ctx.say(
        "Commands:\n"
        f"  git clone {host}/WORKSPACE/NAME.git    also fetch, pull, push, ls-remote\n"
        f"  git archive --remote={host}/WORKSPACE/NAME.git HEAD\n"
        f"  {s.ssh_command('')}            the greeting\n"
        f"  {s.ssh_command('help')}       this list\n"
        f"  {s.ssh_command('whoami')}     the account of the key you used\n"
        f"  {s.ssh_command('2sv status|enable|disable|replace|verify')}\n"
        f"  {s.ssh_command('2sv sessions [revoke]')}   the open two-step sessions of your keys\n"
        f"  {s.ssh_command('recovery-codes [regenerate]')}\n"
        f"  {s.ssh_command('security-key list|add TITLE|remove FINGERPRINT')}\n"
        f"  {s.ssh_command('keys [remove FINGERPRINT]')}   the keys that log in to your account\n"
        f"  {s.ssh_command('signing-key list|add TITLE < KEY.pub|remove FINGERPRINT|TITLE')}\n"
        f"  {s.ssh_command('workspace show NAME | require-2sv NAME on|off|session [--dry-run]')}\n"
        f"  {s.ssh_command('branch-rule list|add|remove WORKSPACE[/NAME] [PATTERN] [options]')}"
        "   (admins; see the README)\n"
        "Answers to questions are read from standard input, so they can be piped in."
    )
    return 0
