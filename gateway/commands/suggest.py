"""Typos get a suggestion, as `gateway config check` gives for settings (difflib)."""

from __future__ import annotations

import difflib

from ..errors import Refusal
from ..names import printable


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'X'?' for the closest choice, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return f" Did you mean {matches[0]!r}?" if matches else ""


def usage(ctx, family: str, synopsis: str, args: tuple[str, ...], choices) -> Refusal:
    """The family's usage line; a mistyped subcommand (`2sv enabel`) is named first,
    with the closest one."""
    line = f"Usage: {ctx.settings.ssh_command(f'{family} {synopsis}')}"
    if args and args[0] not in choices:
        hint = did_you_mean(args[0], choices)
        if hint:
            closest = hint[len(" Did you mean '"):-len("'?")]
            line = (f"Unknown command: {family} {printable(args[0], 60)}. Did you mean "
                    f"'{family} {closest}'? {line}")
    return Refusal(line)
