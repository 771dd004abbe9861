"""Caps on the Git workers serving requests: one for the whole server and one for each
account (each access key counts on its own).

A request takes a slot of each kind before its worker starts and gives them back once
the worker has exited; one over a cap waits, costing no worker, for up to
`git_queue_timeout` seconds, then is refused. A slot is a one-byte lock on the file
DATA/workers.lock: the server's slots are bytes 0 to max_git_workers - 1, an account's
start at an offset from a hash of it. They are Linux's open-file-description locks
(F_OFD_SETLK): unlike flock they take byte ranges, so one file serves every account, and
unlike POSIX record locks two requests in one process conflict. Every process on the
data directory shares them (`gateway serve` and each `gateway shell` that sshd starts),
and a process that dies gives its slots back with its descriptors: nothing is left to
clean up, and the file stays empty. The zygote (zygote.py) is not counted: it serves no
request itself.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import struct
import time
from pathlib import Path

from ... import metrics
from ...errors import Refusal

POLL = 0.25  # seconds between tries while waiting: another process may free a slot


OWNERS_AT = 1 << 32  # accounts' slots start here, past any server cap
OWNER_SPAN = 1 << 20  # room for one account's cap (the setting allows up to 100,000)
# struct flock on Linux (64-bit): l_type, l_whence, padding, l_start, l_len, l_pid, padding
FLOCK = "hhxxxxqqixxxx"


class Full(Refusal):
    """A cap was still full at the end of the wait; `reason` is busy or per_account."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Held:
    """The slots one request holds; `release` gives them back (once)."""

    def __init__(self, slots: WorkerSlots, fd: int) -> None:
        self._slots = slots
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops its locks
            self._fd = None
            metrics.GIT_WORKERS_RUNNING.dec()
            self._slots.freed()


class WorkerSlots:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._freed = asyncio.Event()

    async def acquire(
        self, owner: str, owner_is_key: bool, total: int, per_owner: int, timeout: float
    ) -> Held:
        """Slots for one request of `owner` (an account or an access key; any string, only
        its hash is used); caps of 0 are off. Refusal after `timeout` seconds."""
        digest = int.from_bytes(hashlib.sha256(owner.encode()).digest()[:5], "big")
        owner_base = OWNERS_AT + digest * OWNER_SPAN
        fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        has_owner, has_total = not per_owner, not total
        deadline = time.monotonic() + timeout
        waiting = False
        try:
            while True:
                if not has_owner:
                    has_owner = _lock_one(fd, owner_base, per_owner)
                if has_owner and not has_total:
                    has_total = _lock_one(fd, 0, total)
                if has_owner and has_total:
                    held, fd = Held(self, fd), None  # handed over: not closed below
                    metrics.GIT_WORKERS_RUNNING.inc()
                    return held
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not waiting:
                    waiting = True
                    metrics.GIT_REQUESTS_QUEUED.inc()
                event = self._freed
                try:
                    await asyncio.wait_for(event.wait(), min(left, POLL))
                except TimeoutError:
                    pass
        finally:
            if waiting:
                metrics.GIT_REQUESTS_QUEUED.dec()
            if fd is not None:
                os.close(fd)
        if not has_owner:
            metrics.GIT_REQUESTS_REFUSED.labels("per_account").inc()
            who = "access key" if owner_is_key else "account"
            raise Full(
                f"Too many Git requests at once from this {who} ({per_owner} "
                "running); try again in a minute",
                "per_account",
            )
        metrics.GIT_REQUESTS_REFUSED.labels("busy").inc()
        raise Full(
            f"The server is busy: all {total} Git workers are in use; try again in a minute", "busy"
        )

    def freed(self) -> None:
        """Wake this process's waiters at once (others' find out at their next poll)."""
        self._freed.set()
        self._freed = asyncio.Event()


def _lock_one(fd: int, base: int, count: int) -> bool:
    """Take one of the bytes base .. base + count - 1 for `fd`, if one is free."""
    for offset in range(base, base + count):
        request = struct.pack(FLOCK, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
    return False
