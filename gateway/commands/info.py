"""The greeting, `help` and `whoami`."""

from __future__ import annotations

from . import twosv
from .context import Context


async def greeting(ctx: Context) -> int:
    who = ctx.identity
    await ctx.say(
        f'Hi {who.account}! You\'ve authenticated with key "{who.key_title}" '
        f"({who.key_fingerprint}). Shell access is disabled; use git to clone and push."
    )
    state = await twosv.service(ctx).state()
    await ctx.say(state.describe())
    if not state.enabled:
        await ctx.say(f"Turn it on with: {ctx.settings.ssh_command('2sv enable')}")
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
        f"  {s.ssh_command('recovery-codes [regenerate]')}\n"
        f"  {s.ssh_command('security-key list|add TITLE|remove FINGERPRINT')}\n"
        "Answers to questions are read from standard input, so they can be piped in."
    )
    return 0
