"""Runs one Git service for one connection, in its own process.

    python -m gateway.git.workers.worker SERVICE REPO_DIR
    python -m gateway.git.workers.worker --job --log-fd N --status-fd M
                                            (the job arrives on stdin; see pool.py)
    python -m gateway.git.workers.worker --zygote --log-fd N --socket-fd S
                                            (forks a worker per job; see zygote.py)

The server gives it a job only after the identity and the access decision are settled,
with a repository path it resolved itself; this process only speaks Git on stdin/stdout.
With `--job` it is started ahead of time with its imports done, and waits for a job
header (job.py: service, repository, the facts for hooks, the settings) before the Git
bytes; it serves one job and exits, so no state passes from one request to the next.
Started with SERVICE REPO_DIR (by hand, by the benchmarks), it serves with the Job's
defaults: no hooks, no limits, no log. While serving, its working
directory is the repository.
dulwich is synchronous, and a process of its own keeps it off the server's event loop,
lets two clones use two cores, and frees every file descriptor and mmap when it ends.

Output is buffered and written in large chunks, and flushed before every blocking read:
otherwise the client waits for a reply that sits in our buffer.

Once it has its job, the worker limits its own memory (setting `worker_memory_limit`,
as RLIMIT_DATA: the heap and private anonymous mappings, which is where inflated objects
live; the read-only maps of pack files are not counted, so a large repository's packs
do not use up the limit). Running into it is a MemoryError: one ERROR line for the user,
one log line for the operator.
"""

from __future__ import annotations

import ctypes
import io
import logging
import os
import resource
import signal
import sys
from typing import BinaryIO

from dulwich.errors import GitProtocolError, HangupException
from dulwich.protocol import ReceivableProtocol

from ...logs import StructuredFormatter, log_event
from .. import protocol
from ..handlers import HANDLERS, open_repo
from ..upload.archive import ArchiveRefused
from ..upload.refusal import RequestRefused
from ..upload.shallow import ShallowError
from ..upload.storedpacks import PackError
from .job import BadJob, Job

OUTPUT_BUFFER = 64 * 1024
PR_SET_PDEATHSIG = 1

log = logging.getLogger("gateway.git")


def serve(job: Job, stdin: BinaryIO, stdout: BinaryIO, status_fd: int | None = None) -> None:
    """Serve one request; raises on protocol errors. Always closes the repository."""
    out = io.BufferedWriter(stdout, buffer_size=OUTPUT_BUFFER)

    def recv(size: int) -> bytes:
        out.flush()
        return stdin.read(size)

    repo = open_repo(job.repo_dir)
    try:
        proto = ReceivableProtocol(recv, out.write)
        try:
            HANDLERS[job.service](repo, proto, job, status_fd).handle()
        except RequestRefused:
            out.flush()  # the client's ERR line
            raise
        out.flush()
    finally:
        repo.close()


def main(argv: list[str]) -> int:
    status_fd: int | None = None
    if argv[:1] == ["--zygote"]:
        return _zygote(argv[1:])
    if argv[:1] == ["--job"]:
        try:
            log_fd, status_fd = _descriptors(argv[1:])
            job = Job.from_header(io.FileIO(0, "rb", closefd=False))
        except (BadJob, ValueError) as exc:
            print(f"ERROR: bad worker invocation: {exc}", file=sys.stderr)
            return 2
        if job is None:
            return 0  # the server stopped before giving this worker a job
        _setup_logging(job, log_fd)
    elif len(argv) == 2:  # as C git's own: by hand, or as `git fetch --upload-pack`
        job = Job(argv[0], argv[1], git_protocol=protocol.from_environment(os.environ))
        _setup_logging(job, None)
    else:
        job = None
    if job is None or job.service not in HANDLERS:
        print("ERROR: bad worker invocation", file=sys.stderr)
        return 2
    service, repo_dir = job.service, job.repo_dir
    limit_memory(job.worker_memory_limit)
    os.chdir(repo_dir)
    # Unbuffered raw stdin: a read returns what is there, so no pkt-line waits in a buffer.
    stdin = io.FileIO(0, "rb", closefd=False)
    stdout = io.FileIO(1, "wb", closefd=False)
    try:
        serve(job, stdin, stdout, status_fd)
    except HangupException:
        return 1  # the client went away; nobody is left to tell
    except GitProtocolError as exc:
        print(f"ERROR: protocol error: {str(exc)[:200]}", file=sys.stderr)
        return 1
    except AssertionError:
        # dulwich asserts on some malformed input (an empty pkt-line, `0004`).
        log.warning("malformed request: %s %s", service, repo_dir)
        print("ERROR: protocol error: malformed request", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except ShallowError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except RequestRefused as exc:
        # The client has had its one ERR pkt-line; the operator gets the reason.
        log_event(log, "git.refused", service=service, repository=repo_dir, reason=str(exc))
        return 1
    except ArchiveRefused as exc:
        log_event(log, "git.refused", service=service, repository=repo_dir, reason=str(exc))
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        log_event(
            log,
            "git.out_of_memory",
            level=logging.WARNING,
            service=service,
            repository=repo_dir,
            limit=job.worker_memory_limit,
        )
        print(
            "ERROR: the request needs more memory than the server allows one request "
            "(worker_memory_limit); the operator has been told",
            file=sys.stderr,
        )
        return 1
    except PackError as exc:
        log.error("stored pack damaged: %s %s: %s", service, repo_dir, exc)
        print(
            "ERROR: the repository's stored data failed a check; the operator has been told",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        log.error(
            "git worker failed: %s %s: %s: %s", service, repo_dir, exc.__class__.__name__, exc
        )
        log.debug("git worker failure details", exc_info=True)
        print("ERROR: internal error while serving the repository", file=sys.stderr)
        return 1
    return 0


def _zygote(options: list[str]) -> int:
    """`--zygote --log-fd N --socket-fd S`: fork a worker per job (zygote.py)."""
    try:
        found = dict(zip(options[::2], (int(v) for v in options[1::2]), strict=True))
        log_fd, sock_fd = found["--log-fd"], found["--socket-fd"]
    except (ValueError, KeyError):
        print("ERROR: bad zygote invocation", file=sys.stderr)
        return 2
    from . import zygote

    return zygote.serve_forever(sock_fd, log_fd)


def _descriptors(options: list[str]) -> tuple[int | None, int | None]:
    """`--log-fd N --status-fd M` (either may be left out): descriptors the pool passed."""
    found: dict[str, int] = {}
    items = iter(options)
    for name in items:
        if name not in ("--log-fd", "--status-fd") or name in found:
            raise ValueError(f"unknown option {name[:40]}")
        found[name] = int(next(items, ""))
    return found.get("--log-fd"), found.get("--status-fd")


def limit_memory(limit: int) -> None:
    """RLIMIT_DATA for this process (0: leave it). Only lowered, never raised."""
    if limit <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _setup_logging(job: Job, log_fd: int | None) -> None:
    # The operator's log is a descriptor the server hands over; stderr goes to the user.
    # The stream is the worker's for its whole (short) life: nothing closes it.
    stream = (
        os.fdopen(log_fd, "w", buffering=1) if log_fd is not None else open(os.devnull, "w")  # noqa: SIM115 (open until the worker exits)
    )
    # The server's level: info lines (clean refusals) reach the operator too.
    level = getattr(logging, job.log_level.upper(), logging.WARNING)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter(job.log_format, tracebacks=level == logging.DEBUG))
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("dulwich").setLevel(max(level, logging.WARNING))


def _die_with_parent() -> None:
    """If the server dies, this worker dies too (Linux): no orphan half-way through a push."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    _die_with_parent()
    sys.exit(main(sys.argv[1:]))
