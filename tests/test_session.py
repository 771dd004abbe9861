"""The session core (gateway/session.py) in-process, with in-memory streams: what both
transports share (identity re-checked, ERROR lines, the internal-error line, the
`command` log line) without a server or an sshd."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from gateway import access, commands, datadir, sshkeys
from gateway.app import App
from gateway.config import Settings
from gateway.decision import Identity
from gateway.session import Streams, Transport, run_session
from gateway.store import accounts, keys
from gateway.store import db as store_db
from testkit import database
from testkit.inprocess import MemoryInput, MemoryOutput


class Session:
    """A data dir with one account and one key, and a way to run a session for it."""

    def __init__(self, tmp: Path) -> None:
        self.database_url = database.new_database()
        self.settings = Settings(data_dir=tmp / "data", database_url=self.database_url or "")
        self.fingerprint = ""
        self.refused: list[str] = []

    async def setup(self) -> None:
        await datadir.initialise(self.settings)
        key = asyncssh.generate_private_key("ssh-ed25519")
        (public,) = sshkeys.parse_text(key.export_public_key().decode())
        async with await store_db.open_backend(self.settings) as backend:
            db = await backend.connect()
            try:
                account = await accounts.add(db, "alice", None)
                await keys.add(db, account.id, public, "laptop")
                await db.commit()
            finally:
                await db.close()
        self.fingerprint = public.fingerprint

    async def identity(self) -> Identity:
        async with await store_db.open_backend(self.settings) as backend:
            db = await backend.connect()
            try:
                identity = await access.identity_for_key(db, self.fingerprint)
            finally:
                await db.close()
        assert identity is not None
        return identity

    async def run(
        self,
        line: str | None,
        who: Identity | str | None = None,
        *,
        stdin: bytes = b"",
        terminal: bool = False,
        cooks: bool = False,
        subsystem: str | None = None,
    ) -> tuple[int, str, str]:
        out, err = MemoryOutput(), MemoryOutput()
        transport = Transport(
            via="test", cooks_terminal=cooks, key_refused=lambda: self.refused.append("closed")
        )
        app = App.load(self.settings)
        try:
            status = await run_session(
                app,
                self.fingerprint if who is None else who,
                line,
                Streams(MemoryInput(stdin), out, err),
                peer="10.0.0.1:22",
                terminal=terminal,
                transport=transport,
                subsystem=subsystem,
            )
        finally:
            await app.close_database()
        return status, out.data.decode(), err.data.decode()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    made = Session(tmp_path)
    asyncio.run(made.setup())
    yield made
    database.drop(made.database_url)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [r.fields for r in caplog.records if getattr(r, "event", None) == name]


def test_a_fingerprint_is_looked_up_and_the_command_runs(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, out, err = asyncio.run(session.run("whoami"))
    assert status == 0 and "alice" in out and err == ""
    (auth,) = events(caplog, "auth.ok")
    assert auth["account"] == "alice" and auth["via"] == "test"
    (command,) = events(caplog, "command")
    assert command["verb"] == "whoami" and command["status"] == 0
    assert command["account"] == "alice" and command["via"] == "test"


def test_a_key_removed_since_authentication_is_refused(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    identity = asyncio.run(session.identity())

    async def remove() -> None:
        async with await store_db.open_backend(session.settings) as backend:
            db = await backend.connect()
            try:
                await keys.remove(db, session.fingerprint)
                await db.commit()
            finally:
                await db.close()

    asyncio.run(remove())
    status, out, err = asyncio.run(session.run("whoami", identity))
    assert (status, out, err) == (1, "", "ERROR: This key is no longer accepted\n")
    assert session.refused == ["closed"]
    status, out, err = asyncio.run(session.run("whoami"))  # the fingerprint: not found
    assert (status, err) == (1, "ERROR: This key is no longer accepted\n")
    assert events(caplog, "auth.failed")[0]["key"] == session.fingerprint


def test_a_line_that_does_not_parse_is_one_error_line(
    session: Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    status, out, err = asyncio.run(session.run("whoami 'unbalanced"))
    assert (status, out, err) == (1, "", "ERROR: Invalid command: unbalanced quotes\n")
    assert events(caplog, "command")[0]["verb"] == "invalid"


def test_an_unexpected_error_is_one_line_for_the_user_and_one_for_the_operator(
    session: Session, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)

    async def broken(ctx: object, request: object) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(commands, "run", broken)
    status, out, err = asyncio.run(session.run("whoami"))
    assert (status, out, err) == (1, "", "ERROR: internal error; the operator has the details\n")
    (failed,) = events(caplog, "session.failed")
    assert failed["verb"] == "whoami" and failed["error"] == "RuntimeError: disk on fire"
    assert events(caplog, "command")[0]["status"] == 1


def test_subsystems_are_refused(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    status, out, err = asyncio.run(session.run(None, subsystem="sftp"))
    assert (status, out, err) == (1, "", "ERROR: Subsystems are not supported\n")
    assert events(caplog, "command")[0]["verb"] == "subsystem"


def test_a_raw_terminal_gets_crlf_only_when_the_transport_cooks_it(session: Session) -> None:
    _, cooked, _ = asyncio.run(session.run("whoami", terminal=True, cooks=True))
    _, plain, _ = asyncio.run(session.run("whoami", terminal=True, cooks=False))
    assert "\r\n" in cooked and "\r\n" not in plain and cooked.replace("\r\n", "\n") == plain
