"""Caps on the Git workers serving requests: one for the whole server and one for each
account (each access key counts on its own).

A request takes a slot of each kind before its worker starts and gives them back once
the worker has exited; one over a cap waits, costing no worker, for up to
`git_queue_timeout` seconds, then is refused. A slot is a lock file in DATA/workers/
held with flock, so every process on the data directory shares the caps (`gateway serve`
and each `gateway shell` that sshd starts) and a process that dies gives its slots back
with its descriptors; nothing is left to clean up. Spare workers (pool.py) are not
counted: they are bounded by `spare_workers`.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import time
from pathlib import Path

from .. import metrics
from ..errors import Refusal

POLL = 0.25  # seconds between tries while waiting: another process may free a slot


class Held:
    """The slots one request holds; `release` gives them back (once)."""

    def __init__(self, slots: "WorkerSlots", fds: list[int]) -> None:
        self._slots = slots
        self._fds = fds

    def release(self) -> None:
        if self._fds:
            for fd in self._fds:
                os.close(fd)  # closing the descriptor drops its flock
            self._fds = []
            metrics.GIT_WORKERS_RUNNING.dec()
            self._slots.freed()


class WorkerSlots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._freed = asyncio.Event()

    async def acquire(self, owner: str, owner_is_key: bool, total: int, per_owner: int,
                      timeout: float) -> Held:
        """Slots for one request of `owner` (an account or an access key; any string, only
        its hash reaches the disk); caps of 0 are off. Refusal after `timeout` seconds."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        tag = hashlib.sha256(owner.encode()).hexdigest()[:16]
        owner_fd = None if per_owner else -1
        total_fd = None if total else -1
        deadline = time.monotonic() + timeout
        waiting = False
        try:
            while True:
                if owner_fd is None:
                    owner_fd = self._take(tag, per_owner)
                if owner_fd is not None and total_fd is None:
                    total_fd = self._take("all", total)
                if owner_fd is not None and total_fd is not None:
                    fds = [fd for fd in (owner_fd, total_fd) if fd >= 0]
                    owner_fd = total_fd = None  # handed over: not closed below
                    metrics.GIT_WORKERS_RUNNING.inc()
                    return Held(self, fds)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not waiting:
                    waiting = True
                    metrics.GIT_REQUESTS_QUEUED.inc()
                event = self._freed
                try:
                    await asyncio.wait_for(event.wait(), min(left, POLL))
                except asyncio.TimeoutError:
                    pass
        finally:
            if waiting:
                metrics.GIT_REQUESTS_QUEUED.dec()
            for fd in (owner_fd, total_fd):
                if fd is not None and fd >= 0:
                    os.close(fd)
        if owner_fd is None:
            metrics.GIT_REQUESTS_REFUSED.labels("per_account").inc()
            who = "access key" if owner_is_key else "account"
            raise Refusal(f"Too many Git requests at once from this {who} ({per_owner} "
                          "running); try again in a minute")
        metrics.GIT_REQUESTS_REFUSED.labels("busy").inc()
        raise Refusal(f"The server is busy: all {total} Git workers are in use; "
                      "try again in a minute")

    def _take(self, name: str, count: int) -> int | None:
        """A descriptor holding one of the `count` lock files NAME.0 .. NAME.count-1."""
        for index in range(count):
            fd = os.open(self.directory / f"{name}.{index}",
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
            except BaseException:
                os.close(fd)
                raise
        return None

    def freed(self) -> None:
        """Wake this process's waiters at once (others' find out at their next poll)."""
        self._freed.set()
        self._freed = asyncio.Event()
