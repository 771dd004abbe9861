"""What every SSH command receives: who is asking, and three byte streams.

Commands do not know their transport: the same command runs under the asyncssh server
and in tests with in-memory streams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import aiosqlite

from ..config import Settings
from ..policy import Identity


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass
class Context:
    settings: Settings
    db: aiosqlite.Connection
    identity: Identity
    stdin: Reader
    stdout: Writer
    stderr: Writer
    remote_addr: str = ""

    async def say(self, text: str) -> None:
        self.stdout.write((text + "\n").encode())
        await self.stdout.drain()
