"""Serving a Git request: one access decision, then a worker process speaks Git."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from .. import access, policy
from ..errors import Refusal
from ..git import repos as disk
from ..git.pool import WorkerPool
from ..logs import log_event
from ..store import audit
from .context import Context, Reader, Writer
from .parse import GitRequest

log = logging.getLogger("gateway.git")

CHUNK = 256 * 1024
ACTIONS = {
    "git-upload-pack": policy.Action.READ,
    "git-upload-archive": policy.Action.READ,
    "git-receive-pack": policy.Action.WRITE,
}
_pool: WorkerPool | None = None
_log_fd: int | None = None


def worker_log_fd() -> int:
    """Where workers write their log: a copy of the server's stderr (the user's stderr
    is the session's), unless set_worker_log_fd chose another."""
    global _log_fd
    if _log_fd is None:
        _log_fd = os.dup(2)
    return _log_fd


def set_worker_log_fd(fd: int) -> None:
    global _log_fd
    _log_fd = fd


async def run(ctx: Context, request: GitRequest) -> int:
    action = ACTIONS[request.service]
    facts, repo = await access.repo_facts(ctx.db, ctx.identity, request.path)
    two_step = await access.two_step_facts(ctx.db, ctx.identity)
    decision = policy.decide(ctx.identity, two_step, facts, action, ctx.clock(),
                             ssh=ctx.settings.ssh_command(""))
    log_event(log, "decision", account=ctx.identity.account, action=action.value,
              repository=facts.asked_as,
              result="deny" if isinstance(decision, policy.Deny) else "allow",
              reason=getattr(decision, "reason", ""))
    if isinstance(decision, policy.Deny):
        await audit.write(ctx.db, ctx.identity.account, f"repo.{action.value}", facts.asked_as,
                          outcome="denied", detail=decision.reason)
        await ctx.db.commit()
        raise Refusal(decision.message)
    assert repo is not None
    repo_dir = disk.resolve(ctx.settings.repos_dir, repo.workspace, repo.name)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_LOG_FD": str(worker_log_fd()),
        "GATEWAY_LOG_LEVEL": ctx.settings.log_level,
        "GATEWAY_LOG_FORMAT": ctx.settings.log_format,
        "GATEWAY_ACCOUNT": ctx.identity.account,
        "GATEWAY_WORKSPACE": repo.workspace,
        "GATEWAY_REPOSITORY": repo.full_name,
        "GATEWAY_KEY_FINGERPRINT": ctx.identity.key_fingerprint,
        "GATEWAY_REMOTE_ADDR": ctx.remote_addr,
        "GATEWAY_HOOKS_DIR": str(ctx.settings.hooks_dir.resolve()),
        "GATEWAY_HOOK_TIMEOUT": str(ctx.settings.hook_timeout),
        "GATEWAY_MAX_PUSH_BYTES": str(ctx.settings.max_push_bytes),
        "GATEWAY_MAX_OBJECT_BYTES": str(ctx.settings.max_object_bytes),
        "GATEWAY_MAX_PUSH_INFLATED_BYTES": str(ctx.settings.max_push_inflated_bytes),
        "GATEWAY_WORKER_MEMORY_LIMIT": str(ctx.settings.worker_memory_limit),
    }
    proc = await worker_pool(ctx.settings).start_job(request.service, str(repo_dir), env)
    status = await relay(proc, ctx.stdin, ctx.stdout, ctx.stderr,
                         idle_timeout=ctx.settings.idle_timeout)
    if action is policy.Action.WRITE and status == 0:
        await audit.write(ctx.db, ctx.identity.account, "repo.push", repo.full_name)
        await ctx.db.commit()
    return status


def worker_pool(settings) -> WorkerPool:
    """The process's pool; its size follows the setting (which SIGHUP may change)."""
    global _pool
    if _pool is None:
        _pool = WorkerPool(settings.spare_workers, worker_log_fd())
    _pool.spare = settings.spare_workers
    return _pool


async def relay(proc: asyncio.subprocess.Process, stdin: Reader, stdout: Writer, stderr: Writer,
                idle_timeout: int = 0) -> int:
    """Pass bytes between the client and a worker until it exits; kill it if we are cut
    off, or if no byte has moved either way for `idle_timeout` seconds (0: never)."""
    last_moved = time.monotonic()

    async def feed() -> None:
        nonlocal last_moved
        try:
            while data := await stdin.read(CHUNK):
                last_moved = time.monotonic()
                proc.stdin.write(data)
                await proc.stdin.drain()
        except Exception:
            pass  # the client went away, or the worker finished without reading everything
        finally:
            # EOF for the worker in every case, so that it never waits for input for ever.
            proc.stdin.close()

    async def copy(source: asyncio.StreamReader, sink: Writer) -> None:
        nonlocal last_moved
        while data := await source.read(CHUNK):
            last_moved = time.monotonic()
            sink.write(data)
            await sink.drain()

    async def watch_idle() -> None:
        while True:
            await asyncio.sleep(min(idle_timeout, 5))
            if time.monotonic() - last_moved > idle_timeout:
                stderr.write(f"ERROR: Nothing sent or received for {idle_timeout} seconds; "
                             "closing\n".encode())
                proc.kill()
                return

    feeder = asyncio.create_task(feed())
    watcher = asyncio.create_task(watch_idle()) if idle_timeout else None
    copies = [asyncio.create_task(copy(proc.stdout, stdout)), asyncio.create_task(copy(proc.stderr, stderr))]
    try:
        await asyncio.gather(*copies)
        return await proc.wait()
    finally:
        for task in (feeder, watcher, *copies):
            if task is not None:
                task.cancel()
        if proc.returncode is None:
            proc.kill()
        # Close the pipes before waiting: Python 3.11's Process.wait() returns only once
        # every pipe has reached EOF, and after a client is cut off mid-clone nothing
        # reads the worker's output to its end (a session and its pipes were left
        # waiting for ever, seen in the adversarial suite).
        proc._transport.close()  # type: ignore[attr-defined]
        await proc.wait()
