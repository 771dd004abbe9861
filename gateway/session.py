"""One session, whichever way it came in.

`gateway serve`'s own SSH server (gateway/transport/connection.py) and `gateway shell`
under OpenSSH (gateway/transport/openssh.py) both hand this module a verified identity
(or the fingerprint of a key whose signature sshd checked), the raw command line and
three byte streams. The steps are done here once, for both:

1. the command line is parsed, once (`commands.request`);
2. the session gets a `Database` of its own (gateway/store/database.py: a line of
   transactions; the server's shared one only reads keys);
3. the identity is checked again: the key may have been removed or its account
   disabled since authentication;
4. the command runs with a `Context`; a `Refusal` becomes one `ERROR:` line, anything
   unexpected the one internal-error line and a `session.failed` log line;
5. metrics and the `command` log line record how it went.

What a transport does its own way (who cooks a pty's lines, which errors mean the
client left, what else happens to a key no longer accepted) its adapter says once, in
a `Transport`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from . import access, commands, metrics
from .app import App
from .commands.context import Context, Reader, Writer
from .commands.parse import Request
from .decision import Identity
from .errors import Refusal
from .logs import log_event
from .store import db as store_db
from .store import keys
from .store.database import Database, DatabaseError
from .terminal import CookedReader, CrlfWriter

log = logging.getLogger("gateway")

INTERNAL_ERROR = b"ERROR: internal error; the operator has the details\n"
# The database failed under the session (PostgreSQL restarting, say): what the session
# was writing is rolled back, and the next connection reconnects.
DATABASE_ERROR = b"ERROR: the gateway's database did not answer; try again in a moment\n"
KEY_REFUSED = b"ERROR: This key is no longer accepted\n"
SUBSYSTEM_REFUSED = b"ERROR: Subsystems are not supported\n"


@dataclass(frozen=True)
class Streams:
    """The session's three byte streams, as the transport gives them."""

    stdin: Reader
    stdout: Writer
    stderr: Writer


class LogFields(TypedDict, total=False):
    """What a transport adds to the session's log lines (a TypedDict, so that mypy knows
    they cannot collide with `log_event`'s own parameters)."""

    via: str


@dataclass(frozen=True)
class Transport:
    """What one transport does its own way; its adapter says it once."""

    # The `via` field of this transport's log lines; None under `gateway serve`, whose
    # lines never had one (the README shows them).
    via: str | None
    # True when a pty client's terminal is in raw mode and nothing else on the path echoes
    # or cooks lines (asyncssh); False when a real pty does it (sshd's).
    cooks_terminal: bool
    # Errors that mean the client went away: status 1, nothing logged as a failure.
    client_gone: tuple[type[BaseException], ...] = (BrokenPipeError, ConnectionError)
    # Drain stdout and stderr before the session ends (asyncio pipes under sshd).
    drain_at_end: bool = False
    # Called after the ERROR line for a key no longer accepted (serve closes the connection).
    key_refused: Callable[[], None] | None = None

    def log_fields(self) -> LogFields:
        return {"via": self.via} if self.via else {}


async def run_session(
    app: App,
    who: Identity | str,
    line: str | None,
    streams: Streams,
    *,
    peer: str,
    terminal: bool,
    transport: Transport,
    subsystem: str | None = None,
    git_protocol: str = "",
) -> int:
    """Run one session's command; its exit status.

    `who` is the identity decided from a verified signature (re-checked here), or the
    fingerprint of a key whose signature the transport's verifier (sshd) checked (looked
    up here). `terminal`: the client asked for a pty. `subsystem`: a subsystem request
    (sftp, say) instead of a command, refused. `git_protocol`: the client's GIT_PROTOCOL,
    already checked (gateway/git/protocol.py: from_environment), for Git requests."""
    session = _Session(app, who, streams, peer, transport, git_protocol)
    return await session.run(line, terminal, subsystem)


async def _note_use(db: Database, fingerprint: str) -> None:
    """A key's last use, for a process that lives one login (sshd's forced command): the
    store's own once-a-minute rule, read first so that most logins write nothing."""
    stored = await keys.find(db, fingerprint)
    at = store_db.now()
    if stored is None or (
        stored.last_used_at is not None and at - stored.last_used_at < keys.LAST_USE_INTERVAL
    ):
        return
    try:
        if await keys.mark_used(db, fingerprint, at):
            await db.commit()
    except DatabaseError as exc:  # busy: the login goes ahead all the same
        await db.rollback()
        log_event(log, "key.last_use_failed", logging.WARNING, error=str(exc))


class _Session:
    def __init__(
        self,
        app: App,
        who: Identity | str,
        streams: Streams,
        peer: str,
        transport: Transport,
        git_protocol: str = "",
    ) -> None:
        self.app = app
        self.git_protocol = git_protocol
        self.who = who
        self.streams = streams
        self.peer = peer
        self.transport = transport
        self.account = who.account if isinstance(who, Identity) else "-"

    async def run(self, line: str | None, terminal: bool, subsystem: str | None) -> int:
        request = commands.request(line)
        verb, target = (
            ("subsystem", "") if subsystem is not None else (request.verb, request.target)
        )
        stderr = self.streams.stderr
        started = time.monotonic()
        status = 1
        try:
            if subsystem is not None:
                stderr.write(SUBSYSTEM_REFUSED)
            else:
                status = await self._with_database(request, terminal)
        except self.transport.client_gone:
            status = 1  # the client went away
        except Exception as exc:
            # One line for the operator; the traceback only at log_level = "debug".
            log_event(
                log,
                "session.failed",
                logging.ERROR,
                peer=self.peer,
                verb=verb,
                error=f"{exc.__class__.__name__}: {exc}",
                **self.transport.log_fields(),
            )
            log.debug("session failure details", exc_info=True)
            try:
                stderr.write(DATABASE_ERROR if isinstance(exc, DatabaseError) else INTERNAL_ERROR)
                if self.transport.drain_at_end:
                    await stderr.drain()
            except Exception:
                pass
        finally:
            seconds = time.monotonic() - started
            metrics.COMMANDS.labels(verb, "ok" if status == 0 else "error").inc()
            metrics.DURATION.labels(verb).observe(seconds)
            log_event(
                log,
                "command",
                peer=self.peer,
                account=self.account,
                verb=verb,
                target=target,
                status=status,
                seconds=round(seconds, 3),
                **self.transport.log_fields(),
            )
        return status

    async def _with_database(self, request: Request, terminal: bool) -> int:
        db = await self.app.database()
        try:
            identity = await self._still_accepted(db)
            if identity is None:
                self.streams.stderr.write(KEY_REFUSED)
                if self.transport.drain_at_end:
                    await self.streams.stderr.drain()
                if self.transport.key_refused is not None:
                    self.transport.key_refused()
                return 1
            return await self._command(db, identity, request, terminal)
        finally:
            await db.close()

    async def _still_accepted(self, db: Database) -> Identity | None:
        """The identity, if its key is still accepted (not removed, account not disabled)."""
        if isinstance(self.who, Identity):
            return self.who if await access.still_valid(db, self.who) else None
        # A fingerprint from sshd's forced command: the gateway's authentication is this
        # lookup, so it is logged here.
        identity = await access.identity_for_key(db, self.who)
        via = self.transport.log_fields()
        if identity is None:  # removed, or the account disabled, since sshd asked
            log_event(log, "auth.failed", peer=self.peer, key=self.who, **via)
            return None
        self.account = identity.account
        log_event(log, "auth.ok", peer=self.peer, account=identity.account, key=self.who, **via)
        if not identity.is_access_key:
            await _note_use(db, self.who)
        return identity

    async def _command(
        self, db: Database, identity: Identity, request: Request, terminal: bool
    ) -> int:
        stdin: Reader = metrics.CountingReader(self.streams.stdin, metrics.BYTES.labels("in"))
        stdout: Writer = metrics.CountingWriter(self.streams.stdout, metrics.BYTES.labels("out"))
        stderr: Writer = metrics.CountingWriter(self.streams.stderr, metrics.BYTES.labels("out"))
        terminal = terminal and not request.is_git  # Git never runs at a terminal
        if terminal and self.transport.cooks_terminal:
            stdout, stderr = CrlfWriter(stdout), CrlfWriter(stderr)
            stdin = CookedReader(stdin, stdout)
        ctx = Context(
            self.app,
            db,
            identity,
            stdin,
            stdout,
            stderr,
            self.peer,
            terminal=terminal,
            git_protocol=self.git_protocol if request.is_git else "",
        )
        try:
            status = await commands.run(ctx, request)
        except Refusal as refusal:
            stderr.write(f"ERROR: {refusal.message}\n".encode())
            await stderr.drain()
            status = refusal.status
        if self.transport.drain_at_end:
            await stdout.drain()
            await stderr.drain()
        return status
