"""Reading a repository's packs as they are stored, for upload-pack's fast path.

dulwich answers "what is object X" by inflating it (and its delta chain) every time, and
to find where an object's compressed bytes end it has to inflate them. Upload-pack wants
the opposite: the stored bytes of each entry untouched, so that it can copy them into the
pack it sends (what C git calls pack reuse). The pack index (.idx v2) already says where
every entry starts, so the entries sorted by offset say where each one ends, and its CRC
says whether the bytes read are the bytes that were written.

Only SHA-1 packs with a v2 index are read here; anything else makes `open_reader` return
None and the caller uses dulwich's own path. Loose objects and objects in packs we do not
read are asked of dulwich's object store.
"""

from __future__ import annotations

import binascii
import bisect
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence

from dulwich.pack import apply_delta

from .. import packorder
from ..dulwich_seam import pack_basename
from ..packindex import SHA_LEN, PackIndex
from ..packorder import KEEP_FROM, PackOrder

OFS_DELTA, REF_DELTA = 6, 7
MAX_CHAIN = 10_000  # deltas on deltas: git's own limit is far below
DELTA_HEAD_READ = 512  # enough of an entry for its headers and the delta's two sizes
DELTA_SIZES_MAX = 20  # two sizes of up to 10 bytes each
OPEN_ATTEMPTS = 5  # listings of the pack directory, when packs vanish while opened
CACHE_BYTES = 8 << 20  # inflated objects kept: a tree walk reads delta chains newest first


class PackError(Exception):
    """A stored pack failed a check: its data is not what its index says."""


class StoredPack:
    """One pack and its v2 index. Entries are numbered by their order in the pack (k).

    The index (packindex.py) is mapped and finds an object by bisection; the pack order
    (packorder.py: where entry k starts and ends, which index position it has) is read
    the first time an entry is asked for, from the file kept for the pack. A request
    that looks up many objects (a clone) turns the index into a dict once instead."""

    order: Sequence[int]  # entry k's position in the index, where its name and CRC are
    rank: Sequence[int]  # the entry number of index position i
    starts: Sequence[int]  # where entry k starts; one more: where the entries end

    def __init__(self, basename: str) -> None:
        self.basename = basename
        self.index = PackIndex(basename + ".idx")
        try:
            self.fd = os.open(basename + ".pack", os.O_RDONLY)
        except OSError:
            self.index.close()
            raise
        self.size = os.fstat(self.fd).st_size
        self.count = self.index.count
        self._pack_order: PackOrder | None = None
        self._number: dict[bytes, int] | None = None
        # Bisections before a dict of every name is cheaper (about 16 per name in it).
        self._bisections_left = self.count // 16 if self.count >= KEEP_FROM else 0

    def __getattr__(self, name: str):
        # Only for attributes not set yet: the pack order's, read on first use.
        if name not in ("order", "rank", "starts"):
            raise AttributeError(name)
        kept = packorder.kept_in(os.path.dirname(os.path.dirname(self.basename)))
        self._pack_order = pack_order = PackOrder(self.index, self.size, kept)
        self.order, self.rank, self.starts = pack_order.order, pack_order.rank, pack_order.starts
        return self.__dict__[name]

    def find(self, sha: bytes) -> int | None:
        """The entry number of the object with this hex name, or None."""
        number = self._number
        if number is None:
            if self._bisections_left > 0:
                self._bisections_left -= 1
                try:
                    position = self.index.position(binascii.unhexlify(sha))
                except (binascii.Error, IndexError):
                    return None
                return None if position is None else self.rank[position]
            number = self._numbers()
        return number.get(sha)

    def find_many(self, shas: list[bytes]) -> list[int | None]:
        """find() of each of `shas`: one dict lookup each when they are many."""
        if self._number is None and len(shas) <= self._bisections_left:
            return [self.find(sha) for sha in shas]
        return list(map(self._numbers().get, shas))

    def _numbers(self) -> dict[bytes, int]:
        if self._number is None:
            self._number = dict(zip(self.index.hex_name_list(), self.rank, strict=True))
        return self._number

    def name(self, k: int) -> bytes:
        """Entry k's binary name."""
        return self.index.name(self.order[k])

    def hex_names_in_pack_order(self) -> list[bytes]:
        """Every entry's hex name, entry k at k."""
        return list(map(self.index.hex_name_list().__getitem__, self.order))

    def crc(self, k: int) -> int:
        return self.index.crc(self.order[k])

    def close(self) -> None:
        os.close(self.fd)
        if self._pack_order is not None:
            for name in ("order", "rank", "starts"):
                self.__dict__.pop(name, None)
            self._pack_order.close()
        self.index.close()

    def entry(self, k: int) -> bytes:
        """The stored bytes of entry k (header and compressed data), checked against the CRC."""
        start, end = self.starts[k], self.starts[k + 1]
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start or zlib.crc32(data) != self.crc(k):
            raise PackError(f"entry at offset {start} fails its CRC check")
        return data

    def at_offset(self, offset: int) -> int:
        k = bisect.bisect_left(self.starts, offset)
        if k >= self.count or self.starts[k] != offset:
            raise PackError(f"no entry starts at offset {offset}")
        return k


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(type, inflated size, header length) of a stored entry; the base's reference
    (OFS_DELTA's distance, REF_DELTA's name) is not part of the length."""
    byte = data[0]
    type_num, size, shift, pos = (byte >> 4) & 7, byte & 15, 4, 1
    while byte & 0x80:
        byte = data[pos]
        size |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
    return type_num, size, pos


def parse_ofs(data: bytes, pos: int) -> tuple[int, int]:
    """OFS_DELTA's distance back to its base, and the position after it."""
    byte = data[pos]
    distance = byte & 0x7F
    pos += 1
    while byte & 0x80:
        byte = data[pos]
        distance = ((distance + 1) << 7) | (byte & 0x7F)
        pos += 1
    return distance, pos


def _delta_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A size at the start of delta data (little-endian base-128), and the position after."""
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
        if not byte & 0x80:
            return value, pos


def inflate(data: bytes, pos: int, size: int) -> bytes:
    try:
        out = zlib.decompressobj().decompress(data[pos:], size + 1)
    except zlib.error as exc:
        raise PackError(f"stored data does not inflate: {exc}") from None
    if len(out) != size:
        raise PackError("stored data inflates to the wrong size")
    return out


class ObjectReader:
    """Finds objects in the stored packs and reads them whole (deltas applied)."""

    def __init__(self, store, packs: list[StoredPack]) -> None:
        self.store = store
        self.packs = packs
        for n, pack in enumerate(packs):
            pack.key_base = n << 40  # a cache key per (pack, entry), as one int
        # Oldest first. An OrderedDict: a dict's first key is found by scanning past
        # the slots of every key removed before it (seconds over a large tree walk).
        self._cache: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._cached_bytes = 0

    def close(self) -> None:
        for pack in self.packs:
            pack.close()

    def locate(self, sha: bytes) -> tuple[StoredPack, int] | None:
        for pack in self.packs:
            k = pack.find(sha)
            if k is not None:
                return pack, k
        return None

    def keys(self, shas: list[bytes]) -> tuple[list[int], list[bytes]]:
        """Where each of `shas` is stored, as key_base + entry number (for the first pack
        that has it, largest first), and those no pack here has."""
        placed: list[int] = []
        for pack in self.packs:
            if not shas:
                break
            found = pack.find_many(shas)
            key_base = pack.key_base
            placed.extend([key_base + k for k in found if k is not None])
            shas = [sha for sha, k in zip(shas, found, strict=True) if k is None]
        return placed, shas

    def read(self, sha: bytes) -> tuple[int, bytes]:
        """(type, content) of an object by hex name; KeyError if the repository lacks it."""
        found = self.locate(sha)
        return self.read_entry(*found) if found else self.store.get_raw(sha)

    def type_of(self, sha: bytes) -> int:
        """An object's type from its entry's header (a delta's from its base's), without
        inflating it: a lazy fetch names thousands of blobs."""
        found = self.locate(sha)
        if found is None:
            return self.store.get_raw(sha)[0]
        pack, k = found
        for _ in range(MAX_CHAIN):
            start = pack.starts[k]
            data = os.pread(pack.fd, min(pack.starts[k + 1] - start, 32), start)
            type_num, _size, pos = parse_header(data)
            if type_num == OFS_DELTA:
                k = pack.at_offset(start - parse_ofs(data, pos)[0])
            elif type_num == REF_DELTA:
                return self.type_of(binascii.hexlify(data[pos : pos + SHA_LEN]))
            else:
                return type_num
        raise PackError("a delta chain longer than any pack holds")

    def size(self, sha: bytes) -> int:
        """An object's size without reading it whole: from its entry's header, or for a
        delta from the delta's own header (its result size, after the base's)."""
        found = self.locate(sha)
        if found is None:
            return len(self.store.get_raw(sha)[1])
        pack, k = found
        start, length = pack.starts[k], pack.starts[k + 1] - pack.starts[k]
        for read in (min(length, DELTA_HEAD_READ), length):  # mostly the first is enough
            data = os.pread(pack.fd, read, start)
            type_num, size, pos = parse_header(data)
            if type_num == OFS_DELTA:
                pos = parse_ofs(data, pos)[1]
            elif type_num == REF_DELTA:
                pos += SHA_LEN
            else:
                return size
            try:
                head = zlib.decompressobj().decompress(data[pos:], DELTA_SIZES_MAX)
                at = _delta_varint(head, 0)[1]  # the base's size
                return _delta_varint(head, at)[0]
            except (IndexError, zlib.error):
                continue
        raise PackError("a stored delta's header does not inflate")

    def read_entry(self, pack: StoredPack, k: int) -> tuple[int, bytes]:
        """(type, content) of entry k. What is read is kept a while: the older versions
        of a tree are deltas on the newer, read just before them. (The CRC is left to
        the writer: inflating checks the data's own checksum.)"""
        key = pack.key_base + k
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        start = pack.starts[k]
        data = os.pread(pack.fd, pack.starts[k + 1] - start, start)
        type_num, size, pos = parse_header(data)
        if type_num == OFS_DELTA:
            distance, pos = parse_ofs(data, pos)
            base_type, base = self.read_entry(pack, pack.at_offset(start - distance))
        elif type_num == REF_DELTA:
            base_name = binascii.hexlify(data[pos : pos + SHA_LEN])
            pos += SHA_LEN
            base_type, base = self.read(base_name)
        else:
            return self._remember(key, (type_num, inflate(data, pos, size)))
        try:
            content = apply_delta(base, inflate(data, pos, size))
        except (ValueError, AssertionError, IndexError) as exc:
            raise PackError(f"a delta does not apply: {exc}") from None
        if isinstance(content, list):
            content = b"".join(content)
        return self._remember(key, (base_type, content))

    def _remember(self, key: int, value: tuple[int, bytes]) -> tuple[int, bytes]:
        cache = self._cache
        cache[key] = value
        self._cached_bytes += len(value[1])
        while self._cached_bytes > CACHE_BYTES and len(cache) > 1:
            self._cached_bytes -= len(cache.popitem(last=False)[1][1])
        return value


def open_reader(repo) -> ObjectReader | None:
    """A reader over the repository's packs, or None if one cannot be read here
    (not SHA-1, or an index that is not v2): then dulwich serves the request."""
    store = repo.object_store
    if getattr(store.object_format, "name", "sha1") != "sha1":
        return None
    for _attempt in range(OPEN_ATTEMPTS):
        packs: list[StoredPack] = []
        try:
            for pack in store.packs:
                packs.append(StoredPack(pack_basename(pack)))
            break
        except FileNotFoundError:
            # Removed between the listing and the opening: housekeeping has put a new
            # pack in its place. The next listing has it.
            for opened in packs:
                opened.close()
        except (OSError, ValueError):
            for opened in packs:
                opened.close()
            return None
    else:
        return None
    # Largest first: most lookups end at the first pack tried.
    packs.sort(key=lambda pack: pack.size, reverse=True)
    return ObjectReader(store, packs)


def reader_for(repo) -> ObjectReader | None:
    """The stored packs' reader; for a SHA-1 repository whose pack indexes it cannot
    read, one that asks dulwich for every object (packwriter then sends them whole);
    None for a repository of another hash (served by dulwich's own pack writing)."""
    reader = open_reader(repo)
    if reader is None and getattr(repo.object_store.object_format, "name", "sha1") == "sha1":
        reader = ObjectReader(repo.object_store, [])
    return reader
