"""The asyncssh server: host keys, limits, public-key authentication, one command a session.

Identity is decided only from a key whose signature was verified. asyncssh asks
`validate_public_key` both for keys that are merely offered (probes) and for signed
requests, and does not say which key finally signed; so the connection's own
verification step is wrapped to record the key whose signature it checked (the flaw
behind soft-serve's CVE-2023-43809 was to take identity from an offered key).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import aiosqlite
import asyncssh

from . import commands, keydir, sshkeys
from .commands.context import Context
from .config import Settings
from .datadir import ensure_host_keys
from .git import repos
from .errors import Refusal
from .policy import Identity
from .store import db as store_db
from .store import access_keys, keys
from .terminal import CookedReader, CrlfWriter
from .twosv.sealing import Sealer

log = logging.getLogger("gateway")


class GatewaySSHServer(asyncssh.SSHServer):
    def __init__(self, settings: Settings, db: aiosqlite.Connection, sealer: Sealer) -> None:
        self.settings = settings
        self.db = db  # shared by all connections, for key lookups only: never commits
        self.sealer = sealer
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.failures = 0
        self.identity: Identity | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        host, port = (conn.get_extra_info("peername") or ("?", 0))[:2]
        self.peer = f"{host}:{port}"
        verify = conn.validate_public_key

        async def validate_and_record(username, key_data, msg, signature) -> bool:
            ok = await verify(username, key_data, msg, signature)
            if ok and msg:
                # The signature over this key checked out: it alone decides who this is.
                ok = await self._set_identity(key_data)
            if not ok:
                self._count_failure()
            return ok

        conn.validate_public_key = validate_and_record  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        who = self.identity.account if self.identity else "-"
        log.info("connection closed peer=%s account=%s", self.peer, who)

    def _count_failure(self) -> None:
        self.failures += 1
        if self.failures >= self.settings.max_auth_tries and self.conn is not None:
            log.info("too many authentication failures peer=%s", self.peer)
            self.conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Only says whether this key may be tried; identity is not decided here.
        if username != self.settings.ssh_user:
            return False
        fingerprint = sshkeys.fingerprint(key.public_data)
        stored = await keys.find(self.db, fingerprint)
        if stored is not None:
            return not stored.account_disabled
        return await access_keys.find(self.db, fingerprint) is not None

    async def _set_identity(self, key_data: bytes) -> bool:
        fingerprint = sshkeys.fingerprint(key_data)
        stored = await keys.find(self.db, fingerprint)
        if stored is not None:
            if stored.account_disabled:
                return False
            self.identity = Identity(stored.account, stored.account_id, stored.fingerprint,
                                     stored.title, stored.kind)
        else:
            bound = await access_keys.find(self.db, fingerprint)
            if bound is None:  # removed in the meantime
                return False
            self.identity = Identity(f"access-key:{bound.title}", 0, bound.fingerprint,
                                     bound.title, access_repo_id=bound.repo_id,
                                     access_write=bound.write)
        log.info("authenticated peer=%s account=%s key=%s", self.peer, self.identity.account,
                 fingerprint)
        return True


async def handle_session(process: asyncssh.SSHServerProcess) -> None:
    server: GatewaySSHServer = process.get_extra_info("connection").get_owner()
    status = 1
    try:
        if server.identity is None:
            pass  # not authenticated: nothing to run
        elif process.subsystem is not None:
            process.stderr.write(b"ERROR: Subsystems are not supported\n")
        else:
            # A connection of its own: the server's shared one only reads keys.
            db = await store_db.connect(server.settings.db_path, migrate_schema=False)
            try:
                if await still_valid(db, server.identity):
                    status = await run_command(process, server, db)
                else:
                    process.stderr.write(b"ERROR: This key is no longer accepted\n")
                    server.conn.close()
            finally:
                await db.close()
    except (asyncssh.BreakReceived, asyncssh.TerminalSizeChanged):
        pass
    except (BrokenPipeError, ConnectionError, asyncssh.DisconnectError):
        status = 1  # the client went away
    except Exception as exc:
        # One line for the operator; the traceback only at log_level = "debug".
        log.error("session failed peer=%s command=%r: %s: %s", server.peer, process.command,
                  exc.__class__.__name__, exc)
        log.debug("session failure details", exc_info=True)
        try:
            process.stderr.write(b"ERROR: internal error; the operator has the details\n")
        except Exception:
            pass
    finally:
        try:
            process.exit(status)
        except Exception:
            pass


async def run_command(process: asyncssh.SSHServerProcess, server: GatewaySSHServer,
                      db: aiosqlite.Connection) -> int:
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    if process.get_terminal_type() and not commands.is_git(process.command):
        stdout, stderr = CrlfWriter(stdout), CrlfWriter(stderr)
        stdin = CookedReader(stdin, stdout)
    ctx = Context(server.settings, db, server.identity, stdin, stdout, stderr, server.peer,
                  server.sealer)
    return await commands.run(ctx, process.command)


async def still_valid(db: aiosqlite.Connection, identity: Identity) -> bool:
    """A connection can carry many sessions: check, for each, that the key it logged in
    with still stands as it did (not removed, account not disabled, same binding)."""
    if identity.is_access_key:
        bound = await access_keys.find(db, identity.key_fingerprint)
        return (bound is not None and bound.repo_id == identity.access_repo_id
                and bound.write == identity.access_write)
    stored = await keys.find(db, identity.key_fingerprint)
    return (stored is not None and not stored.account_disabled
            and stored.account_id == identity.account_id and stored.kind == identity.key_kind)


async def start(settings: Settings) -> tuple[asyncssh.SSHAcceptor, aiosqlite.Connection]:
    sealer = Sealer.load(settings.master_key_path)
    db = await store_db.connect(settings.db_path)
    host_keys = [str(p) for p in ensure_host_keys(settings)]
    acceptor = await asyncssh.create_server(
        lambda: GatewaySSHServer(settings, db, sealer),
        settings.listen_host,
        settings.listen_port,
        server_host_keys=host_keys,
        process_factory=handle_session,
        encoding=None,  # Git speaks bytes
        allow_pty=True,  # `ssh -t` gets the greeting; see terminal.py
        line_editor=False,
        agent_forwarding=False,
        x11_forwarding=False,
        password_auth=False,
        kbdint_auth=False,
        gss_kex=False,
        gss_auth=False,
        host_based_auth=False,
        login_timeout=settings.login_timeout,
        keepalive_interval=settings.keepalive_interval,
        keepalive_count_max=3,
        server_version="gateway",
    )
    return acceptor, db


async def sync_keydir(settings: Settings) -> None:
    """Pick up the keydir at start and on SIGHUP (operators also run `gateway keys sync`)."""
    if not settings.keydir.is_dir():
        return
    db = await store_db.connect(settings.db_path, migrate_schema=False)
    try:
        report = await keydir.sync(db, settings.keydir)
    except Refusal as refusal:
        log.warning("keydir sync: %s", refusal.message)
        return
    finally:
        await db.close()
    log.info("keydir sync: %d added, %d removed", len(report.added), len(report.removed))
    for error in report.errors:
        log.warning("keydir sync: %s", error)


async def run(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    repos.sweep_all(settings.repos_dir)
    acceptor, db = await start(settings)
    log.info("listening on %s", settings.listen)
    await sync_keydir(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(sync_keydir(settings)))
    print(f"gateway listening on {settings.listen} (data dir {settings.data_dir})", flush=True)
    await stop.wait()
    acceptor.close()
    await acceptor.wait_closed()
    await db.close()
