"""What the tests, the benchmarks (bench/) and the adversarial suite (adversarial/) share:
a driver for a real `gateway serve`, keys, plain git, pkt-lines, waiting, a fake clock
and in-process SSH commands. Not shipped: `pip install` takes `gateway*` only.

Import from the modules (`from testkit.server import Gateway`) or from here.
"""

from __future__ import annotations

from .clock import Clock
from .keys import User, fingerprint, make_key
from .localgit import git_workers, local_git
from .names import free_port, unique
from .pktline import FLUSH, pkt
from .server import BACKOFF_SECONDS, GATEWAY, Gateway
from .waiting import wait_for

__all__ = [
    "BACKOFF_SECONDS",
    "FLUSH",
    "GATEWAY",
    "Clock",
    "Gateway",
    "User",
    "fingerprint",
    "free_port",
    "git_workers",
    "local_git",
    "make_key",
    "pkt",
    "unique",
    "wait_for",
]
