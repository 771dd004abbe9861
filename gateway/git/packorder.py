"""The order a pack's entries are stored in, worked out once per pack and kept.

A pack's index lists objects by name; reading an entry's stored bytes needs where the
next entry starts, i.e. the offsets sorted. Sorting 300,000 offsets in Python costs about
half a second, which every small fetch of a large repository used to pay. So the result
is kept in `objects/info/gateway/pack-HASH.order` (C git's `.rev` holds only the first of
the three arrays, and would still leave the rest to compute) and mapped, not read, by
later requests.

The file: magic, version, a byte-order mark, the entry count and the pack's checksum
(from its index: the file is named by it, and checked), four zero bytes; then, in
this machine's byte order,
- `order`, 4 bytes per entry: entry k's position in the index;
- `rank`, 4 bytes per entry: the entry number of the object at index position i;
- `starts`, 8 bytes per entry and one more: where entry k starts, then where the
  entries end (the trailer's offset);
and the CRC-32 of those arrays (checked on every read: a few milliseconds).
A missing, short or foreign file is made again; one that cannot be written (a read-only
repository) only costs the time to compute it.

Small packs (a push's) are not worth a file: their order is computed each time.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import tempfile
import zlib
from array import array
from collections.abc import Sequence

from .packindex import SHA_LEN, PackIndex

MAGIC = b"GWPO"
VERSION = 1
BOM = 0x01020304
HEADER_LEN = 4 + 4 + 4 + 4 + SHA_LEN + 4  # padded: the arrays after it stay aligned
KEEP_FROM = 4096  # entries: below this computing the order is quicker than a file read


class PackOrder:
    """order[k], rank[i], starts[k] (starts[count]: where the entries end) of one pack."""

    order: Sequence[int]
    rank: Sequence[int]
    starts: Sequence[int]

    def __init__(self, index: PackIndex, pack_size: int, kept_in: str | None) -> None:
        self._map: mmap.mmap | None = None
        self._views: list[memoryview] = []
        path = os.path.join(kept_in, _file_name(index)) if kept_in else None
        if path is not None and index.count >= KEEP_FROM and self._load(path, index):
            return
        order, rank, starts = _compute(index, pack_size)
        self.order, self.rank, self.starts = order, rank, starts
        if path is not None and index.count >= KEEP_FROM:
            _save(path, index, order, rank, starts)

    def _load(self, path: str, index: PackIndex) -> bool:
        try:
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return False
        count = index.count
        header = _header(index)
        end = HEADER_LEN + 16 * count + 8
        if len(mapped) != end + 4 or mapped[:HEADER_LEN] != header:
            mapped.close()
            return False
        view = memoryview(mapped)
        if zlib.crc32(view[HEADER_LEN:end]) != int.from_bytes(view[end:], "big"):
            view.release()
            mapped.close()
            return False
        at = HEADER_LEN
        order = view[at : at + 4 * count].cast("I")
        rank = view[at + 4 * count : at + 8 * count].cast("I")
        starts = view[at + 8 * count : end].cast("Q")
        self.order, self.rank, self.starts = order, rank, starts
        self._map, self._views = mapped, [order, rank, starts, view]
        return True

    def close(self) -> None:
        for view in self._views:
            view.release()
        self._views = []
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still held: freed with it
                self._map.close()
            self._map = None


def prepare(basename: str) -> None:
    """Keep the order of a pack just written (`basename`: its path without .pack or
    .idx), so that the first request to read it does not pay for working it out."""
    index = PackIndex(basename + ".idx")
    try:
        size = os.path.getsize(basename + ".pack")
        objects_dir = os.path.dirname(os.path.dirname(basename))
        PackOrder(index, size, kept_in(objects_dir)).close()
    finally:
        index.close()


def kept_in(objects_dir: str) -> str:
    """Where the order files of a repository's packs are kept."""
    return os.path.join(objects_dir, "info", "gateway")


def _file_name(index: PackIndex) -> str:
    return "pack-" + index.pack_checksum.hex() + ".order"


def _header(index: PackIndex) -> bytes:
    return (
        MAGIC
        + VERSION.to_bytes(4, "big")
        + BOM.to_bytes(4, sys.byteorder)
        + index.count.to_bytes(4, "big")
        + index.pack_checksum
        + bytes(4)
    )


def _compute(index: PackIndex, pack_size: int) -> tuple[array[int], array[int], array[int]]:
    offsets = index.offsets()
    order = array("I", sorted(range(index.count), key=offsets.__getitem__))
    rank = array("I", bytes(4 * index.count))
    for k, i in enumerate(order):
        rank[i] = k
    starts = array("Q", map(offsets.__getitem__, order))
    starts.append(pack_size - SHA_LEN)
    return order, rank, starts


def _save(
    path: str, index: PackIndex, order: array[int], rank: array[int], starts: array[int]
) -> None:
    """Written whole under a temporary name, then renamed: a reader sees all or nothing.
    Order files of packs that are gone are removed on the way."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".order-", dir=directory)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o444)  # as Git leaves its pack files
            f.write(_header(index))
            body = order.tobytes() + rank.tobytes() + starts.tobytes()
            f.write(body)
            f.write(zlib.crc32(body).to_bytes(4, "big"))
        os.rename(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return
    _sweep(directory, index)


def _sweep(directory: str, index: PackIndex) -> None:
    """Remove the order files no pack of this repository has any more."""
    pack_dir = os.path.join(os.path.dirname(os.path.dirname(directory)), "pack")
    try:
        packs = {name[: -len(".idx")] for name in os.listdir(pack_dir) if name.endswith(".idx")}
        kept = os.listdir(directory)
    except OSError:
        return
    live = set()
    for name in packs:
        try:
            with open(os.path.join(pack_dir, name + ".idx"), "rb") as f:
                f.seek(-2 * SHA_LEN, os.SEEK_END)
                live.add("pack-" + f.read(SHA_LEN).hex() + ".order")
        except OSError:
            return  # a pack going away as we look: sweep another time
    for name in kept:
        if name.endswith(".order") and name not in live:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
