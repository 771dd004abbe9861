"""Side-band-64k framing: the pack (channel 1) and progress (channel 2) in pkt-lines.

Protocol v0/v1 uses it when the client asked for `side-band-64k`; protocol v2 always
frames its packfile section this way. Not dulwich's write_sideband: it copies the rest
of the data for every pkt-line, which costs a clone of a large pack dearly.
"""

from __future__ import annotations

from collections.abc import Callable

DATA, PROGRESS, ERROR = 1, 2, 3
DATA_MAX = 65515  # a pkt-line's 65520 bytes less its length and channel


def writer(write: Callable[[bytes], object], channel: int = DATA) -> Callable[[bytes], None]:
    """A function that writes its bytes to `write` as pkt-lines of `channel`."""
    full = b"%04x" % (DATA_MAX + 5) + bytes([channel])
    band = bytes([channel])

    def write_sideband(data: bytes) -> None:
        view = memoryview(data)
        for at in range(0, len(view), DATA_MAX):
            piece = view[at : at + DATA_MAX]
            if len(piece) == DATA_MAX:
                write(full + piece)  # one write: a pkt-line is larger than the buffer
            else:
                write(b"%04x" % (len(piece) + 5) + band + piece)

    return write_sideband
