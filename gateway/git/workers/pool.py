"""Git worker processes started ahead of time (setting `spare_workers`).

Starting Python and importing dulwich takes about 0.2 s, which a worker started per
request puts on every clone, fetch and ls-remote. The pool keeps a few workers that have
done their imports and wait for a job on stdin (see worker.py); a request takes one and
a replacement starts in the background. Each worker serves one job and exits.

Each worker also gets a pipe of its own (`--status-fd`, by number on its command line,
as is the operator's log, `--log-fd`), on which it tells the server what it did that the
Git stream does not say: which refs a push moved. What to do arrives as a Job (job.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING

from .job import Job
from .slots import WorkerSlots

if TYPE_CHECKING:
    from ...config import Settings

WORKER = [sys.executable, "-m", "gateway.git.workers.worker"]
MAX_STATUS = 64 * 1024  # a pipe's capacity: the worker writes less, in one write


class WorkerPool:
    def __init__(self, spare: int, log_fd: int) -> None:
        self.spare = spare
        self._log_fd = log_fd
        self._ready: list[asyncio.subprocess.Process] = []
        self._starting = 0
        # The loop holds tasks weakly: without a reference here a spare could be collected
        # before it starts.
        self._adding: set[asyncio.Future[None]] = set()
        self._closed = False

    async def start_job(self, job: Job) -> asyncio.subprocess.Process:
        """A worker serving `job`, its pipes ready to relay."""
        proc = None
        while self._ready and proc is None:
            candidate = self._ready.pop(0)
            if candidate.returncode is None:
                proc = candidate
            else:
                close_status(candidate)
        self._top_up()
        if proc is None:  # none ready (pool off, or all taken): start one for this job
            proc = await self._spawn()
        proc.stdin.write(job.header())
        return proc

    def _top_up(self) -> None:
        while not self._closed and len(self._ready) + self._starting < self.spare:
            self._starting += 1
            adding = asyncio.ensure_future(self._add_spare())
            self._adding.add(adding)
            adding.add_done_callback(self._adding.discard)

    async def _add_spare(self) -> None:
        try:
            proc = await self._spawn()
        except OSError:
            return  # out of processes or descriptors: requests will start their own
        finally:
            self._starting -= 1
        if self._closed:
            proc.kill()
            close_status(proc)
        else:
            self._ready.append(proc)

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
                env=_worker_env(),
            )
        except BaseException:
            os.close(status)
            raise
        finally:
            os.close(status_for_worker)
        proc.gateway_status_fd = status  # type: ignore[attr-defined]
        return proc

    def fill(self) -> None:
        """Start the spare workers (at server start)."""
        self._top_up()

    async def close(self) -> None:
        self._closed = True
        for proc in self._ready:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            close_status(proc)
        self._ready.clear()


class GitWorkers:
    """One process's Git workers: the pool of spares, the machine-wide worker slots
    (slots.py) and the descriptor workers write their log to."""

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


def read_status(proc: asyncio.subprocess.Process) -> dict:
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


def close_status(proc: asyncio.subprocess.Process) -> None:
    fd = getattr(proc, "gateway_status_fd", None)
    if fd is not None:
        proc.gateway_status_fd = None  # type: ignore[attr-defined]
        os.close(fd)


def _worker_env() -> dict[str, str]:
    """A worker's whole environment: PATH, and PYTHONPATH if the server has one (so that
    a checkout run with PYTHONPATH, as its tests are, runs its own code in the workers)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env
