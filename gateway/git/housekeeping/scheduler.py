"""When housekeeping runs by itself: after a push that moved refs, if the repository has
more packs or loose objects than the settings allow or the push brought many commits
(their kept lists are made then), in a separate process.

The check is one or two directory listings, done in the event loop. The run itself is
`python -m gateway.git.housekeeping` (nice'd, its log lines on the server's stderr),
started by one background task that runs the queued repositories one at a time; a
repository already waiting is not queued twice. Requests never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections import deque

from ...config import Settings
from ...logs import log_event
from . import inventory

log = logging.getLogger("gateway.housekeeping")


# A push that brings this many commits starts a run even when no repack is due, to make
# their kept lists (commitobjects.py) before the first clone has to.
LISTS_AFTER_COMMITS = 500


def due(repo_dir: str, max_packs: int, max_loose: int) -> bool:
    objects_dir = os.path.join(repo_dir, "objects")
    if max_packs and inventory.pack_count(objects_dir) > max_packs:
        return True
    return bool(max_loose) and inventory.loose_estimate(objects_dir) > max_loose


class Scheduler:
    def __init__(self) -> None:
        self.waiting: deque[tuple[str, list[str], str]] = deque()
        self.queued: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    def after_push(
        self, repo_dir: str, repository: str, settings: Settings, report: dict[str, object]
    ) -> None:
        """Queue the repository if the push moved refs and it needs housekeeping."""
        moved = report.get("moved")
        if not settings.gc_auto or not isinstance(moved, int) or moved <= 0:
            return
        if repo_dir in self.queued:
            return
        commits = report.get("commits")
        many = isinstance(commits, int) and commits >= LISTS_AFTER_COMMITS
        if not many and not due(repo_dir, settings.gc_auto_packs, settings.gc_auto_loose):
            return
        argv = [
            sys.executable,
            "-m",
            "gateway.git.housekeeping",
            repo_dir,
            "--name",
            repository,
            "--prune-after",
            str(settings.gc_prune_after),
            "--log-level",
            settings.log_level,
            "--log-format",
            settings.log_format,
        ]
        if settings.database_url:
            argv.append("--database-url-on-stdin")
        self.queued.add(repo_dir)
        self.waiting.append((repo_dir, argv, settings.database_url))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self.waiting:
            repo_dir, argv, database_url = self.waiting.popleft()
            self.queued.discard(repo_dir)  # a push from now on may queue it again
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL,
                )
                # The URL on stdin, not argv (`ps`): see __main__.py.
                await proc.communicate(database_url.encode() + b"\n" if database_url else b"")
            except OSError as exc:
                log_event(
                    log, "housekeeping.failed", logging.WARNING, reason=exc.strerror or str(exc)
                )


SCHEDULER = Scheduler()
