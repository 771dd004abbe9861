"""A seam for the tests: the housekeeper killed, or the disk full, at a named point.

`GATEWAY_HOUSEKEEPING_FAULT=kill:POINT` SIGKILLs the housekeeper when it reaches POINT;
`enospc:POINT` makes the write at POINT fail as a full disk does. Unset in production.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "GATEWAY_HOUSEKEEPING_FAULT"


def reached(point: str) -> None:
    fault = os.environ.get(ENV, "")
    kind, _, where = fault.partition(":")
    if where != point:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif kind == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
