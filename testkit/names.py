"""Names and ports no other test takes, also when pytest-xdist runs several sessions at
once on this machine (tmux sessions, for one, are machine-wide)."""

from __future__ import annotations

import itertools
import os
import socket

_counter = itertools.count(1)
# gw0, gw1, ... under pytest-xdist; the pid alone may repeat modulo 1000.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "").replace("gw", "g")


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 1000}{_WORKER}-{next(_counter)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
