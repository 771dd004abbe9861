"""The PROXY protocol (v1 text and v2 binary) that TCP load balancers put before the SSH
bytes, so that logs and limits see the client's address (setting `proxy_protocol`).

Specification: haproxy's proxy-protocol.txt. Only the source address is used; TLVs are
skipped. A connection whose header is missing or malformed is closed.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Awaitable, Callable

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # bytes, CRLF included
V2_MAX_PAYLOAD = 4096


class ProxyHeaderError(ValueError):
    pass


async def read_header(read_exactly: Callable[[int], Awaitable[bytes]]) -> tuple[str, int] | None:
    """The client's (address, port) from the header, or None when the balancer says the
    connection is its own (v2 LOCAL, v1 UNKNOWN): then the peer address stands."""
    start = await read_exactly(12)
    if start == V2_SIGNATURE:
        return await _parse_v2(await read_exactly(4), read_exactly)
    if start.startswith(b"PROXY "):
        line = start
        while not line.endswith(b"\r\n"):
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 header longer than 107 bytes")
            line += await read_exactly(1)
        return _parse_v1(line[:-2])
    raise ProxyHeaderError("no PROXY protocol header")


def _parse_v1(line: bytes) -> tuple[str, int] | None:
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return None
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 header")
    try:
        address = ipaddress.ip_address(parts[2].decode("ascii"))
        port = int(parts[4])
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError("malformed PROXY v1 address") from None
    if (address.version == 4) != (parts[1] == b"TCP4") or not 0 <= port <= 65535:
        raise ProxyHeaderError("malformed PROXY v1 address")
    return str(address), port


async def _parse_v2(head: bytes, read_exactly) -> tuple[str, int] | None:
    version_command, family, length = struct.unpack("!BBH", head)
    if version_command >> 4 != 2 or (version_command & 0xF) not in (0, 1):
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("PROXY v2 header too long")
    payload = await read_exactly(length) if length else b""
    if version_command & 0xF == 0:  # LOCAL: the balancer's own connection (health check)
        return None
    if family == 0x11 and len(payload) >= 12:  # TCP over IPv4
        return str(ipaddress.IPv4Address(payload[:4])), struct.unpack("!H", payload[8:10])[0]
    if family == 0x21 and len(payload) >= 36:  # TCP over IPv6
        return str(ipaddress.IPv6Address(payload[:16])), struct.unpack("!H", payload[32:34])[0]
    if family == 0x00:
        return None
    raise ProxyHeaderError("unsupported PROXY v2 address family")
