"""Git's pkt-line framing, for tests and attacks that speak the wire protocol by hand."""

from __future__ import annotations

FLUSH = b"0000"


def pkt(data: bytes) -> bytes:
    """DATA as one pkt-line: four hex digits of length (including themselves), then DATA."""
    return b"%04x" % (len(data) + 4) + data


def parse_pkts(data: bytes) -> tuple[list[bytes | None], bytes]:
    """The pkt-lines at the start of DATA (None for a flush-pkt) and what follows them."""
    out: list[bytes | None] = []
    while len(data) >= 4:
        try:
            length = int(data[:4], 16)
        except ValueError:
            break
        if length == 0:
            out.append(None)
            data = data[4:]
            continue
        if length < 4 or len(data) < length:
            break
        out.append(data[4:length])
        data = data[length:]
    return out, data


DELIM = b"0001"  # protocol v2's delim-pkt


def parse_v2(data: bytes) -> list[bytes | None]:
    """Protocol v2's pkt-lines in DATA: payloads, None for a flush-pkt, the DELIM object
    itself for a delim-pkt (test it with `is`: a payload may hold the same bytes);
    side-band payloads as they are. Stops at the first bytes that are not a pkt-line."""
    out: list[bytes | None] = []
    while len(data) >= 4:
        try:
            length = int(data[:4], 16)
        except ValueError:
            break
        if length in (0, 1):
            out.append(None if length == 0 else DELIM)
            data = data[4:]
            continue
        if length < 4 or len(data) < length:
            break
        out.append(data[4:length])
        data = data[length:]
    return out
