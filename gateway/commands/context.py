"""What every SSH command receives: who is asking, and three byte streams.

Commands do not know their transport: the same command runs under the asyncssh server
and in tests with in-memory streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .. import access
from ..config import Settings
from ..decision import Identity
from ..errors import Refusal
from ..store.database import Database
from ..twosv.sealing import Sealer

if TYPE_CHECKING:
    from ..app import App

MAX_ANSWER = 1024


class Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass
class Context:
    app: App
    db: Database
    identity: Identity
    stdin: Reader
    stdout: Writer
    stderr: Writer
    remote_addr: str = ""
    clock: Callable[[], float] = time.time
    terminal: bool = False  # the client asked for a pty: one user at a terminal
    git_protocol: str = ""  # the client's checked GIT_PROTOCOL (git/protocol.py)
    _pending: bytes = field(default=b"", repr=False)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def sealer(self) -> Sealer:
        return self.app.sealer

    async def say(self, text: str) -> None:
        self.stdout.write((text + "\n").encode())
        await self.stdout.drain()

    async def check_still_valid(self) -> None:
        """Refuse if the key was removed or the account disabled since the session began
        (called right before a change of state: a prompt may have waited for minutes)."""
        if not await access.still_valid(self.db, self.identity):
            raise Refusal("This key is no longer accepted; nothing changed.")

    async def ask(
        self, prompt: str, limit: int = MAX_ANSWER, too_long: str = "Answer too long"
    ) -> str | None:
        """Show a prompt and read one line of answer from stdin (with or without a
        terminal); None when stdin closed first. Answers over `limit` are refused."""
        # Without a terminal, on a line of its own: nothing echoes the answer's newline.
        # With one, the answer is typed after the prompt, as in any terminal program.
        if self.terminal:
            self.stderr.write(prompt.rstrip().encode() + b" ")
        else:
            self.stderr.write(prompt.rstrip().encode() + b"\n")
        await self.stderr.drain()
        while b"\n" not in self._pending:
            if len(self._pending) > limit:
                raise Refusal(too_long)
            data = await self._read_answer()
            if not data:
                if not self._pending:
                    return None
                break
            self._pending += data
        line, _, self._pending = self._pending.partition(b"\n")
        if len(line) > limit:
            raise Refusal(too_long)
        try:
            return line.decode("utf-8").strip("\r")
        except UnicodeDecodeError:
            raise Refusal("Answer is not valid UTF-8") from None

    async def _read_answer(self) -> bytes:
        """Some of an answer; nobody holds a session open for ever at a prompt."""
        limit = self.settings.idle_timeout or None
        try:
            return await asyncio.wait_for(self.stdin.read(MAX_ANSWER), limit)
        except TimeoutError:
            raise Refusal(f"No answer within {limit} seconds") from None
