"""Where each request's Git worker comes from (setting `spare_workers`).

Starting Python and importing dulwich takes about 0.2 s of CPU, which a worker started
per request puts on every clone, fetch and ls-remote. With `spare_workers` above 0 the
pool asks the zygote (zygote.py, forked.py), a process that has done those imports once,
to fork a worker per request; with 0 each request starts a fresh Python. Either way a
worker serves one job and exits.

Each worker also gets a pipe of its own (`--status-fd`, by number on its command line,
as is the operator's log, `--log-fd`), on which it tells the server what it did that the
Git stream does not say: which refs a push moved. What to do arrives as a Job (job.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from ...logs import log_event
from .forked import ForkedProcess, Zygote
from .job import Job
from .slots import WorkerSlots

if TYPE_CHECKING:
    from ...config import Settings

WORKER = [sys.executable, "-m", "gateway.git.workers.worker"]
MAX_STATUS = 64 * 1024  # a pipe's capacity: the worker writes less, in one write
log = logging.getLogger("gateway.git")
# What the relay drives: a fresh Python's asyncio process, or a zygote's child.
WorkerProcess = asyncio.subprocess.Process | ForkedProcess


def worker_environment() -> dict[str, str]:
    """A worker's whole environment: PATH, and the server's PYTHONPATH if it has one, so
    that the worker imports the very gateway package its server runs (a checkout run
    with PYTHONPATH, beside an editable install of another, would serve the other's)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


class WorkerPool:
    """Where a request's worker comes from: forked by the zygote (`spare_workers` 1 or
    more: the zygote is started with the server), or a fresh Python per request (0: the
    old path, kept for `gateway shell` under OpenSSH, as the fallback, and to compare)."""

    def __init__(self, spare: int, log_fd: int) -> None:
        self.spare = spare
        self._log_fd = log_fd
        self._zygote = Zygote(WORKER, log_fd, worker_environment)
        self._starting: set[asyncio.Future[None]] = set()  # held: the loop holds tasks weakly

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid

    async def start_job(self, job: Job) -> WorkerProcess:
        """A worker serving `job`, its pipes ready to relay."""
        proc: WorkerProcess | None = None
        if self.spare > 0:
            try:
                proc = await self._zygote.fork()
            except OSError:
                proc = None  # the zygote is gone or cannot fork: a fresh Python serves
        if proc is None:
            proc = await self._spawn()
        proc.stdin.write(job.header())
        return proc

    async def _spawn(self) -> asyncio.subprocess.Process:
        status, status_for_worker = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *WORKER,
                "--job",
                "--log-fd",
                str(self._log_fd),
                "--status-fd",
                str(status_for_worker),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(self._log_fd, status_for_worker),
                env=worker_environment(),
            )
        except BaseException:
            os.close(status)
            raise
        finally:
            os.close(status_for_worker)
        proc.gateway_status_fd = status  # type: ignore[attr-defined]
        return proc

    def fill(self) -> None:
        """Start the zygote (at server start), in the background."""
        if self.spare > 0:
            starting = asyncio.ensure_future(self._start_zygote())
            self._starting.add(starting)
            starting.add_done_callback(self._starting.discard)

    async def _start_zygote(self) -> None:
        try:
            await self._zygote.start()
        except OSError as exc:  # out of processes or descriptors: the first request retries
            log_event(log, "git.zygote_failed", logging.WARNING, error=str(exc))

    async def close(self) -> None:
        await self._zygote.close()


class GitWorkers:
    """One process's Git workers: the pool (a zygote, or fresh Pythons), the machine-wide
    worker slots (slots.py) and the descriptor workers write their log to."""

    def __init__(self, settings: Settings, log_fd: int | None = None) -> None:
        self.settings = settings  # SIGHUP changes it in place: the pool follows
        # By default a copy of the server's stderr: the user's stderr is the session's.
        self.log_fd = os.dup(2) if log_fd is None else log_fd
        self._pool = WorkerPool(settings.spare_workers, self.log_fd)
        self.slots = WorkerSlots(settings.data_dir / "workers.lock")

    @property
    def pool(self) -> WorkerPool:
        self._pool.spare = self.settings.spare_workers
        return self._pool


def read_status(proc: WorkerProcess) -> dict:
    """What the worker reported on its status pipe (it has exited: the pipe holds all
    of it), then the pipe is closed. {} if it reported nothing."""
    fd = getattr(proc, "gateway_status_fd", None)
    if fd is None:
        return {}
    data = b""
    try:
        os.set_blocking(fd, False)
        while len(data) < MAX_STATUS and (chunk := os.read(fd, 65536)):
            data += chunk
    except OSError:
        pass  # nothing more there (a child still holding the pipe open)
    finally:
        close_status(proc)
    try:
        status = json.loads(data.decode("utf-8"))
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def close_status(proc: WorkerProcess) -> None:
    fd = getattr(proc, "gateway_status_fd", None)
    if fd is not None:
        proc.gateway_status_fd = None  # type: ignore[attr-defined]
        os.close(fd)
