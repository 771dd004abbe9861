"""Typos get a suggestion, as `gateway config check` gives for settings (difflib)."""

from __future__ import annotations

import difflib

from ..errors import Refusal
from ..names import printable


def closest(word: str, choices) -> str | None:
    matches = difflib.get_close_matches(word, list(choices), n=1)
    return matches[0] if matches else None


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'X'?' for the closest choice, or '' when nothing is close."""
    match = closest(word, choices)
    return f" Did you mean {match!r}?" if match else ""


def usage(ctx, family: str, synopsis: str, args: tuple[str, ...], choices) -> Refusal:
    """The family's usage line; a mistyped subcommand (`2sv enabel`) is named first,
    with the closest one."""
    line = f"Usage: {ctx.settings.ssh_command(f'{family} {synopsis}')}"
    match = closest(args[0], choices) if args and args[0] not in choices else None
    if match:
        line = (
            f"Unknown command: {family} {printable(args[0], 60)}. Did you mean "
            f"'{family} {match}'? {line}"
        )
    return Refusal(line)
