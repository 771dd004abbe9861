"""The first pass over a pushed pack, as it comes off the wire.

Each entry's header is parsed from a buffer and checked against the limits, its zlib
stream is inflated in bounded steps and dropped, and the bytes go to the pack file and
into the pack's checksum. What the indexer needs later (where each entry starts, where
its zlib data starts, its type and delta base) is handed to `note`, so the second pass
reads each entry with one `pread` and inflates it in one call.

dulwich's PackStreamReader does this through a read call per header byte and a new
buffer per object: a push of 300,000 objects spent a third of its time on that. Here
the wire is read in blocks, and the inflater is given the buffer's bytes in pieces that
start small (most entries are a few hundred bytes) so that what it does not consume is
never copied in bulk.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import BinaryIO

from dulwich.errors import ChecksumMismatch
from dulwich.pack import OFS_DELTA, REF_DELTA

from ..upload.storedpacks import parse_header, parse_ofs
from .limits import Limits

READ_BLOCK = 65536  # asked of the wire at once
KEEP_READ = 4 * READ_BLOCK  # consumed bytes are written out once there are this many
FIRST_PIECE = 2048  # zlib input offered first; doubled while a stream goes on
INFLATE_STEP = 1024 * 1024  # the most one step inflates (a zlib bomb stops after one)
HEADER_MAX = 32  # bytes enough for any entry header this reader accepts
OBJECT_TYPES = {1, 2, 3, 4, OFS_DELTA, REF_DELTA}
UNLIMITED = float("inf")

# note(offset, data offset, type in the pack, delta base: a distance back, a name, None)
Note = Callable[[int, int, int, "int | bytes | None"], None]


class PackStream:
    def __init__(
        self,
        read: Callable[[int], bytes],
        out: BinaryIO,
        hash_func,
        limits: Limits,
        note: Note,
        hash_size: int = 20,
    ) -> None:
        self._read = read
        self._out = out
        self._sha = hash_func()
        self._hash_size = hash_size
        self.limits = limits
        self.note = note
        self._buf = bytearray()
        self._pos = 0  # the next byte of _buf to parse
        self._base = 0  # the pack offset of _buf[0]
        self.total = 0  # bytes the objects come to once resolved, as declared
        self._max_object = limits.max_object_bytes or UNLIMITED
        self._max_total = limits.max_inflated_bytes or UNLIMITED
        self.end = 0  # where the last entry ends (the trailer's offset)
        self.checksum = b""  # the pack's trailer, once checked

    def run(self) -> None:
        """Read, check, write and hash the whole pack; raises on a bad one."""
        self._need(12, "the pack's header")
        header = bytes(self._buf[:12])
        if header[:4] != b"PACK" or int.from_bytes(header[4:8]) not in (2, 3):
            raise ValueError("not a pack (bad header)")
        count = int.from_bytes(header[8:12])
        self._pos = 12
        for _ in range(count):
            self._entry()
        self.end = self._base + self._pos
        self._flush()
        self._need(self._hash_size, "the pack's checksum")
        trailer = bytes(self._buf[: self._hash_size])
        self._out.write(trailer)
        if trailer != self._sha.digest():
            raise ChecksumMismatch(trailer.hex(), self._sha.hexdigest())
        self.checksum = trailer

    # --- the buffer ---------------------------------------------------------------------

    def _fill(self, n: int) -> bool:
        """At least `n` unparsed bytes in the buffer; False if the wire ends first."""
        while len(self._buf) - self._pos < n:
            if self._pos >= KEEP_READ:
                self._flush()
            chunk = self._read(READ_BLOCK)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def _need(self, n: int, what: str) -> None:
        if not self._fill(n):
            raise ValueError(f"the pack ends before {what}")

    def _flush(self) -> None:
        """The parsed bytes to the file and the checksum, out of the buffer."""
        if self._pos:
            with memoryview(self._buf) as view:
                self._out.write(view[: self._pos])
                self._sha.update(view[: self._pos])
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0

    # --- one entry ----------------------------------------------------------------------
    # The hot loop of a push: 300,000 entries cost a few microseconds each here, so the
    # common case (a small entry whose zlib stream ends inside the buffer) takes one
    # inflater call and no method call it can avoid.

    def _entry(self) -> None:
        if len(self._buf) - self._pos < HEADER_MAX:
            self._fill(HEADER_MAX)  # fewer only at the wire's end: the checks below say so
        buf, pos = self._buf, self._pos
        offset = self._base + pos
        header = buf[pos : pos + HEADER_MAX]
        if not header:
            raise ValueError("the pack ends before its last object")
        base: int | bytes | None = None
        try:  # a header longer than HEADER_MAX runs off `header`: malformed
            kind, size, used = parse_header(header)
            if kind == OFS_DELTA:
                distance, used = parse_ofs(header, used)
                if not 0 < distance <= offset:
                    raise zlib.error(f"OFS_DELTA with a distance of {distance}")
                base = distance
            elif kind == REF_DELTA:
                base = bytes(header[used : used + self._hash_size])
                used += self._hash_size
                if used > len(header):
                    raise IndexError
        except IndexError:
            raise ValueError("an object's header is malformed") from None
        if kind not in OBJECT_TYPES:
            raise ValueError(f"an object of unknown type {kind}")
        pos += used
        self._pos = pos
        data_offset = self._base + pos
        is_delta = base is not None
        if size > self._max_object:
            self.limits.check_object(size, "a delta" if is_delta else "an object")
        inflater = zlib.decompressobj()
        first = buf[pos : pos + FIRST_PIECE]
        out = inflater.decompress(first, INFLATE_STEP)
        if inflater.eof:  # the usual case: all of it in the first piece
            self._pos = pos + len(first) - len(inflater.unused_data)
            if len(out) != size:
                raise zlib.error(
                    "an object inflates past its declared size"
                    if len(out) > size
                    else "an object inflates to less than its declared size"
                )
        else:
            out = self._inflate_rest(inflater, out, size, pos + len(first))
        if is_delta:
            sizes = delta_sizes(out)
            if sizes is None:  # cut short, or a size of more than 64 bits
                raise zlib.error("a delta's header is malformed")
            if sizes[0] > self._max_object or sizes[1] > self._max_object:
                self.limits.check_object(sizes[0], "a delta's base")
                self.limits.check_object(sizes[1], "a delta's result")
            size = sizes[1]
        self.total += size
        if self.total > self._max_total:
            self.limits.check_total(self.total)
        self.note(offset, data_offset, kind, base)

    def _inflate_rest(self, inflater, out: bytes, size: int, pos: int) -> bytes:
        """Go on with a zlib stream the first piece did not end, from `pos`, in steps of
        at most INFLATE_STEP; returns its first 20 bytes (a delta's sizes), and leaves
        the position just after the stream, which must have come to `size` bytes."""
        got = len(out)
        head = out[:20]
        piece = 2 * FIRST_PIECE
        left = len(inflater.unconsumed_tail)
        pos -= left  # what the first call did not take is offered again
        while True:
            if got > size:
                raise zlib.error("an object inflates past its declared size")
            if inflater.eof:
                break
            if pos >= len(self._buf):
                self._pos = pos
                if not self._fill(1):
                    raise zlib.error("EOF before end of zlib stream")
                pos = self._pos
            with memoryview(self._buf) as view:
                offered = view[pos : pos + piece]
                out = inflater.decompress(offered, INFLATE_STEP)
                left = len(inflater.unused_data) if inflater.eof else len(inflater.unconsumed_tail)
                pos += len(offered) - left
                offered.release()
            got += len(out)
            if len(head) < 20:
                head += out[: 20 - len(head)]
            if not left:
                piece = min(piece * 2, READ_BLOCK)
        self._pos = pos
        if got != size:
            raise zlib.error("an object inflates to less than its declared size")
        return head


def delta_sizes(head: bytes) -> tuple[int, int] | None:
    """(base size, result size) from the start of a delta, None if it is cut short."""
    if len(head) >= 4 and head[0] & head[2] & 0x80 and not (head[1] | head[3]) & 0x80:
        # the usual delta: both sizes between 128 bytes and 16 KiB, two bytes each
        return (head[0] & 0x7F) | head[1] << 7, (head[2] & 0x7F) | head[3] << 7
    sizes = []
    pos = 0
    for _ in range(2):
        value = shift = 0
        while True:
            if pos >= len(head) or shift > 63:
                return None
            byte = head[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(value)
    return sizes[0], sizes[1]
