"""One housekeeper per repository: an flock on `gateway-housekeeping.lock`.

The kernel drops an flock when its holder dies, so a housekeeper killed with SIGKILL
cannot block the next one. The file also holds the holder's pid, emptied on a clean
release: a pid found there by the next holder is a killed housekeeper's (a stale lock),
and is reported once and cleared.
"""

from __future__ import annotations

import fcntl
import os

FILE = "gateway-housekeeping.lock"


class Busy(Exception):
    """Another housekeeper holds the repository."""


class HousekeepingLock:
    def __init__(self, repo_dir: str) -> None:
        self.path = os.path.join(repo_dir, FILE)
        self.fd: int | None = None
        self.stale_pid: int | None = None  # a killed housekeeper's, found on taking it

    def acquire(self) -> HousekeepingLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(self.path) from None
        previous = os.pread(fd, 32, 0).strip()
        if previous.isdigit() and int(previous) != os.getpid():
            self.stale_pid = int(previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode() + b"\n", 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> HousekeepingLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
