"""SSH commands: parse the command line once, run the one command it names.

A refusal becomes one `ERROR: ` line on stderr and a non-zero status.
"""

from __future__ import annotations

from ..errors import Refusal
from ..names import printable
from . import git, info, login_keys, recovery, security_key, twosv, workspace
from .context import Context
from .parse import GatewayCommand, GitRequest, parse
from .suggest import did_you_mean

SIMPLE_COMMANDS = {"": info.greeting, "help": info.help_text, "whoami": info.whoami}
COMMANDS_WITH_ARGS = {
    "2sv": twosv.run, "recovery-codes": recovery.run, "security-key": security_key.run,
    "workspace": workspace.run, "keys": login_keys.run,
}


SUBCOMMANDS = {"enable", "disable", "replace", "verify", "status", "regenerate", "list", "add",
               "remove", "show", "require-2sv"}


def describe(line: str | None) -> tuple[str, str]:
    """(verb, target) of a command line, safe to log and to use as a metric label: never
    free text a user typed (a code typed as an argument by mistake stays out of logs)."""
    try:
        request = parse(line)
    except Refusal:
        return "invalid", ""
    if isinstance(request, GitRequest):
        return request.service, str(request.path)
    if request.name == "":
        return "greeting", ""
    if request.name not in COMMANDS_WITH_ARGS and request.name not in SIMPLE_COMMANDS:
        return "unknown", ""
    sub = request.args[0] if request.args and request.args[0] in SUBCOMMANDS else ""
    return (f"{request.name} {sub}".strip()), ""


def is_git(line: str | None) -> bool:
    try:
        return isinstance(parse(line), GitRequest)
    except Refusal:
        return False


async def run(ctx: Context, line: str | None) -> int:
    try:
        request = parse(line)
        if isinstance(request, GitRequest):
            return await git.run(ctx, request)
        return await _gateway_command(ctx, request)
    except Refusal as refusal:
        ctx.stderr.write(f"ERROR: {refusal.message}\n".encode())
        await ctx.stderr.drain()
        return refusal.status


async def _gateway_command(ctx: Context, command: GatewayCommand) -> int:
    if ctx.identity.is_access_key:
        if command.name == "":
            return await info.access_key_greeting(ctx)
        raise Refusal("This is an access key: it can only be used with git, for the "
                      "repository it is bound to.")
    if command.name in COMMANDS_WITH_ARGS:
        return await COMMANDS_WITH_ARGS[command.name](ctx, command.args)
    handler = SIMPLE_COMMANDS.get(command.name)
    if handler is not None:
        if command.args:
            raise Refusal(f"Invalid command: {command.name or 'the greeting'} takes no arguments")
        return await handler(ctx)
    # Suggest only what people type; git types the Git verbs itself.
    hint = did_you_mean(command.name, [c for c in (*SIMPLE_COMMANDS, *COMMANDS_WITH_ARGS) if c])
    raise Refusal(
        f"Unknown command: {printable(command.name, 60)}{'.' + hint if hint else ''}\n"
        f"Run '{ctx.settings.ssh_command('help')}' to see the commands."
    )
