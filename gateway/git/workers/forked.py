"""The server's side of the zygote (zygote.py): asks it for a worker per job and gives
the relay something that behaves as an asyncio.subprocess.Process does.

The server makes the worker's pipes itself and passes the worker's ends over the socket
(SCM_RIGHTS); the zygote forks and answers with the child's pid and a pidfd, then, once
it has reaped the child, its exit status. `kill` signals through the pidfd, so a pid
reused after the child was reaped is never hit.

If the zygote dies, the requests its children serve go on (their pipes are the server's):
each then learns its child's end from the pidfd and its status from the exit pipe the
child writes one byte to. The next request starts a new zygote (and a request that could
not get a worker from it gets a fresh Python instead: pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Callable

from ...logs import log_event
from .zygote import JOB_FDS, recv_message, send_message

log = logging.getLogger("gateway.git")

FORK_TIMEOUT = 10  # seconds for the zygote to answer with a pid
SEND_TIMEOUT = 5  # seconds for room in the socket's buffer
STREAM_LIMIT = 2**16  # as asyncio.subprocess's pipes


class ZygoteGone(OSError):
    """No worker from the zygote for this job (it died, or could not fork)."""


class ForkedProcess:
    """A worker forked by the zygote, with the part of asyncio.subprocess.Process's
    interface the relay uses: stdin, stdout, stderr, pid, returncode, wait, kill."""

    def __init__(self, status_fd: int, exit_fd: int) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter
        self.stdout: asyncio.StreamReader
        self.stderr: asyncio.StreamReader
        self.gateway_status_fd: int | None = status_fd  # read by pool.read_status
        self._exit_fd: int | None = exit_fd
        self._pidfd: int | None = None
        self._exited = asyncio.Event()
        self.transports: list[asyncio.BaseTransport] = []
        self.peak_kib: int | None = None  # the worker's peak resident memory, once reaped

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close_pipes(self) -> None:
        for transport in self.transports:
            transport.close()

    # --- told by the Zygote -------------------------------------------------------------

    def started(self, pid: int, pidfd: int | None) -> None:
        self.pid, self._pidfd = pid, pidfd

    def exited(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        for name in ("_pidfd", "_exit_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                os.close(fd)
        self._exited.set()

    def orphaned(self) -> None:
        """The zygote is gone: the child's end from its pidfd, its status from itself."""
        if self._pidfd is None:
            self.exited(-signal.SIGKILL)
            return
        loop = asyncio.get_running_loop()
        pidfd = self._pidfd

        def ended() -> None:
            loop.remove_reader(pidfd)
            code = -signal.SIGKILL  # said nothing: killed, or it crashed
            if self._exit_fd is not None:
                with contextlib.suppress(OSError):
                    os.set_blocking(self._exit_fd, False)
                    if said := os.read(self._exit_fd, 1):
                        code = said[0]
            self.exited(code)

        loop.add_reader(pidfd, ended)


class Zygote:
    def __init__(self, command: list[str], log_fd: int, env: Callable[[], dict[str, str]]) -> None:
        self._command = command
        self._log_fd = log_fd
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._starting: asyncio.Future[None] | None = None
        self._waiting: dict[int, asyncio.Future[None]] = {}  # job id -> its pid's arrival
        self._running: dict[int, ForkedProcess] = {}
        self._next_id = 0
        self._closed = False
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._sock is not None else None

    async def start(self) -> None:
        """Start the zygote if none is running (at server start, and after one died)."""
        if self._sock is not None:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(lambda _: setattr(self, "_starting", None))
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command,
                "--zygote",
                "--log-fd",
                str(self._log_fd),
                "--socket-fd",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=self._log_fd,
                pass_fds=(self._log_fd, theirs.fileno()),
                env=self._env(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._proc, self._sock = proc, ours
        asyncio.get_running_loop().add_reader(ours, self._readable)
        self._watch = asyncio.ensure_future(self._watch_exit(proc, ours))

    async def fork(self) -> ForkedProcess:
        """A worker of its own for one job, its pipes ready; ZygoteGone if none."""
        if self._closed:
            raise ZygoteGone("the server is stopping")
        await self.start()
        sock = self._sock
        if sock is None:
            raise ZygoteGone("the zygote did not start")
        job_id, self._next_id = self._next_id, self._next_id + 1
        pipes = [os.pipe() for _ in range(JOB_FDS)]  # stdin, stdout, stderr, status, exit
        ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0], pipes[4][0]]
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1], pipes[4][1]]
        proc = ForkedProcess(status_fd=ours[3], exit_fd=ours[4])
        arrived = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = arrived
        self._running[job_id] = proc
        try:
            try:
                await self._send(sock, json.dumps({"id": job_id}).encode(), theirs)
            finally:
                for fd in theirs:
                    os.close(fd)
            await asyncio.wait_for(arrived, FORK_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            self._waiting.pop(job_id, None)
            self._running.pop(job_id, None)
            proc.exited(-signal.SIGKILL)
            for fd in ours[:3]:
                os.close(fd)
            os.close(ours[3])
            raise ZygoteGone(str(exc) or "no answer from the zygote") from None
        except BaseException:
            # Cancelled (the session ended): the child, if forked, gets EOF on stdin and
            # exits without a job.
            self._waiting.pop(job_id, None)
            for fd in ours[:4]:
                os.close(fd)
            proc.gateway_status_fd = None
            raise
        await _connect(proc, ours[0], ours[1], ours[2])
        return proc

    async def _send(self, sock: socket.socket, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_TIMEOUT
        while True:
            try:
                send_message(sock, data, fds, socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data, fds = recv_message(sock, 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost()
                return
            self._message(data, fds)

    def _message(self, data: bytes, fds: list[int]) -> None:
        try:
            message = json.loads(data)
            job_id = int(message["id"])
        except (ValueError, KeyError, TypeError):
            message, job_id = {}, -1
        proc = self._running.get(job_id)
        arrived = self._waiting.pop(job_id, None)
        pidfd = fds[0] if fds else None
        if "pid" in message and proc is not None:
            proc.started(int(message["pid"]), pidfd)
            if arrived is not None and not arrived.done():
                arrived.set_result(None)
            elif arrived is None:  # its request gave up waiting: nobody will read it
                proc.kill()
            return
        if pidfd is not None:
            os.close(pidfd)
        if "exit" in message and proc is not None:
            del self._running[job_id]
            if isinstance(message.get("peak_kib"), int):
                proc.peak_kib = message["peak_kib"]
            proc.exited(int(message["exit"]))
        elif "error" in message and arrived is not None and not arrived.done():
            arrived.set_exception(ZygoteGone(str(message["error"])[:200]))

    async def _watch_exit(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        """One line for the operator when a zygote dies (not at server stop)."""
        status = await proc.wait()
        if self._sock is sock:
            self._lost()
        if not self._closed:
            log_event(log, "git.zygote_lost", logging.WARNING, pid=proc.pid, status=status)

    def _lost(self) -> None:
        """The zygote has gone (its socket closed): let its children's requests go on."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock)
        sock.close()
        for arrived in self._waiting.values():
            if not arrived.done():
                arrived.set_exception(ZygoteGone("the zygote exited"))
        self._waiting.clear()
        running, self._running = self._running, {}
        for proc in running.values():
            proc.orphaned()

    async def close(self) -> None:
        """At server stop: the zygote exits once its socket closes."""
        self._closed = True
        proc = self._proc
        self._lost()
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch


async def _connect(proc: ForkedProcess, stdin: int, stdout: int, stderr: int) -> None:
    """The server's ends of the worker's pipes as asyncio streams."""
    loop = asyncio.get_running_loop()
    files = [open(stdin, "wb", buffering=0), open(stdout, "rb", buffering=0)]  # noqa: SIM115 (the transports close them)
    files.append(open(stderr, "rb", buffering=0))  # noqa: SIM115
    readers = []
    for pipe in files[1:]:
        reader = asyncio.StreamReader(limit=STREAM_LIMIT)
        transport, _ = await loop.connect_read_pipe(
            lambda reader=reader: asyncio.StreamReaderProtocol(reader), pipe
        )
        proc.transports.append(transport)
        readers.append(reader)
    # A StreamReaderProtocol is the public protocol that gives a writer flow control.
    wtransport, wprotocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), files[0]
    )
    proc.transports.append(wtransport)
    proc.stdin = asyncio.StreamWriter(wtransport, wprotocol, None, loop)
    proc.stdout, proc.stderr = readers
