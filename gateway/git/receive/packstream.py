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
from dulwich.pack import DELTA_TYPES, OFS_DELTA, REF_DELTA

from ..upload.storedpacks import parse_header, parse_ofs
from .limits import Limits

READ_BLOCK = 65536  # asked of the wire at once
KEEP_READ = 4 * READ_BLOCK  # consumed bytes are written out once there are this many
FIRST_PIECE = 2048  # zlib input offered first; doubled while a stream goes on
INFLATE_STEP = 1024 * 1024  # the most one step inflates (a zlib bomb stops after one)
HEADER_MAX = 32  # bytes enough for any entry header this reader accepts
OBJECT_TYPES = {1, 2, 3, 4, OFS_DELTA, REF_DELTA}

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
        self.end = 0  # where the last entry ends (the trailer's offset)

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

    def _entry(self) -> None:
        offset = self._base + self._pos
        self._fill(HEADER_MAX)  # fewer only at the wire's end: the checks below say so
        header = bytes(self._buf[self._pos : self._pos + HEADER_MAX])
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
                base = header[used : used + self._hash_size]
                used += self._hash_size
                if used > len(header):
                    raise IndexError
        except IndexError:
            raise ValueError("an object's header is malformed") from None
        if kind not in OBJECT_TYPES:
            raise ValueError(f"an object of unknown type {kind}")
        self._pos += used
        data_offset = self._base + self._pos
        is_delta = kind in DELTA_TYPES
        self.limits.check_object(size, "a delta" if is_delta else "an object")
        head = self._inflate(size, is_delta)
        if is_delta:
            sizes = delta_sizes(head)
            if sizes is None:  # cut short, or a size of more than 64 bits
                raise zlib.error("a delta's header is malformed")
            self.limits.check_object(sizes[0], "a delta's base")
            self.limits.check_object(sizes[1], "a delta's result")
            size = sizes[1]
        self.total += size
        self.limits.check_total(self.total)
        self.note(offset, data_offset, kind, base)

    def _inflate(self, size: int, want_head: bool) -> bytes:
        """Inflate the zlib stream at the buffer's position, which must come to `size`
        bytes, in steps of at most INFLATE_STEP, keeping only its first 20 bytes (a
        delta's sizes); the position is left just after the stream."""
        inflater = zlib.decompressobj()
        got = 0
        head = b""
        piece = FIRST_PIECE
        while not inflater.eof:
            if self._pos >= len(self._buf) and not self._fill(1):
                raise zlib.error("EOF before end of zlib stream")
            with memoryview(self._buf) as view:
                offered = view[self._pos : self._pos + piece]
                out = inflater.decompress(offered, INFLATE_STEP)
                left = len(inflater.unused_data) if inflater.eof else len(inflater.unconsumed_tail)
                used = len(offered) - left
                offered.release()
            self._pos += used
            got += len(out)
            if got > size:
                raise zlib.error("an object inflates past its declared size")
            if want_head and len(head) < 20:
                head += out[: 20 - len(head)]
            if not left:
                piece = min(piece * 2, READ_BLOCK)
        if got != size:
            raise zlib.error("an object inflates to less than its declared size")
        return head


def delta_sizes(head: bytes) -> tuple[int, int] | None:
    """(base size, result size) from the start of a delta, None if it is cut short."""
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
