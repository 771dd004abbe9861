"""One asyncssh `SSHServer` per connection: public-key authentication, the idle timer,
the cap on sessions, and the adapter that hands an exec request to the session core.

Identity is decided only from a key whose signature was verified. asyncssh asks
`validate_public_key` both for keys that are merely offered (probes) and for signed
requests, and does not say which key finally signed; so the connection's own
verification step is wrapped (asyncssh_seam.wrap_key_check) to record the key whose
signature it checked (the flaw behind soft-serve's CVE-2023-43809 was to take identity
from an offered key). A user certificate is checked in that same step, by the gateway's
own policy (gateway/certificates.py) and the signature by its key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import asyncssh

from .. import access, metrics, names, sshkeys
from ..certificates import CertificateFacts
from ..config import Settings
from ..decision import Identity
from ..git import protocol
from ..logs import log_event
from ..session import Streams, Transport, run_session
from ..store import access_keys, keys
from ..store.database import Database, DatabaseError
from . import asyncssh_seam, limits

DATABASE_DOWN = "the gateway's database did not answer; try again in a moment"

if TYPE_CHECKING:
    from .lifecycle import Gateway

log = logging.getLogger("gateway")


class GatewaySSHServer(asyncssh.SSHServer):
    """One per connection."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer = ""
        self.ticket: int | None = None
        self.failures = 0
        self._refused_because = "unknown-key"  # why the last key was refused, for the log
        self.identity: Identity | None = None
        self.certificate_facts: CertificateFacts | None = None  # for a certificate login
        self.sessions = 0
        self.opened = time.monotonic()
        self._idle: asyncio.TimerHandle | None = None

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def db(self) -> Database:
        assert self.gateway.db is not None  # set at start, before any connection
        return self.gateway.db  # shared by all connections, for key lookups only

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.peer, self.ticket = asyncssh_seam.peer_of(conn)
        self.gateway.servers.add(self)
        metrics.CONNECTIONS.inc()
        asyncssh_seam.wrap_key_check(conn, self._recording_identity)

    def _recording_identity(self, verify: asyncssh_seam.KeyCheck) -> asyncssh_seam.KeyCheck:
        async def validate_and_record(
            username: str, key_data: bytes, msg: bytes, signature: bytes
        ) -> bool:
            try:
                return await check(username, key_data, msg, signature)
            except DatabaseError as exc:
                # The key cannot be looked up (PostgreSQL restarting, say): one line for
                # the operator, one for the user (ssh prints the disconnect's reason)
                # rather than a refusal that reads like a wrong key.
                log_event(log, "auth.database", logging.ERROR, peer=self.peer, error=str(exc))
                raise asyncssh.DisconnectError(
                    asyncssh.DISC_SERVICE_NOT_AVAILABLE, DATABASE_DOWN
                ) from None

        async def check(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
            if asyncssh_seam.claims_certificate(key_data):
                return await self._certificate_login(username, key_data, msg, signature)
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

        return validate_and_record

    async def _certificate_login(
        self, username: str, key_data: bytes, msg: bytes, signature: bytes
    ) -> bool:
        """A user certificate, checked here from end to end (asyncssh's own path would
        take the login name as the principal): the trust policy, the principal that names
        an active account, then the login's signature by the certified key. Identity
        comes only from a certificate whose signature was checked."""
        fields: dict[str, object] = {}
        try:
            facts, key = asyncssh_seam.read_certificate(key_data)
        except asyncssh_seam.MalformedCertificate:
            reason = "cert-malformed"
        else:
            fields = facts.log_fields()
            identity, reason = None, "unknown-user"
            if username == self.settings.ssh_user:
                host = self.peer.rpartition(":")[0]  # after PROXY: the client, not the balancer
                identity, reason = await access.identity_for_certificate(
                    self.db, self.gateway.trust, facts, host
                )
            if identity is not None:
                if not msg:
                    return True  # a probe: it may be tried; nothing decided yet
                if asyncssh_seam.signature_checks(self.conn_or_fail(), key, msg, signature):
                    self.certificate_facts = facts
                    self.identity = identity
                    return True
                reason = "bad-signature"
        self._refused_because = reason
        self._count_failure(key_data, username, **fields)
        return False

    def conn_or_fail(self) -> asyncssh.SSHServerConnection:
        assert self.conn is not None  # authentication runs on a made connection
        return self.conn

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_idle()
        self.gateway.connection_closed(self)
        metrics.CONNECTIONS.dec()
        log_event(
            log,
            "connection.close",
            peer=self.peer,
            account=self.identity.account if self.identity else "-",
            seconds=round(time.monotonic() - self.opened, 3),
        )

    def _count_failure(self, key_data: bytes, username: str, **fields: object) -> None:
        self.failures += 1
        metrics.AUTH.labels("failed").inc()
        # The user name is the client's text: escaped and bounded (logfmt quotes the rest),
        # so the operator can tell `ssh root@...` from a key nobody registered.
        log_event(
            log,
            "auth.failed",
            peer=self.peer,
            user=names.printable(username, 64),
            reason=self._refused_because,
            key=sshkeys.fingerprint(key_data),
            attempt=self.failures,
            **fields,
        )
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
                return False
            if stored.expired(time.time()):
                self._refused_because = "key-expired"
                return False
            return True
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
        assert self.identity is not None  # set by the verified signature
        cert = self.certificate_facts
        log_event(
            log,
            "auth.ok",
            peer=self.peer,
            account=self.identity.account,
            key=self.identity.key_fingerprint,
            **(cert.log_fields() if cert is not None else {}),
        )
        if cert is not None and self.gateway.last_use.due(f"cert:{cert.serial}:{cert.key_id}"):
            # In the audit log too, at most once a minute a certificate: who logged in
            # with which certificate is asked after an incident.
            self.gateway.spawn(
                self.gateway.last_use.audit_certificate(self.identity.account, cert, self.peer)
            )
        fingerprint = self.identity.key_fingerprint
        stored_key = not self.identity.is_access_key and self.identity.certificate is None
        if stored_key and self.gateway.last_use.due(fingerprint):
            self.gateway.spawn(self.gateway.last_use.record(fingerprint))
        self._start_idle()

    def session_requested(
        self,
    ) -> bool | tuple[asyncssh.SSHServerChannel, asyncssh.SSHServerProcess]:
        if self.gateway.draining or self.conn is None:
            return False
        if self.sessions >= self.settings.max_sessions:
            log_event(
                log,
                "session.refused",
                peer=self.peer,
                reason="max_sessions",
                limit=self.settings.max_sessions,
            )
            return False
        self.sessions += 1
        self.gateway.session_started()
        self._cancel_idle()
        channel = self.conn.create_server_channel()
        asyncssh_seam.pass_undecodable_commands(channel)
        return channel, asyncssh_seam.EndReportingProcess(self._session_ended, handle_session)

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
            self._idle = asyncio.get_running_loop().call_later(
                self.settings.idle_timeout, self._idle_expired
            )

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_expired(self) -> None:
        log_event(log, "connection.idle", peer=self.peer, seconds=self.settings.idle_timeout)
        if self.conn is not None:
            self.conn.disconnect(asyncssh.DISC_BY_APPLICATION, "Idle timeout")


async def handle_session(process: asyncssh.SSHServerProcess) -> None:
    """The exec-request adapter: the channel's streams to the session core, the status
    back to the client."""
    server: GatewaySSHServer = process.get_extra_info("connection").get_owner()
    status = 1
    try:
        if server.identity is None:
            return  # not authenticated: nothing to run
        app = server.gateway.app
        assert app is not None  # set at start, before any connection
        conn = server.conn

        def key_refused() -> None:
            if conn is not None:
                conn.close()  # the key is gone: so is this connection

        transport = Transport(
            via=None,
            cooks_terminal=True,  # the client's terminal is raw: see terminal.py
            client_gone=(
                BrokenPipeError,
                ConnectionError,
                asyncssh.DisconnectError,
                asyncssh.BreakReceived,
                asyncssh.TerminalSizeChanged,
            ),
            key_refused=key_refused,
        )
        status = await run_session(
            app,
            server.identity,
            process.command,
            Streams(process.stdin, process.stdout, process.stderr),
            peer=server.peer,
            terminal=bool(process.get_terminal_type()),
            transport=transport,
            subsystem=process.subsystem,
            # Of the variables the client sent (`env` requests), GIT_PROTOCOL alone.
            git_protocol=protocol.from_environment(process.env),
        )
    finally:
        try:
            process.exit(status)
        except Exception:
            pass
