"""Parsing the command line a client sends, once, into a typed request."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..errors import Refusal
from ..names import RepoPath, client_repo_path, printable

MAX_COMMAND_LENGTH = 4096
GIT_SERVICES = ("git-upload-pack", "git-receive-pack", "git-upload-archive")


@dataclass(frozen=True)
class GitRequest:
    service: str  # one of GIT_SERVICES
    path: RepoPath


@dataclass(frozen=True)
class GatewayCommand:
    name: str
    args: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    """A session's command line, parsed once: what to run (or the refusal of a line that
    does not parse), and the verb and target that logs and metrics may show."""

    command: GitRequest | GatewayCommand | None  # None: `refusal` says why
    refusal: Refusal | None
    verb: str  # safe to log and to use as a metric label: never free text a user typed
    target: str

    @property
    def is_git(self) -> bool:
        return isinstance(self.command, GitRequest)


def parse(line: str | None) -> GitRequest | GatewayCommand:
    """`None` or an empty line is the greeting (a shell request or a bare `ssh`)."""
    if line is None or not line.strip():
        return GatewayCommand("", ())
    if len(line) > MAX_COMMAND_LENGTH:
        raise Refusal("Invalid command: too long")
    if any("\udc80" <= ch <= "\udcff" for ch in line):
        raise Refusal("Invalid command: not valid UTF-8")
    if any(not ch.isprintable() for ch in line):
        raise Refusal("Invalid command: control characters are not allowed")
    try:
        words = shlex.split(line)
    except ValueError:
        raise Refusal("Invalid command: unbalanced quotes") from None
    if not words:
        return GatewayCommand("", ())
    verb, args = words[0], words[1:]
    if verb == "git" and args and f"git-{args[0]}" in GIT_SERVICES:
        verb, args = f"git-{args[0]}", args[1:]
    if verb in GIT_SERVICES:
        if len(args) != 1:
            raise Refusal(f"Invalid command: {verb} takes exactly one repository path")
        path = client_repo_path(args[0])
        if path is None:
            raise Refusal(
                f"Invalid repository path: {printable(args[0], 60)!r} (expected WORKSPACE/NAME.git)"
            )
        return GitRequest(verb, path)
    return GatewayCommand(verb, tuple(args))
