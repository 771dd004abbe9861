"""Upload-pack's pack: the objects walk.py chose, sent from the stored packs' bytes.

`write_pack` copies each entry's stored bytes: a delta whose base is also sent keeps its
delta (re-pointed at the base's new offset), a delta whose base the client has goes as a
REF_DELTA when the client accepts a thin pack; anything else goes whole, inflated from
its delta and deflated once (a result over 4 MiB in pieces, `archive.large_delta`: a
256 MiB blob stored as a 16 KB delta took a thick fetch to 537 MiB).
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import os
import zlib
from collections.abc import Callable

from dulwich.object_format import SHA1
from dulwich.pack import pack_object_header

from .archive import large_delta
from .clonecache import SortedNames
from .storedpacks import (
    OFS_DELTA,
    REF_DELTA,
    SHA_LEN,
    ObjectReader,
    PackError,
    StoredPack,
    parse_header,
    parse_ofs,
)

CHUNK = 1 << 20
WINDOW = 4 << 20  # stored bytes read at once
PACK_HEADER = 12  # "PACK", version, count: the first entry starts after it
ENTRY_MASK = (1 << 40) - 1  # ObjectReader numbers pack n's entries from n << 40


class PackOut:
    """Pack bytes on their way out: counted, hashed for the trailer, sent in large pieces."""

    def __init__(self, write: Callable[[bytes], object]) -> None:
        self.write = write
        self.offset = 0
        self.sha = hashlib.sha1()
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    def add(self, data: bytes) -> None:
        self.sha.update(data)
        self.offset += len(data)
        self.pending.append(data)
        self.pending_bytes += len(data)
        if self.pending_bytes >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.write(b"".join(self.pending))
            self.pending, self.pending_bytes = [], 0

    def finish(self) -> None:
        self.flush()
        self.write(self.sha.digest())


def write_pack(
    write: Callable[[bytes], object],
    reader: ObjectReader,
    shas: list[bytes],
    ofs_delta: bool,
    client_has: set[bytes],
    entries: list[tuple[bytes, int]] | None = None,
) -> None:
    """Send a pack of `shas`. A delta whose base the client has (`client_has`: empty
    unless the client takes a thin pack) goes as a REF_DELTA against it. `entries`, if
    given, gets each entry's binary name and offset (a repack indexes its new pack).

    The entries go in the order they are stored, pack by pack: a delta's base, stored
    before it, is then written before it (so it stays an OFS_DELTA, its header copied
    with only the distance changed), and the stored bytes are read in large pieces
    rather than one read per entry (a partial clone sends 200,000 entries). A stored
    pack all of whose entries are sent goes in one piece (_copy_all): a clone of a
    repository that pushes have left in several packs."""
    unique = list(dict.fromkeys(shas))
    sending = set(unique)
    placed, elsewhere = reader.keys(unique)  # elsewhere: loose, or in packs not read here
    placed.sort()
    out = PackOut(write)
    out.add(b"PACK" + (2).to_bytes(4, "big") + len(unique).to_bytes(4, "big"))
    written: dict[int, int] = {}  # pack.key_base + stored offset -> offset in this pack
    window = _Window()
    for pack in reader.packs:  # in key order: key_base grows with the pack's place
        key_base = pack.key_base
        lo = bisect.bisect_left(placed, key_base)
        hi = bisect.bisect_left(placed, key_base + pack.count)
        if ofs_delta and hi - lo == pack.count:
            _copy_all(out, pack, entries)
            continue
        for key in placed[lo:hi]:
            k = key & ENTRY_MASK
            stored_at = pack.starts[k]
            data = window.entry(pack, k)
            start = out.offset
            type_num, size, pos = parse_header(data)
            if type_num == OFS_DELTA:
                distance, after = parse_ofs(data, pos)
                base_at = written.get(key_base + stored_at - distance)
                if base_at is not None and ofs_delta:
                    if start - base_at == distance:
                        out.add(data)
                    else:
                        out.add(data[:pos] + _ofs_distance(start - base_at) + data[after:])
                else:
                    base = pack.name(pack.at_offset(stored_at - distance))
                    if _base_available(reader, binascii.hexlify(base), pack, sending, client_has):
                        out.add(pack_object_header(REF_DELTA, base, size, SHA1) + data[after:])
                    else:
                        _write_resolved(out, reader, pack, k)
            elif type_num == REF_DELTA:
                base_name = binascii.hexlify(data[pos : pos + SHA_LEN])
                if _base_available(reader, base_name, pack, sending, client_has):
                    out.add(data)
                else:
                    _write_resolved(out, reader, pack, k)
            else:
                out.add(data)
            written[key_base + stored_at] = start
            if entries is not None:
                entries.append((pack.name(k), start))
    for sha in elsewhere:
        if entries is not None:
            entries.append((binascii.unhexlify(sha), out.offset))
        _write_whole(out, *reader.read(sha))
    out.finish()


class _Window:
    """Stored entries read a few MiB at a time (in order), each checked against its CRC."""

    def __init__(self) -> None:
        self.pack: StoredPack | None = None
        self.data = b""
        self.start = self.end = 0

    def entry(self, pack: StoredPack, k: int) -> bytes:
        start, end = pack.starts[k], pack.starts[k + 1]
        if pack is not self.pack or start < self.start or end > self.end:
            length = min(max(end - start, WINDOW), pack.starts[-1] - start)
            self.pack, self.start = pack, start
            self.data = os.pread(pack.fd, length, start)
            self.end = start + len(self.data)
            if self.end < end:
                raise PackError("the pack is shorter than its index says")
        data = self.data[start - self.start : end - self.start]
        if zlib.crc32(data) != pack.crc(k):
            raise PackError(f"entry at offset {start} fails its CRC check")
        return data


def _ofs_distance(distance: int) -> bytes:
    """An OFS_DELTA's distance as Git writes it (base 128, most significant first, each
    byte but the last one less than it says)."""
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def _base_available(
    reader: ObjectReader,
    base_name: bytes,
    pack: StoredPack,
    sending: set[bytes],
    client_has: set[bytes],
) -> bool:
    """Can a delta name its base? Yes if the client has it, or if this pack sends it
    from the same stored pack (so no two deltas can end up based on each other)."""
    if base_name in client_has:
        return True
    found = reader.locate(base_name)
    return base_name in sending and found is not None and found[0] is pack


def _write_resolved(out: PackOut, reader: ObjectReader, pack: StoredPack, k: int) -> None:
    """A stored delta sent whole: read whole, or a large result applied and deflated in
    pieces."""
    large = large_delta(reader, pack, k)
    if large is None:
        _write_whole(out, *reader.read_entry(pack, k))
        return
    type_num, size, pieces = large
    out.add(pack_object_header(type_num, None, size, SHA1))
    deflater = zlib.compressobj(1)
    sent = 0
    for piece in pieces:
        sent += len(piece)
        out.add(deflater.compress(piece))
    out.add(deflater.flush())
    if sent != size:
        raise PackError("a stored delta's result has the wrong size")


def _write_whole(out: PackOut, type_num: int, content: bytes) -> None:
    out.add(pack_object_header(type_num, None, len(content), SHA1) + zlib.compress(content, 1))


def whole_pack(
    reader: ObjectReader, names: SortedNames | None, shas: list[bytes] | None = None
) -> StoredPack | None:
    """The stored pack holding exactly the objects named (`names`, as the clone cache
    keeps them, or else `shas`), if there is one: a clone of a repository repacked since
    its last change. It is sent as it is stored."""
    count = len(shas) if shas is not None else len(names or ())
    candidates = [pack for pack in reader.packs if pack.count == count]
    if not candidates:
        return None
    if names is None:
        names = SortedNames.of(shas or [])
    # Both sorted: the comparison is of two strings.
    return next((p for p in candidates if p.index.name_table() == names.table), None)


def send_whole(write: Callable[[bytes], object], pack: StoredPack) -> None:
    """Send a stored pack as it is. Its checksum is verified on the way: the trailer goes
    out only if the bytes sent are the bytes that were written."""
    for data in _checked_pieces(pack, 0):
        write(data)
    write(os.pread(pack.fd, SHA_LEN, pack.size - SHA_LEN))


def _copy_all(out: PackOut, pack: StoredPack, entries: list[tuple[bytes, int]] | None) -> None:
    """Every entry of a stored pack, as stored, in one piece. Their offsets all move by
    the same amount, so each OFS_DELTA's distance to its base (always in its own pack)
    still holds, and a REF_DELTA's base, which a valid stored pack holds itself, is sent
    too. The stored pack's checksum is verified on the way, as send_whole's is."""
    if entries is not None:
        shift = out.offset - PACK_HEADER
        entries.extend((pack.name(k), pack.starts[k] + shift) for k in range(pack.count))
    for data in _checked_pieces(pack, PACK_HEADER):
        out.add(data)


def _checked_pieces(pack: StoredPack, start: int):
    """The pack's bytes from `start` to its trailer, in large pieces; PackError after the
    last one if they (with the bytes before `start`) do not hash to the trailer."""
    end = pack.size - SHA_LEN  # where the entries end and the trailer begins
    digest = hashlib.sha1(os.pread(pack.fd, start, 0))
    at = start
    while at < end:
        data = os.pread(pack.fd, min(CHUNK, end - at), at)
        if not data:
            raise PackError("the pack is shorter than its index says")
        digest.update(data)
        yield data
        at += len(data)
    if os.pread(pack.fd, SHA_LEN, end) != digest.digest():
        raise PackError("the pack's checksum does not match its contents")
