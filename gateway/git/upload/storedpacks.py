"""Reading a repository's packs as they are stored, for upload-pack's fast path.

dulwich answers "what is object X" by inflating it (and its delta chain) every time, and
to find where an object's compressed bytes end it has to inflate them. Upload-pack wants
the opposite: the stored bytes of each entry untouched, so that it can copy them into the
pack it sends (what C git calls pack reuse). The pack index (.idx v2) already says where
every entry starts, so the entries sorted by offset say where each one ends, and its CRC
says whether the bytes read are the bytes that were written. That order is made once per
pack and kept (packorder.py), and names are looked up in the index itself.

Only SHA-1 packs with a v2 index are read here; anything else makes `open_reader` return
None and the caller reads through dulwich. Loose objects and objects in packs we do not
read are asked of dulwich's object store.
"""

from __future__ import annotations

import binascii
import bisect
import os
import zlib

from dulwich.pack import apply_delta

from ..dulwich_seam import pack_basename
from .packorder import PackIndex

OFS_DELTA, REF_DELTA = 6, 7
SHA_LEN = 20
CACHE_BYTES = 8 << 20  # inflated objects kept: a tree walk reads delta chains newest first


class _Numbers:
    """name (hex) -> entry number, as a dict's get()."""

    def __init__(self, index: PackIndex) -> None:
        self.get = index.find


class _Names:
    """entry number -> binary name."""

    def __init__(self, index: PackIndex) -> None:
        self.index = index

    def __len__(self) -> int:
        return self.index.count

    def __getitem__(self, k: int) -> bytes:
        return self.index.name(self.index.order[k])


class _Crcs:
    def __init__(self, index: PackIndex) -> None:
        self.index = index

    def __getitem__(self, k: int) -> int:
        return self.index.crc(self.index.order[k])


class PackError(Exception):
    """A stored pack failed a check: its data is not what its index says."""


class StoredPack:
    """One pack and its v2 index. Entries are numbered by their order in the pack
    (packorder.py keeps that order beside the repository, in `cache_dir`)."""

    def __init__(self, basename: str, cache_dir: str | None = None) -> None:
        self.fd = os.open(basename + ".pack", os.O_RDONLY)
        try:
            pack_size = os.fstat(self.fd).st_size
            self.index = PackIndex(basename + ".idx", pack_size, cache_dir)
        except BaseException:
            os.close(self.fd)
            raise
        # Entry k (in pack order): its name, where it starts and ends, its CRC.
        self.number = _Numbers(self.index)
        self.names = _Names(self.index)
        self.starts = self.index.starts
        self.crcs = _Crcs(self.index)

    def holds_exactly(self, shas: list[bytes]) -> bool:
        """Is this pack's content exactly `shas` (hex names)?"""
        return len(shas) == self.index.count and self.index.hex_names() == set(shas)

    def close(self) -> None:
        os.close(self.fd)
        self.index.close()

    def entry(self, k: int) -> bytes:
        """The stored bytes of entry k (header and compressed data), checked against the CRC."""
        start, end = self.starts[k], self.starts[k + 1]
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start or zlib.crc32(data) != self.crcs[k]:
            raise PackError(f"entry at offset {start} fails its CRC check")
        return data

    def at_offset(self, offset: int) -> int:
        k = bisect.bisect_left(self.starts, offset)
        if k >= len(self.names) or self.starts[k] != offset:
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
        self._cache: dict[int, tuple[int, bytes]] = {}  # oldest first
        self._cached_bytes = 0

    def close(self) -> None:
        for pack in self.packs:
            pack.close()

    def locate(self, sha: bytes) -> tuple[StoredPack, int] | None:
        for pack in self.packs:
            k = pack.number.get(sha)
            if k is not None:
                return pack, k
        return None

    def read(self, sha: bytes) -> tuple[int, bytes]:
        """(type, content) of an object by hex name; KeyError if the repository lacks it."""
        found = self.locate(sha)
        return self.read_entry(*found) if found else self.store.get_raw(sha)

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
            self._cached_bytes -= len(cache.pop(next(iter(cache)))[1])
        return value


def open_reader(repo) -> ObjectReader | None:
    """A reader over the repository's packs, or None if one cannot be read here
    (not SHA-1, or an index that is not v2): then dulwich serves the request."""
    store = repo.object_store
    if getattr(store.object_format, "name", "sha1") != "sha1":
        return None
    packs: list[StoredPack] = []
    try:
        for pack in store.packs:
            packs.append(StoredPack(pack_basename(pack), repo.controldir()))
    except (OSError, ValueError):
        for opened in packs:
            opened.close()
        return None
    # Largest first: most lookups end at the first pack tried.
    packs.sort(key=lambda pack: len(pack.names), reverse=True)
    return ObjectReader(store, packs)
