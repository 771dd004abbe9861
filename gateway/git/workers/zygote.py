"""The zygote: one long-lived process, its imports done, that forks a worker per job.

    python -m gateway.git.workers.worker --zygote --log-fd N --socket-fd S

Starting Python and importing dulwich costs about 0.2 s of CPU, which a fresh worker per
request (or a spare that replaces the one a request took) puts on every ls-remote. The
zygote pays it once: it imports what a worker needs (dulwich, gateway.git.*; nothing of
asyncssh or aiosqlite), runs no threads and no event loop, and waits on a Unix socket
(SOCK_SEQPACKET: one message, one request) from the server, forked.py's other end.

A request is a message carrying a job id and, with SCM_RIGHTS, the worker's stdin,
stdout, stderr, status pipe and exit pipe. The zygote forks; the child becomes the worker
exactly as a fresh one would be (worker.main, the job header still arrives on its
stdin) and exits after one job. The zygote answers with the child's pid and a pidfd for
it (so the server can kill it without racing a reused pid), and, once it has reaped the
child, with its exit status. The zygote reaps its own children: a server that were a
subreaper would also inherit every orphaned hook process and would have to reap
processes asyncio's child watcher does not know about.

A child outlives the zygote (no parent-death signal: a zygote killed mid-request must not
take requests with it); it ends once its job ends, and since its pipes are the server's,
at its next read or write if the server is gone. For that case, when no zygote is left
to say how the child exited, the child writes its exit status (one byte) on the exit
pipe just before it exits.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys

MAX_MESSAGE = 4096
JOB_FDS = 5  # stdin, stdout, stderr, status pipe, exit pipe
# Where the child finds them (0-2 as any process; then the ones worker.main is told of).
LOG_FD, STATUS_FD, EXIT_FD = 3, 4, 5


def send_message(sock: socket.socket, data: bytes, fds: list[int], flags: int = 0) -> None:
    """One message with descriptors (socket.send_fds of Python 3.11 drops `flags`)."""
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], rights, flags)


def recv_message(sock: socket.socket, maxfds: int, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message and the descriptors it carried (socket.recv_fds drops `flags` too)."""
    fds = array.array("i")
    data, ancillary, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(maxfds * fds.itemsize), flags)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def serve_forever(sock_fd: int, log_fd: int) -> int:
    """The zygote's loop: fork a worker per request, reap children, report both; returns
    when the server closes its end of the socket (the server stopped)."""
    sock = socket.socket(fileno=sock_fd)
    sock.setblocking(True)
    os.chdir("/")  # hold no directory of the server's; a child goes to its repository
    children: dict[int, int] = {}  # pid -> job id
    # SIGCHLD wakes the select below through a pipe (no threads, no event loop).
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    # ^C at a terminal, or systemd's SIGTERM to the whole unit, is the server's to handle:
    # the zygote ends when the server closes the socket (or dies: PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Objects made so far are permanent: the collector leaves them (and so the pages they
    # are on) alone in every child, which keeps those pages shared copy-on-write.
    gc.freeze()
    try:
        while True:
            try:
                ready, _, _ = select.select([sock, wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 256):
                        pass
                _reap(sock, children)
            if sock in ready and not _fork_one(sock, children, (sock_fd, wake_r, wake_w), log_fd):
                return 0
    finally:
        signal.set_wakeup_fd(-1)


def _fork_one(
    sock: socket.socket, children: dict[int, int], own_fds: tuple[int, ...], log_fd: int
) -> bool:
    """Serve one request message; False once the server has gone."""
    try:
        data, fds = recv_message(sock, JOB_FDS)
    except OSError:
        return False
    if not data:
        for fd in fds:
            os.close(fd)
        return False
    try:
        job_id = int(json.loads(data)["id"])
    except (ValueError, KeyError, TypeError):
        job_id = -1
    if job_id < 0 or len(fds) != JOB_FDS:
        for fd in fds:
            os.close(fd)
        _send(sock, {"id": job_id, "error": "bad request"})
        return True
    try:
        pid = os.fork()
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(sock, {"id": job_id, "error": f"fork failed: {exc.strerror}"})
        return True
    if pid == 0:  # the child: never returns into this loop
        _become_worker(fds, log_fd, own_fds)
    for fd in fds:
        os.close(fd)
    children[pid] = job_id
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    _send(sock, {"id": job_id, "pid": pid}, [pidfd] if pidfd is not None else [])
    if pidfd is not None:
        os.close(pidfd)
    return True


def _reap(sock: socket.socket, children: dict[int, int]) -> None:
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        job_id = children.pop(pid, None)
        if job_id is not None:
            # Its peak memory as the kernel kept it (from its resident size at the fork),
            # for the server's git.done line: a worker often ends before a sampler sees it.
            exit_code = os.waitstatus_to_exitcode(status)
            _send(sock, {"id": job_id, "exit": exit_code, "peak_kib": usage.ru_maxrss})


def _send(sock: socket.socket, message: dict[str, object], fds: list[int] | None = None) -> None:
    # A server that has gone is found at the next recv; nothing to do about it here.
    with contextlib.suppress(OSError):
        send_message(sock, json.dumps(message).encode(), fds or [])


def _become_worker(fds: list[int], log_fd: int, own_fds: tuple[int, ...]) -> None:
    """In the forked child: hold only this job's descriptors, the signal dispositions of
    a freshly started worker, then run the worker and exit with its status."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _place_fds([*fds[:3], log_fd, *fds[3:]])
        from . import worker  # imported by the zygote already: no cost here

        code = worker.main(["--job", "--log-fd", str(LOG_FD), "--status-fd", str(STATUS_FD)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(EXIT_FD, bytes([code & 0xFF]))
        os._exit(code)


def _place_fds(sources: list[int]) -> None:
    """Descriptors `sources` at 0, 1, 2, LOG_FD, STATUS_FD, EXIT_FD, every other closed."""
    # Copies above the targets first, so that placing one never overwrites another.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, EXIT_FD + 1) for fd in sources]
    for target, fd in enumerate(moved):
        os.dup2(fd, target)  # inheritable, as pass_fds makes them for a fresh worker
    os.closerange(EXIT_FD + 1, os.sysconf("SC_OPEN_MAX"))
    os.set_inheritable(EXIT_FD, False)  # the worker's own: never a hook's
