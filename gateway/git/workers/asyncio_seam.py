"""The one private asyncio name the gateway uses, with its reason.

`asyncio.subprocess.Process` has no public way to close a child's pipes: its
`_transport` does. The relay (commands/git.py) needs it because Python 3.11's
`Process.wait()` returns only once every pipe has reached EOF, and after a client is
cut off mid-clone nothing reads the worker's output to its end (a session and its pipes
were left waiting for ever, seen in the adversarial suite). `tests/test_seam_asyncio.py`
checks it is still there.
"""

from __future__ import annotations

import asyncio

from .forked import ForkedProcess


def close_pipes(proc: asyncio.subprocess.Process | ForkedProcess) -> None:
    """Close every pipe to and from `proc`, so that a later `wait()` does not wait for EOF."""
    if isinstance(proc, ForkedProcess):
        proc.close_pipes()  # its own pipes: no private name needed
    else:
        proc._transport.close()  # type: ignore[attr-defined]
