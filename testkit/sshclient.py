"""An asyncssh client for a test server, for what the `ssh` binary cannot do: many
sessions on one connection, stalled channels, exact bytes on a channel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh

from .server import Gateway


def connect(g: Gateway, key: Path, **options: Any) -> Any:  # awaitable, and `async with`
    """`async with connect(g, key) as conn:` logs in as git with KEY alone (no agent, no
    known_hosts, no ~/.ssh/config); OPTIONS go to asyncssh.connect."""
    return asyncssh.connect("127.0.0.1", g.port, username="git", client_keys=[str(key)],
                            known_hosts=None, agent_path=None, config=None, **options)
