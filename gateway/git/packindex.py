"""One pack's v2 index (`.idx`), mapped rather than read.

A request that looks up a few objects of a 300,000-object pack should not pay for the
whole index: parsing it into Python objects took half a second per request. Mapped, a
lookup is a bisection in the names that start with the same byte (the fan-out table says
where those are), and only the pages it touches are read from disk.

Positions here are positions in the index (objects sorted by name); packorder.py has the
order the entries are stored in the pack.
"""

from __future__ import annotations

import binascii
import hashlib
import mmap
import sys
from array import array
from bisect import bisect_left
from operator import itemgetter
from typing import BinaryIO

IDX_V2 = b"\377tOc\x00\x00\x00\x02"
SHA_LEN = 20
FANOUT = 8  # the fan-out table's offset
NAMES = FANOUT + 256 * 4
LARGE = 0x80000000  # an offset with this bit set is a position in the 8-byte offset table


class PackIndex:
    """Lookups in one `.idx` file (version 2, SHA-1). ValueError if it is not one."""

    def __init__(self, idx_path: str) -> None:
        with open(idx_path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if self.map[:8] != IDX_V2 or len(self.map) < NAMES + 2 * SHA_LEN:
                raise ValueError("not a v2 pack index")
            fanout = array("I", self.map[FANOUT:NAMES])
            if sys.byteorder == "little":
                fanout.byteswap()  # big-endian on disk
            count = fanout[255]
            if len(self.map) < NAMES + (SHA_LEN + 8) * count + 2 * SHA_LEN:
                raise ValueError("a pack index shorter than its object count")
        except ValueError:
            self.map.close()
            raise
        self.fanout = fanout
        self.count = count
        self._crcs_at = NAMES + SHA_LEN * count
        self._offsets_at = self._crcs_at + 4 * count
        self._large_at = self._offsets_at + 4 * count

    @property
    def pack_checksum(self) -> bytes:
        """The checksum of the pack this index is of (the first half of its trailer)."""
        return self.map[len(self.map) - 2 * SHA_LEN : len(self.map) - SHA_LEN]

    def position(self, binsha: bytes) -> int | None:
        """The object's position in the index, or None."""
        first = binsha[0]
        lo = self.fanout[first - 1] if first else 0
        hi = self.fanout[first]
        m = self.map
        while lo < hi:
            mid = (lo + hi) // 2
            at = NAMES + SHA_LEN * mid
            name = m[at : at + SHA_LEN]
            if name < binsha:
                lo = mid + 1
            elif name > binsha:
                hi = mid
            else:
                return mid
        return None

    def name(self, position: int) -> bytes:
        at = NAMES + SHA_LEN * position
        return self.map[at : at + SHA_LEN]

    def crc(self, position: int) -> int:
        at = self._crcs_at + 4 * position
        return int.from_bytes(self.map[at : at + 4], "big")

    def offset(self, position: int) -> int:
        """Where the object's entry starts in the pack."""
        at = self._offsets_at + 4 * position
        offset = int.from_bytes(self.map[at : at + 4], "big")
        if offset & LARGE:
            at = self._large_at + 8 * (offset & ~LARGE)
            offset = int.from_bytes(self.map[at : at + 8], "big")
        return offset

    def offsets(self) -> array[int]:
        """Every object's offset, in index order (for building the pack order once)."""
        offsets = array("I", self.map[self._offsets_at : self._large_at])
        if sys.byteorder == "little":
            offsets.byteswap()
        if self.count and max(offsets) & LARGE:
            offsets = array("Q", (self.offset(i) for i in range(self.count)))
        return offsets

    def name_table(self) -> bytes:
        """Every object's binary name, in index order (sorted), as one string."""
        return self.map[NAMES : self._crcs_at]

    def name_list(self) -> list[bytes]:
        """Every object's binary name, in index order."""
        names = self.map[NAMES : self._crcs_at]
        return [names[at : at + SHA_LEN] for at in range(0, len(names), SHA_LEN)]

    def hex_name_list(self) -> list[bytes]:
        """Every object's hex name, in index order."""
        names = binascii.hexlify(self.map[NAMES : self._crcs_at])
        step = 2 * SHA_LEN
        return [names[at : at + step] for at in range(0, len(names), step)]

    def hex_names(self) -> set[bytes]:
        """Every object name, hex: cheaper than a bisection for each of many."""
        return set(self.hex_name_list())

    def close(self) -> None:
        self.map.close()


def write_index(f: BinaryIO, entries: list[tuple[bytes, int, int]], pack_checksum: bytes) -> None:
    """A v2 index of `entries` (binary name, offset, CRC32), sorted by name, as C git and
    dulwich write it, in a few array operations: dulwich's writer packs each field of
    each entry on its own (a second for a 300,000-object push)."""
    # Columns by map and itemgetter, not comprehensions: a 300,000-entry push pays for
    # every Python-level step per entry here.
    names = list(map(itemgetter(0), entries))
    if set(map(len, names)) - {SHA_LEN}:
        raise ValueError("an object name is not 20 bytes")
    fanout = array("I", (bisect_left(names, bytes([b + 1])) for b in range(255)))
    fanout.append(len(names))
    crcs = array("I", list(map(itemgetter(2), entries)))
    offsets = list(map(itemgetter(1), entries))
    if offsets and max(offsets) >= LARGE:
        large = array("Q", (o for o in offsets if o >= LARGE))
        spilled = iter(range(len(large)))
        small = array("I", (o if o < LARGE else LARGE | next(spilled) for o in offsets))
    else:
        large = array("Q")
        small = array("I", offsets)
    if sys.byteorder == "little":
        for table in (fanout, crcs, small, large):
            table.byteswap()
    digest = hashlib.sha1()
    for part in (IDX_V2, fanout, b"".join(names), crcs, small, large, pack_checksum):
        digest.update(part)
        f.write(part)
    f.write(digest.digest())
