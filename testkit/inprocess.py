"""SSH commands run in this process: a `Context` on the test run's database (a SQLite file
of a temporary data directory, or a PostgreSQL database of its own), with in-memory
streams instead of a channel. No server, no ssh client: a command's texts are checked in
milliseconds, beside the end-to-end tests that check the same texts through the real
`ssh`.

`run_command` hands the line to the session core (`gateway.session.run_session`), as
both transports do: parsing, the identity re-check, the `ERROR:` lines are the real ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.app import App
from gateway.config import Settings
from gateway.decision import Identity
from gateway.git.workers.pool import GitWorkers
from gateway.session import Streams, Transport, run_session
from gateway.sshkeys import parse_line
from gateway.store import accounts, keys
from gateway.store import db as store_db
from gateway.store.database import Database
from gateway.twosv.sealing import Sealer

from . import database
from .keys import User, make_key

# Like sshd's pty, the test's input needs no line cooking; no `via` on log lines.
IN_PROCESS = Transport(via=None, cooks_terminal=False)
MASTER_KEY = b"m" * 32  # a test key: nothing sealed with it leaves the test


class MemoryInput:
    """Standard input holding DATA, then end of file."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


class MemoryOutput:
    """Standard output or error, kept in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


class Answering:
    """Standard input that answers prompts: ANSWER gets what the command has written so
    far (stdout and stderr) and returns the next line to type, or None for end of file.
    For flows whose answer depends on what was shown (a code for the secret shown)."""

    def __init__(self, answer: Callable[[str], str | None]) -> None:
        self.answer = answer
        self.shown: list[MemoryOutput] = []

    async def read(self, n: int = -1) -> bytes:
        line = self.answer("".join(out.text for out in self.shown))
        return b"" if line is None else (line + "\n").encode()


@dataclass
class Outcome:
    """What one command did, in the shape of subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


class InProcessGateway:
    """A data directory with a database, the App a server would hold, and helpers to make
    accounts with keys. Open with `await InProcessGateway.open(tmp_path)`; close at the end."""

    def __init__(self, root: Path, app: App, db: Database) -> None:
        self.root = root
        self.app = app
        self.db = db

    @classmethod
    async def open(cls, root: Path, listen: str = "127.0.0.1:2222") -> InProcessGateway:
        url = database.new_database()
        settings = Settings(
            data_dir=root / "var", listen=listen, spare_workers=0, database_url=url or ""
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Worker logs (none expected: these commands start no worker) go nowhere.
        workers = GitWorkers(settings, os.open(os.devnull, os.O_WRONLY))
        app = App(settings, Sealer(MASTER_KEY), workers)
        app.backend = await store_db.open_backend(settings)
        return cls(root, app, await app.backend.connect())

    async def close(self) -> None:
        await self.app.git.pool.close()
        os.close(self.app.git.log_fd)
        await self.db.close()
        await self.app.close_database()
        database.drop(self.app.settings.database_url or None)

    async def user(self, name: str) -> tuple[User, Identity]:
        """An account NAME with one new key, and the identity its login would have."""
        account = await accounts.add(self.db, name, None)
        return await self.key(name, account.id, f"{name}@test")

    async def key(self, account: str, account_id: int, title: str) -> tuple[User, Identity]:
        """One more new key for an account, and the identity a login with it would have."""
        key_dir = self.root / "userkeys"
        key_dir.mkdir(exist_ok=True)
        path = make_key(key_dir, f"{account}-{len(list(key_dir.glob('*.pub')))}")
        public = parse_line(Path(f"{path}.pub").read_text())
        await keys.add(self.db, account_id, public, title)
        await self.db.commit()
        return User(account, path), Identity(account, account_id, public.fingerprint, title)

    async def run(
        self,
        identity: Identity,
        line: str | None,
        input: bytes | str | Answering = b"",
        terminal: bool = False,
    ) -> Outcome:
        return await run_command(self.app, self.db, identity, line, input, terminal)


async def run_command(
    app: App,
    db: Database,
    identity: Identity,
    line: str | None,
    input: bytes | str | Answering = b"",
    terminal: bool = False,
) -> Outcome:
    """Run the SSH command LINE as IDENTITY with INPUT on its stdin, as a session would.
    The session core opens its own connection to the database (as under a server); DB
    is the caller's, for setting up and checking state."""
    stdout, stderr = MemoryOutput(), MemoryOutput()
    stdin: MemoryInput | Answering
    if isinstance(input, Answering):
        stdin = input
        stdin.shown = [stdout, stderr]
    else:
        stdin = MemoryInput(input.encode() if isinstance(input, str) else input)
    await db.commit()  # what the test set up is seen by the session's own connection
    status = await run_session(
        app,
        identity,
        line,
        Streams(stdin, stdout, stderr),
        peer="127.0.0.1:50000",
        terminal=terminal,
        transport=IN_PROCESS,
    )
    return Outcome(status, stdout.text, stderr.text)
