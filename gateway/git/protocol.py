"""The Git protocol version a client asked for, from its GIT_PROTOCOL variable.

git sends `GIT_PROTOCOL=version=2` (an SSH `env` request; sshd passes it to the forced
command with `AcceptEnv GIT_PROTOCOL`). The value is the client's text: it is checked
here, once, at the edge, and only a well-formed list of `version=N` items travels further
(in the Job). Anything else counts as not sent, so the request is served as protocol v0,
which every client understands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

ENV_NAME = "GIT_PROTOCOL"
MAX_LENGTH = 64  # a few `version=N` items; anything longer is not from git
_VALUE = re.compile(r"version=[0-9]{1,3}(:version=[0-9]{1,3})*")


def from_environment(env: Mapping[str, str] | None) -> str:
    """The client's GIT_PROTOCOL if it is well formed, else "" (v0). Only this one
    variable is read; every other one the client sent is ignored."""
    value = (env or {}).get(ENV_NAME, "")
    if not isinstance(value, str) or len(value) > MAX_LENGTH or not _VALUE.fullmatch(value):
        return ""
    return value


def version(git_protocol: str) -> int:
    """The version to speak for a checked GIT_PROTOCOL value: the highest one asked for,
    as C git's determine_protocol_version_server() takes it (0 when none)."""
    if not _VALUE.fullmatch(git_protocol or ""):
        return 0
    return max(int(item.partition("=")[2]) for item in git_protocol.split(":"))
