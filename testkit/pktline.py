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
