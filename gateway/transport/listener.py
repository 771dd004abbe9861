"""The listening socket and the accept loop: the PROXY header and the caps in limits.py
come first, then the connection is handed to asyncssh.

Connections are accepted here rather than by asyncssh's listener so that the PROXY
protocol header can be read first and the caps in limits.py apply before any SSH work.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from .. import metrics
from ..config import Settings
from ..errors import Refusal
from ..logs import log_event
from . import asyncssh_seam, limits, proxyproto
from .limits import ConnectionLimits

log = logging.getLogger("gateway")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def listen(host: str, port: int, setting: str) -> socket.socket:
    """A non-blocking listening socket, or a Refusal saying what to check."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        hint = (
            "another gateway or sshd may be running there"
            if exc.errno == errno.EADDRINUSE
            else "ports below 1024 need CAP_NET_BIND_SERVICE"
            if exc.errno == errno.EACCES
            else "check the address"
        )
        raise Refusal(
            f"Cannot listen on {host}:{port} (setting {setting!r}): {exc.strerror}; {hint}"
        ) from None
    sock.setblocking(False)
    return sock


class Listener:
    """Accepts connections on `sock` and hands each, once admitted, to asyncssh with the
    options `options()` returns at that moment (a reload changes them for new ones)."""

    def __init__(
        self,
        sock: socket.socket,
        settings: Settings,
        caps: ConnectionLimits,
        options: Callable[[], asyncssh.SSHServerConnectionOptions],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.sock = sock
        self.settings = settings
        self.limits = caps
        self.options = options
        self.spawn = spawn

    def close(self) -> None:
        self.sock.close()

    async def accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                client, address = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log_event(log, "accept.failed", logging.WARNING, error=exc.strerror)
                    await asyncio.sleep(0.1)  # out of descriptors: let some close
                    continue
                raise
            self.spawn(self._connection(client, address))
            await asyncio.sleep(0)  # sock_accept does not yield while the backlog is full

    async def _connection(self, client: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        host, port = address[0], address[1]
        client.setblocking(False)
        if self.settings.proxy_protocol:
            try:
                real = await asyncio.wait_for(
                    proxyproto.read_header(lambda n: _recv_exactly(loop, client, n)),
                    self.settings.login_timeout,
                )
            except (TimeoutError, proxyproto.ProxyHeaderError, OSError, EOFError) as exc:
                reason = str(exc) or exc.__class__.__name__
                log_event(
                    log,
                    "connection.refused",
                    peer=f"{host}:{port}",
                    reason=f"PROXY header: {reason}",
                )
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
        options = self.options()
        admitted = ticket

        def factory() -> asyncssh.SSHServerConnection:
            conn = asyncssh_seam.new_server_connection(loop, options, peer, admitted)
            holder["conn"] = conn
            asyncssh_seam.send_fewer_packets(conn)
            asyncssh_seam.acknowledge_at_once(conn)
            # The first bytes show a live client.
            asyncssh_seam.on_first_bytes(
                conn, lambda: self.limits.progressed(admitted, limits.TALKING)
            )
            return conn

        try:
            await loop.create_connection(factory, sock=client)
        except Exception as exc:
            log_event(log, "connection.failed", peer=peer, error=exc.__class__.__name__)
            self.limits.closed(ticket)
            client.close()


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise EOFError("connection closed before the PROXY header ended")
        data += chunk
    return data
