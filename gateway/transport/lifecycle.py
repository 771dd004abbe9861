"""The running server (`gateway serve`): start, a graceful stop on SIGTERM, reload on
SIGHUP, the keydir picked up at both, and the count of connections and sessions in
flight that the graceful stop waits on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from .. import certificates, keydir, logs, metrics
from ..app import App
from ..config import Settings
from ..datadir import ensure_host_keys
from ..errors import Refusal
from ..git import layout
from ..logs import log_event
from ..store import db as store_db
from ..store.database import Backend, Database, Unreachable
from . import asyncssh_seam
from .connection import GatewaySSHServer
from .last_use import LastUse
from .limits import ConnectionLimits
from .listener import Listener, listen, split_address

log = logging.getLogger("gateway")

# Settings that only a restart changes: SIGHUP logs that they were left as they were.
RESTART_ONLY = (
    "listen",
    "proxy_protocol",
    "metrics_listen",
    "database_url",
    "database_pool_size",
    "database_timeout",
)

MAX_DATABASE_WAIT = 5  # seconds between tries while the database does not answer at start


class Gateway:
    """The running server: settings, the database (and the shared Database that reads
    keys), the listener, and the connections and sessions in flight."""

    def __init__(self, settings: Settings, reload_settings: Callable[[], Settings]) -> None:
        self.settings = settings
        self.reload_settings = reload_settings
        self.limits = ConnectionLimits(settings)
        self.servers: set[GatewaySSHServer] = set()
        self.sessions = 0
        self.no_sessions = asyncio.Event()
        self.no_sessions.set()
        self.draining = False
        self.ready = False
        self.backend: Backend | None = None
        self.db: Database | None = None  # shared: key look-ups only, never a write
        self.app: App | None = None
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._host_keys: list[asyncssh.SSHKey] = []
        self._listener: Listener | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_use = LastUse(self._connect)
        self.trust = certificates.Trust()

    # --- start and stop ---------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        # Looks the machine's name up now (getfqdn may ask DNS), not in a session's message.
        host_warning = settings.loopback_host_warning()
        # Before the port is taken: a trust file that does not parse stops the start.
        self.trust = certificates.load(
            settings.trusted_user_ca_keys, settings.revoked_user_certificates
        )
        sock = listen(settings.listen_host, settings.listen_port, "listen")
        self._listener = Listener(sock, settings, self.limits, self._current_options, self._spawn)
        if settings.metrics_listen:
            metrics_sock = listen(*split_address(settings.metrics_listen), "metrics_listen")
            # Up first: /ready answers 503 while the database is waited for.
            self._metrics_server = await metrics.serve_http(
                metrics_sock, ready=lambda: self.ready and not self.draining
            )
        self.backend = await self._open_database()
        self.app = App.load(settings)
        self.app.backend = self.backend
        self.db = await self.backend.connect()
        self._host_keys = [asyncssh.read_private_key(p) for p in ensure_host_keys(settings)]
        self._options = await self._ssh_options()
        layout.sweep_all(settings.repos_dir)
        self.app.git.pool.fill()
        self._spawn(self._listener.accept_loop())
        await sync_keydir(settings, self.backend)
        self.ready = True
        log_event(log, "listening", address=settings.listen, data_dir=str(settings.data_dir))
        if host_warning:
            log_event(log, "settings.warning", logging.WARNING, problem=host_warning)

    async def _open_database(self) -> Backend:
        """The database, brought up to date. A server that does not answer (PostgreSQL
        down or restarting) is waited for, said once in the log: the SSH port is taken
        but not served and /ready answers 503 until it is back. Any other problem (a
        wrong password, a newer schema) stops the start: only the operator can fix it."""
        delay, said = 0.5, False
        while True:
            try:
                backend = await store_db.open_backend(self.settings)
            except Unreachable as problem:
                if not said:
                    log_event(
                        log,
                        "database.unreachable",
                        logging.ERROR,
                        error=problem.message,
                        then="waiting for it",
                    )
                    said = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DATABASE_WAIT)
                continue
            if said:
                log_event(log, "database.reachable")
            return backend

    async def _connect(self) -> Database:
        assert self.backend is not None  # opened at start, before any connection
        return await self.backend.connect()

    def _current_options(self) -> asyncssh.SSHServerConnectionOptions:
        assert self._options is not None  # made at start, before the accept loop
        return self._options

    async def _ssh_options(self) -> asyncssh.SSHServerConnectionOptions:
        settings = self.settings
        return await asyncssh.SSHServerConnectionOptions.construct(
            server_factory=lambda: GatewaySSHServer(self),
            server_host_keys=self._host_keys,
            encoding=None,  # Git speaks bytes
            allow_pty=True,  # `ssh -t` gets the greeting; see terminal.py
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_scp=False,
            password_auth=False,
            kbdint_auth=False,
            gss_kex=False,
            gss_auth=False,
            host_based_auth=False,
            login_timeout=settings.login_timeout,
            keepalive_interval=settings.keepalive_interval or None,
            keepalive_count_max=3,
            server_version="gateway",
            encryption_algs=asyncssh_seam.ENCRYPTION_ALGS,  # no CBC: see send_fewer_packets
        )

    async def stop(self) -> None:
        """Stop accepting; let running sessions finish for up to `grace_period` seconds;
        then close every connection. A push cut off here leaves its quarantine, which the
        next start sweeps: refs only ever hold their old or their new values."""
        self.draining = True
        if self._listener is not None:
            self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        log_event(
            log,
            "stopping",
            sessions=self.sessions,
            connections=len(self.servers),
            grace_seconds=self.settings.grace_period,
        )
        for server in list(self.servers):
            if server.sessions == 0 and server.conn is not None:
                server.conn.close()
        try:
            await asyncio.wait_for(self.no_sessions.wait(), self.settings.grace_period)
        except TimeoutError:
            log_event(log, "stopping.grace_expired", logging.WARNING, sessions=self.sessions)
        for server in list(self.servers):
            if server.conn is not None:
                server.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Server is shutting down")
        try:  # sessions cut off kill their workers as they end
            await asyncio.wait_for(self.no_sessions.wait(), 5)
        except TimeoutError:
            pass
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.app is not None:
            await self.app.git.pool.close()
        if self.db is not None:
            await self.db.close()
        await self.last_use.close()
        if self.backend is not None:
            await self.backend.close()
        log_event(log, "stopped")

    async def reload(self) -> None:
        """SIGHUP: read the settings again and resync the keydir; connections stay."""
        try:
            new = self.reload_settings()
        except Refusal as refusal:
            log_event(log, "reload.failed", logging.ERROR, error=refusal.message)
            return
        changed = []
        for name in vars(new):
            if name == "data_dir" or getattr(new, name) == getattr(self.settings, name):
                continue
            if name in RESTART_ONLY:
                log_event(log, "reload.needs_restart", logging.WARNING, setting=name)
                continue
            setattr(self.settings, name, getattr(new, name))
            changed.append(name)
        logs.setup(self.settings.log_level, self.settings.log_format)
        self._options = await self._ssh_options()  # new connections get new timeouts
        log_event(log, "reload", changed=",".join(changed) or "-")
        self._reload_trust()
        if self.backend is not None:
            await sync_keydir(self.settings, self.backend)

    def _reload_trust(self) -> None:
        """The CA and revocation files again; a file with a mistake keeps the old lists.
        Connections whose certificate the new lists refuse (revoked, its CA no longer
        trusted) are closed: revocation is for the logins already in, too."""
        settings = self.settings
        try:
            self.trust = certificates.load(
                settings.trusted_user_ca_keys, settings.revoked_user_certificates
            )
        except Refusal as refusal:
            log_event(log, "certificates.reload_failed", logging.ERROR, error=refusal.message)
            return
        log_event(
            log,
            "certificates.loaded",
            cas=len(self.trust.ca_blobs),
            revoked=len(self.trust.revoked.serials)
            + len(self.trust.revoked.key_ids)
            + len(self.trust.revoked.key_fingerprints),
        )
        for server in list(self.servers):
            cert = server.certificate_facts
            if cert is None or server.conn is None:
                continue
            host = server.peer.rpartition(":")[0]
            reason = self.trust.refusal(cert, host, time.time())
            if reason is not None:
                log_event(
                    log, "certificate.closed", peer=server.peer, reason=reason, **cert.log_fields()
                )
                server.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Certificate revoked")

    # --- connections and sessions in flight ----------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` in the background, cancelled at stop."""
        self._spawn(coro)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_closed(self, server: GatewaySSHServer) -> None:
        self.servers.discard(server)
        if server.ticket is not None:
            self.limits.closed(server.ticket)
        metrics.UNAUTHENTICATED.set(self.limits.unauthenticated)

    def session_started(self) -> None:
        self.sessions += 1
        self.no_sessions.clear()
        metrics.SESSIONS.inc()

    def session_ended(self) -> None:
        self.sessions -= 1
        metrics.SESSIONS.dec()
        if self.sessions == 0:
            self.no_sessions.set()


async def sync_keydir(settings: Settings, backend: Backend) -> None:
    """Pick up the keydir at start and on SIGHUP (operators also run `gateway keys sync`)."""
    if not settings.keydir.is_dir():
        return
    db = await backend.connect()
    try:
        report = await keydir.sync(db, settings.keydir, settings.hooks_dir)
    except Refusal as refusal:
        log_event(log, "keydir.failed", logging.WARNING, error=refusal.message)
        return
    finally:
        await db.close()
    log_event(log, "keydir.sync", added=len(report.added), removed=len(report.removed))
    for error in report.errors:
        log_event(log, "keydir.error", logging.WARNING, error=error)


async def run(settings: Settings, reload_settings: Callable[[], Settings]) -> None:
    logs.setup(settings.log_level, settings.log_format)
    gateway = Gateway(settings, reload_settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # A stop while the start waits for the database ends the wait.
    starting = asyncio.ensure_future(gateway.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        await gateway.stop()
        return
    stopping.cancel()
    starting.result()  # a failed start raises here
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway._spawn(gateway.reload()))
    print(f"gateway listening on {settings.listen} (data dir {settings.data_dir})", flush=True)
    await stop.wait()
    await gateway.stop()
