"""SSH commands: parse the command line once, run the one command it names.

`request(line)` parses; `run(ctx, request)` runs. A refusal is raised as a `Refusal`,
which the session core (gateway/session.py) turns into one `ERROR: ` line on stderr.
"""

from __future__ import annotations

from ..errors import Refusal
from ..names import printable
from . import (
    branch_rule,
    git,
    info,
    login_keys,
    recovery,
    security_key,
    signing_keys,
    twosv,
    workspace,
)
from .context import Context
from .parse import GatewayCommand, GitRequest, Request, parse
from .suggest import did_you_mean

SIMPLE_COMMANDS = {"": info.greeting, "help": info.help_text, "whoami": info.whoami}
COMMANDS_WITH_ARGS = {
    "2sv": twosv.run,
    "recovery-codes": recovery.run,
    "security-key": security_key.run,
    "workspace": workspace.run,
    "keys": login_keys.run,
    "signing-key": signing_keys.run,
    "branch-rule": branch_rule.run,
}


SUBCOMMANDS = {
    "enable",
    "disable",
    "replace",
    "verify",
    "status",
    "regenerate",
    "list",
    "add",
    "remove",
    "show",
    "require-2sv",
    "sessions",
}


def request(line: str | None) -> Request:
    """The command line parsed, once per session; a line that does not parse becomes a
    request that carries its refusal (run raises it), so it is logged like any other."""
    try:
        command = parse(line)
    except Refusal as refusal:
        return Request(None, refusal, "invalid", "")
    verb, target = _describe(command)
    return Request(command, None, verb, target)


def _describe(command: GitRequest | GatewayCommand) -> tuple[str, str]:
    """(verb, target), safe to log and to use as a metric label: never free text a user
    typed (a code typed as an argument by mistake stays out of logs)."""
    if isinstance(command, GitRequest):
        return command.service, str(command.path)
    if command.name == "":
        return "greeting", ""
    if command.name not in COMMANDS_WITH_ARGS and command.name not in SIMPLE_COMMANDS:
        return "unknown", ""
    sub = command.args[0] if command.args and command.args[0] in SUBCOMMANDS else ""
    return (f"{command.name} {sub}".strip()), ""


async def run(ctx: Context, request: Request) -> int:
    """Run the command; a Refusal propagates to the caller (the session core)."""
    if request.refusal is not None:
        raise request.refusal
    if isinstance(request.command, GitRequest):
        return await git.run(ctx, request.command)
    assert request.command is not None  # no refusal: parsed
    return await _gateway_command(ctx, request.command)


async def _gateway_command(ctx: Context, command: GatewayCommand) -> int:
    if ctx.identity.is_access_key:
        if command.name == "":
            return await info.access_key_greeting(ctx)
        raise Refusal(
            "This is an access key: it can only be used with git, for the "
            "repository it is bound to."
        )
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
