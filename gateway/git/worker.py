"""Runs one Git service for one connection, in its own process.

    python -m gateway.git.worker SERVICE REPO_DIR
    python -m gateway.git.worker --job     (the job arrives on stdin; see pool.py)

The server gives it a job only after the identity and the access decision are settled,
with a repository path it resolved itself; this process only speaks Git on stdin/stdout.
With `--job` it is started ahead of time with its imports done, and waits for a job
header (service, repository, environment) before the Git bytes; it serves one job and
exits, so no state passes from one request to the next. While serving, its working
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
import json
import logging
import os
import resource
import signal
import sys
from typing import BinaryIO

from dulwich.errors import GitProtocolError, HangupException
from dulwich.protocol import ReceivableProtocol

from ..logs import StructuredFormatter, log_event
from .archive import ArchiveRefused
from .handlers import HANDLERS, OneRepoBackend, open_repo
from .storedpacks import PackError

OUTPUT_BUFFER = 64 * 1024
PR_SET_PDEATHSIG = 1

log = logging.getLogger("gateway.git")


def serve(service: str, repo_dir: str, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Serve one request; raises on protocol errors. Always closes the repository."""
    out = io.BufferedWriter(stdout, buffer_size=OUTPUT_BUFFER)

    def recv(size: int) -> bytes:
        out.flush()
        return stdin.read(size)

    repo = open_repo(repo_dir)
    try:
        proto = ReceivableProtocol(recv, out.write)
        handler = HANDLERS[service](OneRepoBackend(repo), [repo_dir], proto)
        handler.handle()
        out.flush()
    finally:
        repo.close()


def read_job(stdin: BinaryIO) -> list[str] | None:
    """The job header: 4 bytes of length, then JSON {"argv": [SERVICE, REPO_DIR], "env": {}}.
    Read exactly, so that not a byte of the Git stream after it is consumed."""
    head = _read_exactly(stdin, 4)
    if head is None:
        return None  # the server stopped before giving this worker a job
    body = _read_exactly(stdin, int.from_bytes(head, "big"))
    job = json.loads(body or b"{}")
    os.environ.update(job["env"])
    return job["argv"]


def _read_exactly(stdin: BinaryIO, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = stdin.read(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main(argv: list[str]) -> int:
    if argv == ["--job"]:
        argv = read_job(io.FileIO(0, "rb", closefd=False))
        if argv is None:
            return 0
        _setup_logging()
    if len(argv) != 2 or argv[0] not in HANDLERS:
        print("ERROR: bad worker invocation", file=sys.stderr)
        return 2
    service, repo_dir = argv
    limit_memory(int(os.environ.get("GATEWAY_WORKER_MEMORY_LIMIT") or 0))
    os.chdir(repo_dir)
    # Unbuffered raw stdin: a read returns what is there, so no pkt-line waits in a buffer.
    stdin = io.FileIO(0, "rb", closefd=False)
    stdout = io.FileIO(1, "wb", closefd=False)
    try:
        serve(service, repo_dir, stdin, stdout)
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
    except ArchiveRefused as exc:
        log_event(log, "git.refused", service=service, repository=repo_dir, reason=str(exc))
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        log_event(log, "git.out_of_memory", level=logging.WARNING, service=service,
                  repository=repo_dir, limit=os.environ.get("GATEWAY_WORKER_MEMORY_LIMIT", ""))
        print("ERROR: the request needs more memory than the server allows one request "
              "(worker_memory_limit); the operator has been told", file=sys.stderr)
        return 1
    except PackError as exc:
        log.error("stored pack damaged: %s %s: %s", service, repo_dir, exc)
        print("ERROR: the repository's stored data failed a check; the operator has been told",
              file=sys.stderr)
        return 1
    except Exception as exc:
        log.error("git worker failed: %s %s: %s: %s", service, repo_dir, exc.__class__.__name__, exc)
        log.debug("git worker failure details", exc_info=True)
        print("ERROR: internal error while serving the repository", file=sys.stderr)
        return 1
    return 0


def limit_memory(limit: int) -> None:
    """RLIMIT_DATA for this process (0: leave it). Only lowered, never raised."""
    if limit <= 0:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or limit < soft:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _setup_logging() -> None:
    # The operator's log is a descriptor the server hands over; stderr goes to the user.
    log_fd = os.environ.get("GATEWAY_LOG_FD")
    stream = os.fdopen(int(log_fd), "w", buffering=1) if log_fd else open(os.devnull, "w")
    # The server's level: info lines (clean refusals) reach the operator too.
    level = getattr(logging, os.environ.get("GATEWAY_LOG_LEVEL", "warning").upper(), logging.WARNING)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter(os.environ.get("GATEWAY_LOG_FORMAT", "logfmt"),
                                             tracebacks=level == logging.DEBUG))
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
    if sys.argv[1:] != ["--job"]:
        _setup_logging()
    sys.exit(main(sys.argv[1:]))
