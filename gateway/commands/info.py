"""The greeting, `help` and `whoami`."""

from __future__ import annotations

from .context import Context


async def greeting(ctx: Context) -> int:
    who = ctx.identity
    await ctx.say(
        f'Hi {who.account}! You\'ve authenticated with key "{who.key_title}" '
        f"({who.key_fingerprint}). Shell access is disabled; use git to clone and push."
    )
    await ctx.say("Two-step verification is disabled for your account.")
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
        f"  {s.ssh_command('whoami')}     the account of the key you used"
    )
    return 0
