"""A lock every gateway sharing one PostgreSQL database sees: for the synchronous Git
worker and housekeeper processes, which have no database of their own.

`held(database_url, name)` opens one short connection, takes a session-level
`pg_advisory_lock` on `lock_key(name)` (postgres.py's) and keeps it until the block
ends, then unlocks and closes. A holder that dies drops its connection, and PostgreSQL
drops the lock with it, as the kernel does with an flock. With no `database_url`
(SQLite: one machine), it does nothing; callers keep their flock for this machine.

The connection runs on a loop in a thread of its own, so that a caller inside a running
event loop (`gateway repo gc`) can use it as the worker does. Its messages have the
password masked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from . import url as urls

T = TypeVar("T")
CONNECT_TIMEOUT = 10  # seconds, as postgres.py's


class LockUnavailable(Exception):
    """The database could not be reached to take the lock; the message is masked."""


def refs_lock_name(repo_dir: str) -> str:
    """The lock a repository's refs move under: named by WORKSPACE/NAME.git, the last
    two parts of its path (layout.py), which are the same on every node however the
    shared storage is mounted."""
    parts = repo_dir.rstrip("/").split("/")
    return "repo-refs:" + "/".join(parts[-2:])


class _Loop:
    """An event loop in a daemon thread, for one lock's connection."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@contextmanager
def held(database_url: str | None, name: str) -> Iterator[None]:
    if not database_url:
        yield
        return
    import asyncpg

    from .postgres import lock_key

    loop = _Loop()
    try:
        try:
            conn = loop.run(asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT))
            loop.run(conn.execute("SELECT pg_advisory_lock($1)", lock_key(name)))
        except Exception as exc:
            raise LockUnavailable(_problem(database_url, exc)) from None
        try:
            yield
        finally:
            try:
                # Closing ends the session, which releases the lock; unlocking first
                # says so plainly and costs one round trip.
                loop.run(conn.execute("SELECT pg_advisory_unlock($1)", lock_key(name)))
            except Exception:
                pass
            finally:
                loop.run(_close(conn))
    finally:
        loop.stop()


async def _close(conn: Any) -> None:
    try:
        await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT)
    except Exception:
        conn.terminate()


def _problem(database_url: str, exc: BaseException) -> str:
    text = f"cannot take the lock in PostgreSQL at {urls.describe(database_url)}: "
    text += f"{exc.__class__.__name__}: {exc}"
    secret = urls.password(database_url)
    return text.replace(secret, urls.MASK) if secret else text
