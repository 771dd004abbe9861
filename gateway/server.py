"""The SSH server: accepting connections under limits, public-key authentication, one
command a session, reload on SIGHUP and a graceful stop on SIGTERM.

Identity is decided only from a key whose signature was verified. asyncssh asks
`validate_public_key` both for keys that are merely offered (probes) and for signed
requests, and does not say which key finally signed; so the connection's own
verification step is wrapped to record the key whose signature it checked (the flaw
behind soft-serve's CVE-2023-43809 was to take identity from an offered key).

Connections are accepted here rather than by asyncssh's listener so that the PROXY
protocol header can be read first and the caps in limits.py apply before any SSH work.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time
from collections.abc import Callable

import aiosqlite
import asyncssh

from . import access, commands, keydir, limits, logs, metrics, names, proxyproto, sshkeys
from .app import App
from .commands.context import Context
from .config import Settings
from .datadir import ensure_host_keys
from .errors import Refusal
from .git import layout
from .limits import ConnectionLimits
from .logs import log_event
from .policy import Identity
from .store import access_keys, keys
from .store import db as store_db
from .terminal import CookedReader, CrlfWriter

log = logging.getLogger("gateway")

# Settings that only a restart changes: SIGHUP logs that they were left as they were.
RESTART_ONLY = ("listen", "proxy_protocol", "metrics_listen")


class GatewaySSHServer(asyncssh.SSHServer):
    """One per connection."""

    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.ticket: int | None = None
        self.failures = 0
        self._refused_because = "unknown-key"  # why the last key was refused, for the log
        self.identity: Identity | None = None
        self.sessions = 0
        self.opened = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def db(self) -> aiosqlite.Connection:
        return self.gateway.db  # shared by all connections, for key lookups only

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.peer, self.ticket = getattr(conn, "gateway_peer", ("?", None))
        self.gateway.servers.add(self)
        metrics.CONNECTIONS.inc()
        verify = conn.validate_public_key

        async def validate_and_record(username, key_data, msg, signature) -> bool:
            self._refused_because = "bad-signature"  # unless validate_public_key says why
            ok = await verify(username, key_data, msg, signature)
            if ok and msg:
                # The signature over this key checked out: it alone decides who this is.
                ok = await self._set_identity(key_data)
                if not ok:
                    self._refused_because = "key-removed"
            if not ok:
                self._count_failure(key_data, username)
            return ok

        conn.validate_public_key = validate_and_record  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        self.gateway.connection_closed(self)
        metrics.CONNECTIONS.dec()
        log_event(log, "connection.close", peer=self.peer,
                  account=self.identity.account if self.identity else "-",
                  seconds=round(time.monotonic() - self.opened, 3))

    def _count_failure(self, key_data: bytes, username: str) -> None:
        self.failures += 1
        metrics.AUTH.labels("failed").inc()
        # The user name is the client's text: escaped and bounded (logfmt quotes the rest),
        # so the operator can tell `ssh root@...` from a key nobody registered.
        log_event(log, "auth.failed", peer=self.peer, user=names.printable(username, 64),
                  reason=self._refused_because, key=sshkeys.fingerprint(key_data),
                  attempt=self.failures)
        if self.failures >= self.settings.max_auth_tries and self.conn is not None:
            log_event(log, "auth.too_many", peer=self.peer, attempts=self.failures)
            self.conn.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, "Too many authentication failures"
            )

    def begin_auth(self, username: str) -> bool:
        if self.ticket is not None:
            self.gateway.limits.progressed(self.ticket, limits.AUTHENTICATING)
        return True  # authentication is always required

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Only says whether this key may be tried; identity is not decided here.
        if username != self.settings.ssh_user:
            self._refused_because = "unknown-user"
            return False
        fingerprint = sshkeys.fingerprint(key.public_data)
        stored = await keys.find(self.db, fingerprint)
        if stored is not None:
            if stored.account_disabled:
                self._refused_because = "account-disabled"
            return not stored.account_disabled
        if await access_keys.find(self.db, fingerprint) is not None:
            return True
        self._refused_because = "unknown-key"
        return False

    async def _set_identity(self, key_data: bytes) -> bool:
        self.identity = await access.identity_for_key(self.db, sshkeys.fingerprint(key_data))
        return self.identity is not None  # None: removed or disabled in the meantime

    def auth_completed(self) -> None:
        if self.ticket is not None:
            self.gateway.limits.authenticated(self.ticket)
        metrics.AUTH.labels("ok").inc()
        log_event(log, "auth.ok", peer=self.peer, account=self.identity.account,
                  key=self.identity.key_fingerprint)
        self._start_idle()

    def session_requested(self):
        if self.gateway.draining:
            return False
        if self.sessions >= self.settings.max_sessions:
            log_event(log, "session.refused", peer=self.peer, reason="max_sessions",
                      limit=self.settings.max_sessions)
            return False
        self.sessions += 1
        self.gateway.session_started()
        self._cancel_idle()
        channel = self.conn.create_server_channel()
        channel._process_exec_request = _exec_request_of(channel)  # type: ignore[attr-defined]
        return channel, _Session(self._session_ended, handle_session, None, 0, False)

    def _session_ended(self) -> None:
        self.sessions -= 1
        self.gateway.session_ended()
        if self.sessions == 0:
            if self.gateway.draining and self.conn is not None:
                self.conn.close()
            else:
                self._start_idle()

    # A connection with no session open for `idle_timeout` seconds is closed.
    def _start_idle(self) -> None:
        self._cancel_idle()
        if self.settings.idle_timeout and self.sessions == 0:
            self._idle = asyncio.get_running_loop().call_later(self.settings.idle_timeout,
                                                               self._idle_expired)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        log_event(log, "connection.idle", peer=self.peer, seconds=self.settings.idle_timeout)
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Idle timeout")


def _exec_request_of(channel: asyncssh.SSHServerChannel):
    """asyncssh refuses an exec request that is not UTF-8 at the channel level, and the
    user sees only "exec request failed". Pass it on instead, invalid bytes as surrogates,
    for the command parser to refuse with an ERROR line like any other bad command."""

    def process_exec_request(packet) -> bool:
        command = packet.get_string()
        packet.check_end()
        return channel._start_session(command=command.decode("utf-8", "surrogateescape"))

    return process_exec_request


class _Session(asyncssh.SSHServerProcess):
    """A session that reports when it is gone, whether or not a command ever ran."""

    def __init__(self, on_end: Callable[[], None], *args) -> None:
        super().__init__(*args)
        self._on_end: Callable[[], None] | None = on_end

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._on_end is not None:
                on_end, self._on_end = self._on_end, None
                on_end()


async def handle_session(process: asyncssh.SSHServerProcess) -> None:
    server: GatewaySSHServer = process.get_extra_info("connection").get_owner()
    verb, target = commands.describe(process.command)
    started = time.monotonic()
    status = 1
    try:
        if server.identity is None:
            pass  # not authenticated: nothing to run
        elif process.subsystem is not None:
            verb = "subsystem"
            process.stderr.write(b"ERROR: Subsystems are not supported\n")
        else:
            # A connection of its own: the server's shared one only reads keys.
            db = await store_db.connect(server.settings.db_path, migrate_schema=False)
            try:
                if await access.still_valid(db, server.identity):
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
        log_event(log, "session.failed", logging.ERROR, peer=server.peer, verb=verb,
                  error=f"{exc.__class__.__name__}: {exc}")
        log.debug("session failure details", exc_info=True)
        try:
            process.stderr.write(b"ERROR: internal error; the operator has the details\n")
        except Exception:
            pass
    finally:
        seconds = time.monotonic() - started
        metrics.COMMANDS.labels(verb, "ok" if status == 0 else "error").inc()
        metrics.DURATION.labels(verb).observe(seconds)
        log_event(log, "command", peer=server.peer,
                  account=server.identity.account if server.identity else "-",
                  verb=verb, target=target, status=status, seconds=round(seconds, 3))
        try:
            process.exit(status)
        except Exception:
            pass


async def run_command(process: asyncssh.SSHServerProcess, server: GatewaySSHServer,
                      db: aiosqlite.Connection) -> int:
    stdin = metrics.CountingReader(process.stdin, metrics.BYTES.labels("in"))
    stdout = metrics.CountingWriter(process.stdout, metrics.BYTES.labels("out"))
    stderr = metrics.CountingWriter(process.stderr, metrics.BYTES.labels("out"))
    terminal = bool(process.get_terminal_type()) and not commands.is_git(process.command)
    if terminal:
        stdout, stderr = CrlfWriter(stdout), CrlfWriter(stderr)
        stdin = CookedReader(stdin, stdout)
    ctx = Context(server.gateway.app, db, server.identity, stdin, stdout, stderr, server.peer,
                  terminal=terminal)
    return await commands.run(ctx, process.command)


class Gateway:
    """The running server: settings, the shared database connection, the listener, and
    the connections and sessions in flight."""

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
        self.db: aiosqlite.Connection | None = None
        self.app: App | None = None
        self._options: asyncssh.SSHServerConnectionOptions | None = None
        self._host_keys: list = []
        self._listener: socket.socket | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    # --- start and stop ---------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        # Looks the machine's name up now (getfqdn may ask DNS), not in a session's message.
        host_warning = settings.loopback_host_warning()
        self._listener = _listen(settings.listen_host, settings.listen_port, "listen")
        metrics_sock = None
        if settings.metrics_listen:
            metrics_sock = _listen(*_split(settings.metrics_listen), "metrics_listen")
        self.app = App.load(settings)
        self.db = await store_db.connect(settings.db_path)
        self._host_keys = [asyncssh.read_private_key(p) for p in ensure_host_keys(settings)]
        self._options = await self._ssh_options()
        layout.sweep_all(settings.repos_dir)
        if metrics_sock is not None:
            self._metrics_server = await metrics.serve_http(
                metrics_sock, ready=lambda: self.ready and not self.draining)
        self.app.git.pool.fill()
        self._spawn(self._accept_loop())
        await sync_keydir(settings)
        self.ready = True
        log_event(log, "listening", address=settings.listen, data_dir=str(settings.data_dir))
        if host_warning:
            log_event(log, "settings.warning", logging.WARNING, problem=host_warning)

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
        log_event(log, "stopping", sessions=self.sessions, connections=len(self.servers),
                  grace_seconds=self.settings.grace_period)
        for server in list(self.servers):
            if server.sessions == 0 and server.conn is not None:
                server.conn.close()
        try:
            await asyncio.wait_for(self.no_sessions.wait(), self.settings.grace_period)
        except asyncio.TimeoutError:
            log_event(log, "stopping.grace_expired", logging.WARNING, sessions=self.sessions)
        for server in list(self.servers):
            if server.conn is not None:
                server.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Server is shutting down")
        try:  # sessions cut off kill their workers as they end
            await asyncio.wait_for(self.no_sessions.wait(), 5)
        except asyncio.TimeoutError:
            pass
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.app is not None:
            await self.app.git.pool.close()
        if self.db is not None:
            await self.db.close()
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
        await sync_keydir(self.settings)

    # --- connections --------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, address = await loop.sock_accept(self._listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log_event(log, "accept.failed", logging.WARNING, error=exc.strerror)
                    await asyncio.sleep(0.1)  # out of descriptors: let some close
                    continue
                raise
            self._spawn(self._connection(client, address))
            await asyncio.sleep(0)  # sock_accept does not yield while the backlog is full

    async def _connection(self, client: socket.socket, address) -> None:
        loop = asyncio.get_running_loop()
        host, port = address[0], address[1]
        client.setblocking(False)
        if self.settings.proxy_protocol:
            try:
                real = await asyncio.wait_for(
                    proxyproto.read_header(lambda n: _recv_exactly(loop, client, n)),
                    self.settings.login_timeout)
            except (proxyproto.ProxyHeaderError, asyncio.TimeoutError, OSError, EOFError) as exc:
                reason = str(exc) or exc.__class__.__name__
                log_event(log, "connection.refused", peer=f"{host}:{port}",
                          reason=f"PROXY header: {reason}")
                metrics.CONNECTIONS_TOTAL.labels("bad_proxy_header").inc()
                client.close()
                return
            if real is not None:
                host, port = real
        peer = f"{host}:{port}"
        holder: dict[str, asyncssh.SSHServerConnection] = {}

        def drop() -> None:
            log_event(log, "connection.dropped", peer=peer, reason="max_startups")
            metrics.CONNECTIONS_TOTAL.labels("dropped_unauthenticated").inc()
            conn = holder.get("conn")
            if conn is not None:
                conn.abort()
            else:
                client.close()

        def has_sent() -> bool:
            try:
                return bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return False

        ticket, reason = self.limits.admit(host, drop, has_sent)
        metrics.UNAUTHENTICATED.set(self.limits.unauthenticated)
        if ticket is None:
            log_event(log, "connection.refused", peer=peer, reason=reason)
            metrics.CONNECTIONS_TOTAL.labels(f"refused_{reason}").inc()
            client.close()
            return
        metrics.CONNECTIONS_TOTAL.labels("accepted").inc()
        log_event(log, "connection.open", peer=peer)
        options = self._options

        def factory() -> asyncssh.SSHServerConnection:
            conn = asyncssh.SSHServerConnection(loop, options)
            conn.gateway_peer = (peer, ticket)  # read by GatewaySSHServer.connection_made
            holder["conn"] = conn
            received = conn.data_received

            def data_received(data: bytes, datatype=None) -> None:
                # The first bytes show a live client; then back to asyncssh's own method.
                self.limits.progressed(ticket, limits.TALKING)
                conn.data_received = received
                received(data, datatype)

            conn.data_received = data_received
            return conn

        try:
            await loop.create_connection(factory, sock=client)
        except Exception as exc:
            log_event(log, "connection.failed", peer=peer, error=exc.__class__.__name__)
            self.limits.closed(ticket)
            client.close()

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


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _listen(host: str, port: int, setting: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        hint = ("another gateway or sshd may be running there" if exc.errno == errno.EADDRINUSE
                else "ports below 1024 need CAP_NET_BIND_SERVICE" if exc.errno == errno.EACCES
                else "check the address")
        raise Refusal(f"Cannot listen on {host}:{port} (setting {setting!r}): "
                      f"{exc.strerror}; {hint}") from None
    sock.setblocking(False)
    return sock


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise EOFError("connection closed before the PROXY header ended")
        data += chunk
    return data


async def sync_keydir(settings: Settings) -> None:
    """Pick up the keydir at start and on SIGHUP (operators also run `gateway keys sync`)."""
    if not settings.keydir.is_dir():
        return
    db = await store_db.connect(settings.db_path, migrate_schema=False)
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
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: gateway._spawn(gateway.reload()))
    print(f"gateway listening on {settings.listen} (data dir {settings.data_dir})", flush=True)
    await stop.wait()
    await gateway.stop()
