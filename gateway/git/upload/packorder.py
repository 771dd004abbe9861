"""A pack index read lazily, with its entries in pack order kept beside the repository.

storedpacks numbers a pack's entries by where they sit in the pack (an entry ends where
the next one starts). Making that order from a .idx means sorting every entry's offset
and building a dictionary of every name, in Python: on a 300,000-object pack it took
most of a one-commit fetch's time (C git answers the same fetch in 0.1 s). Both depend
only on the pack, which never changes, so the order is computed once and kept in
`gateway-packs/CHECKSUM` in the repository (CHECKSUM: the pack's own, also inside the
file with a CRC-32 of the rest, both checked on every read; written whole under a
temporary name, then renamed; a damaged file is made again). Names are found by binary
search in the index itself until a request has looked up enough of them to make one
dictionary worth its cost.
"""

from __future__ import annotations

import binascii
import mmap
import os
import sys
import tempfile
import zlib
from array import array

SHA_LEN = 20
IDX_V2 = b"\377tOc\x00\x00\x00\x02"
MAGIC = b"GWORDER1" + (b"<" if sys.byteorder == "little" else b">")  # native order
DIRECTORY = "gateway-packs"
# Lookups by binary search (about 8 times the cost of putting one name in a dict) before
# all names go in one dict: a dict pays for itself after an eighth of the pack's names.
DICT_AFTER_SHARE = 8


def _be(code: str, data: bytes) -> array:
    values = array(code, data)
    if sys.byteorder == "little":
        values.byteswap()
    return values


def _native(code: str, data: bytes) -> array:
    values = array(code)
    values.frombytes(data)
    return values


class PackIndex:
    """One .idx v2. Positions `i` are the index's (sorted by name); `k` the pack's."""

    def __init__(self, idx_path: str, pack_size: int, cache_dir: str | None) -> None:
        with open(idx_path, "rb") as f:
            self.idx = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        idx = self.idx
        if idx[:8] != IDX_V2:
            raise ValueError("not a v2 pack index")
        self.fanout = _be("I", idx[8 : 8 + 256 * 4])
        self.count = count = self.fanout[255]
        self.names_at = 8 + 256 * 4
        self.crcs_at = self.names_at + SHA_LEN * count
        self.offsets_at = self.crcs_at + 4 * count
        if len(idx) < self.offsets_at + 4 * count + 2 * SHA_LEN:
            raise ValueError("a pack index shorter than its count")
        self.checksum = idx[len(idx) - 2 * SHA_LEN : len(idx) - SHA_LEN]  # the pack's
        self.order, self.rank, self.starts = _load_or_make(self, pack_size, cache_dir)
        self._lookups = 0
        self._by_name: dict[bytes, int] | None = None

    def close(self) -> None:
        self.idx.close()

    def name(self, i: int) -> bytes:
        at = self.names_at + SHA_LEN * i
        return self.idx[at : at + SHA_LEN]

    def crc(self, i: int) -> int:
        at = self.crcs_at + 4 * i
        return int.from_bytes(self.idx[at : at + 4], "big")

    def offsets(self) -> array:
        count = self.count
        offsets = _be("I", self.idx[self.offsets_at : self.offsets_at + 4 * count])
        if count and max(offsets) & 0x80000000:
            large_at = self.offsets_at + 4 * count
            large = _be("Q", self.idx[large_at : len(self.idx) - 2 * SHA_LEN])
            offsets = array("Q", (large[o & 0x7FFFFFFF] if o & 0x80000000 else o for o in offsets))
        return offsets

    def find(self, hexsha: bytes) -> int | None:
        """The pack-order number of the object named `hexsha`, or None."""
        by_name = self._by_name
        if by_name is not None:
            return by_name.get(hexsha)
        self._lookups += 1
        if self._lookups > self.count // DICT_AFTER_SHARE + 1000:
            self._by_name = by_name = self._all_names()
            return by_name.get(hexsha)
        try:
            name = binascii.unhexlify(hexsha)
        except (binascii.Error, ValueError):
            return None
        if len(name) != SHA_LEN:
            return None
        lo = self.fanout[name[0] - 1] if name[0] else 0
        hi = self.fanout[name[0]]
        idx, at = self.idx, self.names_at
        while lo < hi:
            mid = (lo + hi) // 2
            found = idx[at + SHA_LEN * mid : at + SHA_LEN * (mid + 1)]
            if found < name:
                lo = mid + 1
            elif found > name:
                hi = mid
            else:
                return self.rank[mid]
        return None

    def _all_names(self) -> dict[bytes, int]:
        hexnames = binascii.hexlify(self.idx[self.names_at : self.crcs_at])
        step = 2 * SHA_LEN
        names = [hexnames[j : j + step] for j in range(0, len(hexnames), step)]
        return dict(zip(names, self.rank, strict=True))

    def hex_names(self) -> set[bytes]:
        if self._by_name is None:
            self._by_name = self._all_names()
        return set(self._by_name)


def _load_or_make(
    index: PackIndex, pack_size: int, cache_dir: str | None
) -> tuple[array, array, array]:
    """(order: k -> i, rank: i -> k, starts: k -> offset, then where the entries end)."""
    path = None
    if cache_dir is not None:
        path = os.path.join(cache_dir, DIRECTORY, binascii.hexlify(index.checksum).decode())
        loaded = _load(path, index.checksum, index.count)
        if loaded is not None:
            return loaded
    offsets = index.offsets()
    order = array("I", sorted(range(index.count), key=offsets.__getitem__))
    rank = array("I", bytes(4 * index.count))
    for k, i in enumerate(order):
        rank[i] = k
    starts = array("Q", (offsets[i] for i in order))
    starts.append(pack_size - SHA_LEN)
    if path is not None:
        _save(path, index.checksum, order, rank, starts)
    return order, rank, starts


def _load(path: str, checksum: bytes, count: int) -> tuple[array, array, array] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = MAGIC + checksum + count.to_bytes(8, "big")
    size = len(head) + 4 * count * 2 + 8 * (count + 1) + 4
    if len(data) != size or not data.startswith(head):
        return None
    body = data[len(head) : -4]
    if zlib.crc32(body) != int.from_bytes(data[-4:], "big"):
        return None  # a damaged file: made again
    order = _native("I", body[: 4 * count])
    rank = _native("I", body[4 * count : 8 * count])
    starts = _native("Q", body[8 * count :])
    return order, rank, starts


def _save(path: str, checksum: bytes, order: array, rank: array, starts: array) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees half.
    (Native byte order: the file is read only on the machine that wrote it.)"""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".order.", dir=directory)
    except OSError:
        return  # a read-only repository: the order is made again next time
    try:
        with os.fdopen(fd, "wb") as f:
            body = order.tobytes() + rank.tobytes() + starts.tobytes()
            f.write(MAGIC + checksum + len(order).to_bytes(8, "big") + body)
            f.write(zlib.crc32(body).to_bytes(4, "big"))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
