"""The one private asyncio name the gateway uses (gateway/git/workers/asyncio_seam.py)
is still there: a Python upgrade that drops it fails here, naming it."""

from __future__ import annotations

import asyncio
import inspect
import re


def test_process_still_has_its_transport():
    source = inspect.getsource(asyncio.subprocess.Process)
    assert re.search(r"self\._transport\b", source), (
        "asyncio.subprocess.Process no longer has _transport, which "
        "gateway/git/workers/asyncio_seam.py closes the worker's pipes with: see the reason there"
    )


def test_close_pipes_lets_wait_return():
    """A child whose output nobody reads to the end: wait() returns once the pipes are closed."""
    from gateway.git.workers.asyncio_seam import close_pipes

    async def run() -> int:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            "yes | head -c 1000000; exit 3",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await proc.stdout.read(10)
        close_pipes(proc)
        return await asyncio.wait_for(proc.wait(), 10)

    assert isinstance(asyncio.run(run()), int)  # closing the transport also ends the child
