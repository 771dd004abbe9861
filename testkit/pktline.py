"""Git's pkt-line framing, for tests and attacks that speak the wire protocol by hand."""

from __future__ import annotations

FLUSH = b"0000"


def pkt(data: bytes) -> bytes:
    """DATA as one pkt-line: four hex digits of length (including themselves), then DATA."""
    return b"%04x" % (len(data) + 4) + data
