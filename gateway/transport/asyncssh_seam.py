"""Every asyncssh internal the gateway relies on, in one place, each with its reason.

asyncssh's public API does not give us five things we need: (1) to accept sockets
ourselves (so the PROXY header and the caps in limits.py come before any SSH work),
(2) to know which key's *signature* was verified (identity must come from it, not from a
key merely offered: soft-serve's CVE-2023-43809), and (3) to pass on an exec request that
is not UTF-8 (asyncssh refuses it at the channel level, so the user would only see "exec
request failed" instead of our ERROR line), and (4) to read a user certificate's serial,
key id, type and validity (kept in private attributes) and check a login's signature
with its key ourselves (asyncssh's own certificate path takes the login name as the
principal, and checks `source-address` against the socket's peer, which behind a PROXY
balancer is the balancer), and (5) to send a clone's bytes in as few SSH packets and
socket writes as OpenSSH does (asyncssh's per-packet path is most of the server's CPU
per clone). Everything below serves one of these.

`INTERNALS` lists the names and call signatures used here; tests/test_seam_asyncssh.py
checks them against the installed asyncssh and names what an upgrade removed or changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import asyncssh
import asyncssh.encryption
import asyncssh.public_key
from asyncssh.channel import SSHServerChannel
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import SSHPacket, String

from ..certificates import CertificateFacts

# (what, the parameters we call it with or replace it by, starting with self)
INTERNALS: tuple[tuple[str, object, tuple[str, ...]], ...] = (
    ("SSHServerConnection.__init__", asyncssh.SSHServerConnection, ("self", "loop", "options")),
    (
        "SSHServerConnection.data_received",
        asyncssh.SSHServerConnection,
        ("self", "data", "datatype"),
    ),
    (
        "SSHServerConnection.validate_public_key",
        asyncssh.SSHServerConnection,
        ("self", "username", "key_data", "msg", "signature"),
    ),
    ("SSHServerChannel._process_exec_request", SSHServerChannel, ("self", "packet")),
    ("SSHServerChannel._start_session", SSHServerChannel, ("self", "command", "subsystem")),
    ("SSHServerChannel._service_next_request", SSHServerChannel, ("self",)),
    (
        "SSHServerProcess.__init__",
        asyncssh.SSHServerProcess,
        ("self", "process_factory", "sftp_factory", "sftp_version", "allow_scp"),
    ),
    ("SSHServerProcess.connection_lost", asyncssh.SSHServerProcess, ("self", "exc")),
    ("SSHPacket.get_string", SSHPacket, ("self",)),
    ("SSHPacket.check_end", SSHPacket, ("self",)),
    ("decode_ssh_certificate", asyncssh.public_key, ("data",)),
    ("SSHServerConnection.connection_made", asyncssh.SSHServerConnection, ("self", "transport")),
    ("SSHServerConnection.send_packet", asyncssh.SSHServerConnection, ("self", "pkttype")),
    ("get_default_encryption_algs", asyncssh.encryption, ()),
)
# Private attributes of a decoded OpenSSH certificate that read_certificate reads, and
# the connection's session id that a login's signature covers.
CERTIFICATE_ATTRIBUTES = ("_serial", "_cert_type", "_key_id", "_valid_after", "_valid_before")
SESSION_ID_ATTRIBUTE = "_session_id"


def missing_internal(name: str, owner: object, params: tuple[str, ...]) -> str | None:
    """Why `name` is no longer what this module relies on, or None if it still is."""
    attribute = name.rpartition(".")[2]
    function = getattr(owner, attribute, None)
    if function is None:
        return f"asyncssh {asyncssh.__version__} has no {name}"
    try:
        found = tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return f"asyncssh {asyncssh.__version__}: {name} has no inspectable signature"
    if found[: len(params)] != params:
        return (
            f"asyncssh {asyncssh.__version__}: {name} takes {found}, "
            f"gateway/transport/asyncssh_seam.py expects it to start with {params}"
        )
    return None


# --- (1) accepting connections ourselves ---------------------------------------------


def new_server_connection(
    loop: asyncio.AbstractEventLoop,
    options: asyncssh.SSHServerConnectionOptions,
    peer: str,
    ticket: int | None,
) -> asyncssh.SSHServerConnection:
    """The protocol asyncssh's own listener would make for an accepted socket (its
    constructor is not public API), carrying the peer (after PROXY) and the limits
    ticket for the connection's SSHServer to read in `connection_made`."""
    conn = asyncssh.SSHServerConnection(loop, options)
    conn.gateway_peer = (peer, ticket)  # type: ignore[attr-defined]  # read by peer_of
    return conn


def peer_of(conn: asyncssh.SSHServerConnection) -> tuple[str, int | None]:
    """What new_server_connection attached: (peer, limits ticket)."""
    return getattr(conn, "gateway_peer", ("?", None))


def on_first_bytes(conn: asyncssh.SSHServerConnection, callback: Callable[[], None]) -> None:
    """Call `callback` when the client first sends anything (a live client, not one that
    only opened a socket), then hand `data_received` back to asyncssh's own method: the
    hook costs nothing after the first packet."""
    received = conn.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        callback()
        conn.data_received = received  # type: ignore[method-assign]
        received(data, datatype)

    conn.data_received = data_received  # type: ignore[method-assign]


# --- (2) identity from the verified signature --------------------------------------------

# SSHServerConnection.validate_public_key(username, key_data, msg, signature): asyncssh
# calls it both for a key merely offered (msg empty) and for a signed request, and checks
# the signature in it; nothing public says which key finally signed.
KeyCheck = Callable[[str, bytes, bytes, bytes], Awaitable[bool]]


def wrap_key_check(
    conn: asyncssh.SSHServerConnection, wrap: Callable[[KeyCheck], KeyCheck]
) -> None:
    """Replace the connection's verification step by `wrap(original)`, which calls the
    original (the signature check) and then records the key whose signature it checked."""
    conn.validate_public_key = wrap(conn.validate_public_key)  # type: ignore[method-assign]


# --- (4) user certificates -------------------------------------------------------------

CERTIFICATE_SUFFIX = b"-cert-v01@openssh.com"


class MalformedCertificate(Exception):
    """A blob that names a certificate type but is not a certificate asyncssh can read
    (bad encoding, an unknown type, a CA signature that does not check out)."""


def claims_certificate(key_data: bytes) -> bool:
    """Whether a key blob names an OpenSSH certificate type (its first string)."""
    if len(key_data) < 4:
        return False
    (length,) = struct.unpack(">I", key_data[:4])
    return key_data[4 : 4 + length].endswith(CERTIFICATE_SUFFIX)


def read_certificate(key_data: bytes) -> tuple[CertificateFacts, asyncssh.SSHKey]:
    """What the certificate says, and the certified key to check the login's signature
    with. Decoding checks the CA's signature over the certificate."""
    try:
        cert = asyncssh.public_key.decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError, struct.error) as exc:
        raise MalformedCertificate(str(exc) or exc.__class__.__name__) from None
    if cert.is_x509_chain or not all(hasattr(cert, a) for a in CERTIFICATE_ATTRIBUTES):
        raise MalformedCertificate(
            f"not an OpenSSH certificate asyncssh {asyncssh.__version__} reads"
        )
    options = cert.options
    force = options.get("force-command")
    facts = CertificateFacts(
        cert_type=int(cert._cert_type),  # type: ignore[attr-defined]
        serial=int(cert._serial),  # type: ignore[attr-defined]
        key_id=str(cert._key_id),  # type: ignore[attr-defined]
        principals=tuple(str(p) for p in cert.principals),
        valid_after=int(cert._valid_after),  # type: ignore[attr-defined]
        valid_before=int(cert._valid_before),  # type: ignore[attr-defined]
        ca_blob=bytes(cert.signing_key.public_data),
        key_blob=bytes(cert.key.public_data),
        force_command=None if force is None else str(force),
        source_addresses=tuple(options.get("source-address") or ()),
    )
    return facts, cert.key


def signature_checks(
    conn: asyncssh.SSHServerConnection, key: asyncssh.SSHKey, msg: bytes, signature: bytes
) -> bool:
    """The check asyncssh makes for a signed public-key request: the signature by `key`
    over the session id and the request."""
    session_id = getattr(conn, SESSION_ID_ATTRIBUTE, b"")
    if not isinstance(session_id, bytes) or not session_id:
        return False  # no key exchange done: nothing it could have signed
    return bool(key.verify(String(session_id) + msg, signature))


# --- (3) exec requests that are not UTF-8 ----------------------------------------------


def pass_undecodable_commands(channel: asyncssh.SSHServerChannel) -> None:
    """asyncssh refuses an exec request that is not UTF-8 at the channel level, and the
    user sees only "exec request failed". Pass it on instead, invalid bytes as surrogates,
    for the command parser to refuse with an ERROR line like any other bad command.

    The channel looks its request handlers up by name on the instance
    (`_service_next_request`: `'_process_' + request + '_request'`), so an attribute of
    this one channel replaces `_process_exec_request`; `_start_session` is what asyncssh's
    own handler calls once it has the command text."""

    def process_exec_request(packet: SSHPacket) -> bool:
        command = packet.get_string()
        packet.check_end()
        return channel._start_session(  # type: ignore[attr-defined]
            command=command.decode("utf-8", "surrogateescape")
        )

    channel._process_exec_request = process_exec_request  # type: ignore[attr-defined]


# --- (5) fewer packets, fewer writes, no delayed ACKs -------------------------------------

# asyncssh's default ciphers without CBC (it offers none by default; said here, so that
# skipping the CBC countermeasure below stays right if a release changes its defaults).
ENCRYPTION_ALGS = tuple(
    alg.decode()
    for alg in asyncssh.encryption.get_default_encryption_algs()
    if not alg.endswith(b"-cbc")
)
_EMPTY_IGNORE = (String(b""),)


def send_fewer_packets(conn: asyncssh.SSHServerConnection) -> None:
    """Two changes to how a connection sends, neither visible to the client but in its
    packet count. (a) asyncssh sends an empty SSH_MSG_IGNORE before every packet after
    the key exchange: RFC 4251 9.3.1's countermeasure for CBC ciphers, which the gateway
    does not offer (ENCRYPTION_ALGS); it doubled the packets, and their encryption, of
    every clone. (b) The packets asyncssh writes in one pass of the event loop go to the
    socket in one write, as sshd writes its whole output buffer at once: each packet on
    its own cost a `send()` (on loopback the sender's call also does the receiver's TCP
    work). Measured on a clone of 134 MB: 9,588 `send()` calls before, 2,494 after."""
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == _EMPTY_IGNORE:
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[method-assign]
    made = conn.connection_made

    def connection_made(transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        made(CoalescingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    conn.connection_made = connection_made  # type: ignore[method-assign]


def acknowledge_at_once(conn: asyncssh.SSHServerConnection) -> None:
    """Acknowledge every arrival on the connection's socket at once (_ack_now): when it
    is made, and before asyncssh reads each batch of bytes."""
    made = conn.connection_made
    received = conn.data_received
    sock: socket.socket | None = None

    def connection_made(transport: asyncio.BaseTransport) -> None:
        nonlocal sock
        sock = transport.get_extra_info("socket")
        _ack_now(sock)
        made(transport)

    def data_received(data: bytes, datatype: Any = None) -> None:
        _ack_now(sock)
        received(data, datatype)

    conn.connection_made = connection_made  # type: ignore[method-assign]
    conn.data_received = data_received  # type: ignore[method-assign]


def _ack_now(sock: socket.socket | None) -> None:
    """Acknowledge what arrived at once (TCP_QUICKACK, which Linux clears again by
    itself). OpenSSH's client leaves Nagle on outside interactive sessions, so its second
    small packet in a row (the key exchange's ECDH_INIT after KEXINIT, SERVICE_REQUEST
    after NEWKEYS, a Git request in two writes) waits for the ACK of the first; with
    nothing to send back, Linux delays that ACK by 40 ms. `ssh -vvv` under strace showed
    two such waits in every login (whoami: 0.064 s or 0.108 s, by whether they hit)."""
    if sock is None or not hasattr(socket, "TCP_QUICKACK"):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class CoalescingTransport:
    """A socket transport whose writes made in one pass of the event loop go out as one.
    What asyncssh wrote before closing (a disconnect message) is written before the close;
    an abort drops it, as the socket's own abort drops its buffer."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# --- sessions that say when they end -----------------------------------------------------


class EndReportingProcess(asyncssh.SSHServerProcess):
    """A session that reports when it is gone, whether or not a command ever ran (the
    connection's session count and the graceful stop depend on it). asyncssh makes its
    SSHServerProcess itself from `process_factory`; returning our own from
    `session_requested` means calling its constructor, whose positional arguments
    (process_factory, sftp_factory, sftp_version, allow_scp) are not public API."""

    def __init__(
        self,
        on_end: Callable[[], None],
        handler: Callable[[asyncssh.SSHServerProcess], Awaitable[None]],
    ) -> None:
        super().__init__(handler, None, 0, False)  # no SFTP, no SCP
        self._on_end: Callable[[], None] | None = on_end

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self._on_end is not None:
                on_end, self._on_end = self._on_end, None
                on_end()
