"""Unit tests: connection caps (transport/limits.py) and PROXY header parsing
(transport/proxyproto.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from gateway.config import Settings
from gateway.transport import limits, proxyproto
from testkit import Clock


def tracker(**settings):
    dropped, talking = [], set()
    clock = Clock()
    caps = limits.ConnectionLimits(Settings(**settings), clock)

    def admit(address, name):
        ticket, _ = caps.admit(address, lambda: dropped.append(name), lambda: name in talking)
        return ticket

    return caps, admit, dropped, talking, clock


def test_below_the_global_cap_nothing_is_dropped():
    caps, admit, dropped, talking, clock = tracker(max_startups=100, max_startups_per_address=3)
    for n in range(20):  # a CI farm behind one NAT, or a slow start: all let in
        assert admit("10.0.0.1", f"c{n}") is not None
    clock.now += limits.STALLED + 1
    assert admit("10.0.0.1", "late") is not None
    assert dropped == [] and caps.unauthenticated == 21


def test_full_cap_drops_silent_connections_of_crowded_addresses_first():
    caps, admit, dropped, talking, clock = tracker(max_startups=4, max_startups_per_address=2)
    admit("10.0.0.9", "lone")  # oldest, but its address is within its share
    admit("10.0.0.1", "a1")
    admit("10.0.0.1", "a2")
    admit("10.0.0.1", "a3")
    assert caps.admit("10.0.0.2", lambda: None, lambda: True) == (None, "max_startups")
    clock.now += limits.SILENT_GRACE  # all silent for a while now
    talking.add("a1")  # its bytes are waiting unread: it is talking
    admit("10.0.0.2", "b")
    assert dropped == ["a2"]
    admit("10.0.0.2", "c")  # 10.0.0.1 is within its share again: the oldest silent goes
    assert dropped == ["a2", "lone"]


def test_full_cap_of_talking_clients_refuses_until_one_stalls():
    caps, admit, dropped, talking, clock = tracker(max_startups=3, max_startups_per_address=10)
    for name in ("x", "y", "z"):
        talking.add(name)
        admit("10.0.0.1", name)
    assert caps.admit("10.0.0.5", lambda: None, lambda: True) == (None, "max_startups")
    clock.now += limits.STALLED + 1
    talking.add("w")
    assert admit("10.0.0.5", "w") is not None
    assert dropped == ["x"]


def test_address_cap_refuses_and_a_drop_frees_room_at_once():
    caps, admit, dropped, talking, clock = tracker(
        max_connections_per_address=2, max_startups_per_address=2
    )
    one = admit("10.0.0.1", "one")
    two = admit("10.0.0.1", "two")
    caps.authenticated(one)
    assert admit("10.0.0.1", "silent") is not None  # silent sockets do not count here
    caps.progressed(two, limits.TALKING)
    assert admit("10.0.0.1", "three") is None  # two real connections already
    caps.closed(one)
    assert admit("10.0.0.1", "four") is not None
    caps.closed(one)  # closing twice changes nothing
    assert caps.connections == 3


def run_header(data: bytes):
    async def go():
        buffer = bytearray(data)

        async def read_exactly(n: int) -> bytes:
            if len(buffer) < n:
                raise EOFError
            chunk = bytes(buffer[:n])
            del buffer[:n]
            return chunk

        return await proxyproto.read_header(read_exactly), bytes(buffer)

    return asyncio.run(go())


def v2(command: int, family: int, payload: bytes) -> bytes:
    return (
        proxyproto.V2_SIGNATURE
        + bytes([0x20 | command, family])
        + struct.pack("!H", len(payload))
        + payload
    )


def test_proxy_v1_and_v2_give_the_source_and_leave_the_ssh_bytes():
    assert run_header(b"PROXY TCP4 192.0.2.1 10.0.0.1 51000 22\r\nSSH-2.0-x") == (
        ("192.0.2.1", 51000),
        b"SSH-2.0-x",
    )
    assert run_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 22\r\n") == (
        ("2001:db8::1", 4000),
        b"",
    )
    assert run_header(b"PROXY UNKNOWN\r\nSSH") == (None, b"SSH")
    six = ipaddress.IPv6Address("2001:db8::7").packed + bytes(16) + struct.pack("!HH", 5000, 22)
    assert run_header(v2(1, 0x21, six) + b"SSH") == (("2001:db8::7", 5000), b"SSH")
    four = bytes([198, 51, 100, 9]) + bytes(4) + struct.pack("!HH", 6000, 22) + b"\x01\x00\x01x"
    assert run_header(v2(1, 0x11, four)) == (("198.51.100.9", 6000), b"")  # TLV skipped
    assert run_header(v2(0, 0x00, b"")) == (None, b"")  # LOCAL: a health check


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"PROXY TCP4 999.0.0.1 10.0.0.1 1 22\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 1 22\r\n",
        b"PROXY TCP4 192.0.2.1 10.0.0.1 99999 22\r\n",
        b"PROXY TCP4 192.0.2.1\r\n",
        b"PROXY " + b"1" * 120,
        proxyproto.V2_SIGNATURE + bytes([0x11, 0x11]) + struct.pack("!H", 12) + bytes(12),
        proxyproto.V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 60000),
        proxyproto.V2_SIGNATURE + bytes([0x21, 0x31]) + struct.pack("!H", 0),
    ],
    ids=[
        "ssh",
        "bad-ip",
        "v6-in-tcp4",
        "bad-port",
        "short",
        "overlong",
        "v2-version",
        "v2-too-long",
        "v2-unix",
    ],
)
def test_bad_proxy_headers_are_refused(data):
    with pytest.raises(proxyproto.ProxyHeaderError):
        run_header(data)
