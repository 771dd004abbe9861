"""A clone's objects from C git's reachability bitmaps (`.bitmap` beside a pack).

A repository that C git repacked (`git repack -adb`, `git gc` of a bare repository: one
copied in by hand, say) has a bitmap per selected commit: which of the pack's objects
that commit reaches. A clone's objects are then the union of the bitmaps of the wanted
commits (and of the first bitmapped ones below the commits pushed since the repack),
the wanted tags, and those newer commits with what each brings in (commitobjects.py):
only the new commits' trees are read, where the first clone ever would otherwise diff
every commit's tree against its parent's (walk.Walk.introduced). Without a bitmap,
`clone_objects` returns None and the clone is walked as before.

dulwich reads bitmaps (dulwich.bitmap) into sets of ints, a bit at a time, and decodes
every entry on opening: seconds for a large pack. Here an EWAH bitmap becomes one Python
int (a run of ones, or literal words byte-swapped into place, per run-length word), and
only the wanted entries and their XOR bases are decoded. Anything unexpected in the file
(a version, a pack checksum that is not the pack's, a bound) means no bitmap.

Format (Documentation/technical/bitmap-format.txt in C git): `BITM`, version 1, flags,
entry count, the pack's checksum; four EWAH type bitmaps (commits, trees, blobs, tags);
then per entry the commit's position in the .idx, an XOR offset (the entry this many
before it is XORed in), flags, an EWAH bitmap. Bit k is the pack's k-th object by offset.
"""

from __future__ import annotations

import binascii
import os
import sys
from array import array
from collections.abc import Iterable

from ..packindex import SHA_LEN
from .clonecache import SortedNames
from .commitobjects import CommitObjects
from .storedpacks import ObjectReader, StoredPack
from .walk import Walk

MAGIC = b"BITM"
HEADER_LEN = 4 + 2 + 2 + 4 + SHA_LEN
MAX_XOR_OFFSET = 160  # C git writes at most this far back
COMMIT, TAG = 1, 4


class BitmapError(ValueError):
    """The .bitmap file is not one this module reads (any such file is ignored)."""


def _ewah_end(data: bytes, pos: int) -> int:
    """Where the EWAH bitmap at `pos` ends."""
    if pos + 8 > len(data):
        raise BitmapError("truncated bitmap")
    end = pos + 8 + 8 * int.from_bytes(data[pos + 4 : pos + 8], "big") + 4
    if end > len(data):
        raise BitmapError("truncated bitmap")
    return end  # after the words, the last run-length word's position


def _ewah(data: bytes, pos: int) -> int:
    """The EWAH bitmap at `pos` as an int (bit k: object k). Its words are laid out
    little-endian in one buffer (runs of ones or zeros, literal words byte-swapped: each
    is big-endian with its bit 0 first), read as one int at the end."""
    bit_count = int.from_bytes(data[pos : pos + 4], "big")
    at, end = pos + 8, _ewah_end(data, pos) - 4
    max_words = (bit_count + 63) // 64
    out = bytearray()
    while at < end:
        rlw = int.from_bytes(data[at : at + 8], "big")
        at += 8
        run, literals = (rlw >> 1) & 0xFFFFFFFF, rlw >> 33
        if at + 8 * literals > end or len(out) // 8 + run + literals > max_words:
            raise BitmapError("a bitmap longer than its bit count")
        out += (b"\xff" if rlw & 1 else b"\x00") * (8 * run)
        if literals:
            block = array("Q", data[at : at + 8 * literals])
            if sys.byteorder == "little":
                block.byteswap()
            out += block.tobytes()
            at += 8 * literals
    return int.from_bytes(out, "little") & ((1 << bit_count) - 1)


class PackBitmaps:
    """One pack's .bitmap: the commits that have an entry, decoded on demand."""

    def __init__(self, pack: StoredPack, basename: str) -> None:
        with open(basename + ".bitmap", "rb") as f:
            data = f.read()
        count = pack.count
        if (
            data[:4] != MAGIC
            or int.from_bytes(data[4:6], "big") != 1
            or data[12:HEADER_LEN] != pack.index.pack_checksum
        ):
            raise BitmapError("not a bitmap of this pack")
        entries = int.from_bytes(data[8:12], "big")
        pos = HEADER_LEN
        for _ in range(4):  # the type bitmaps: not needed here
            pos = _ewah_end(data, pos)
        self.data = data
        self.by_commit: dict[bytes, int] = {}  # binary name -> entry number
        self.entries: list[tuple[int, int]] = []  # (where its EWAH starts, XOR offset)
        for n in range(entries):
            if pos + 6 > len(data):
                raise BitmapError("truncated entry")
            position = int.from_bytes(data[pos : pos + 4], "big")
            xor_offset = data[pos + 4]
            if position >= count or xor_offset > min(n, MAX_XOR_OFFSET):
                raise BitmapError("an entry out of bounds")
            self.by_commit[pack.index.name(position)] = n
            self.entries.append((pos + 6, xor_offset))
            pos = _ewah_end(data, pos + 6)
        self._decoded: dict[int, int] = {}

    def reach(self, commit: bytes) -> int | None:
        """The objects `commit` (binary name) reaches, as bits; None if it has no entry."""
        n = self.by_commit.get(commit)
        return None if n is None else self._entry(n)

    def _entry(self, n: int) -> int:
        # An entry is its stored bitmap XOR the one `xor_offset` entries before it (whose
        # own may be XORed in turn): decoded from the first of the chain not yet known.
        chain = [n]
        while chain[-1] not in self._decoded and self.entries[chain[-1]][1]:
            chain.append(chain[-1] - self.entries[chain[-1]][1])
        value = self._decoded.get(chain[-1], 0)
        if chain[-1] not in self._decoded:
            value = self._decoded[chain[-1]] = _ewah(self.data, self.entries[chain[-1]][0])
        for m in reversed(chain[:-1]):
            value ^= _ewah(self.data, self.entries[m][0])
            self._decoded[m] = value
        return value


def clone_objects(
    reader: ObjectReader, wants: Iterable[bytes], commit_objects: CommitObjects | None = None
) -> list[bytes] | SortedNames | None:
    """Hex names of what a clone of `wants` sends, from a pack's bitmaps: the objects
    the bitmapped commits reach, the wanted tags, and for each commit that no bitmap
    covers (pushed since the repack) the commit and the trees and blobs it brings in (its
    kept list in `commit_objects`, made by a tree diff the first time); when that is the
    whole pack, its index's names as they are. None when that pack has no bitmap, or a
    want is not a commit or a tag of one."""
    # The pack C git wrote with a bitmap (`repack -adb`: everything then reachable).
    pack = next((p for p in reader.packs if os.path.exists(p.basename + ".bitmap")), None)
    if pack is None:
        return None
    try:
        bitmaps = PackBitmaps(pack, pack.basename)
    except (OSError, BitmapError):
        return None
    walk = Walk(reader)
    tags: list[bytes] = []
    pending: list[bytes] = []
    for sha in wants:
        type_num, peeled = walk.peel(sha, tags)
        if type_num != COMMIT:
            return None
        pending.append(peeled)
    # Newest first: a branch tip's bitmap mostly covers the older tags, whose own bitmaps
    # then need no decoding. A commit that is neither reached yet nor bitmapped is sent
    # with what it brings in, and its parents are looked at in turn: every commit that no
    # bitmap covers is reached so, since a covered commit's ancestors are covered.
    pending.sort(key=lambda sha: walk.commit(sha)[2])
    reached = 0
    walked: list[bytes] = []
    seen: set[bytes] = set()
    while pending:
        commit = pending.pop()
        if commit in seen:
            continue
        seen.add(commit)
        k = pack.find(commit)
        if k is not None and reached >> k & 1:
            continue  # already reached: so is everything it reaches
        bits = bitmaps.reach(binascii.unhexlify(commit))
        if bits is not None:
            reached |= bits
            continue
        walked.append(commit)
        pending.extend(walk.commit(commit)[1])
    extra = _walked_objects(walk, walked, commit_objects) + tags
    if not walked and reached | _bits_of(pack, tags) == (1 << pack.count) - 1:
        return SortedNames(pack.index.name_table())  # the whole pack, sent as stored
    names = pack.hex_names_in_pack_order()
    out = [names[k] for k in _set_bits(reached, len(names))]
    added = set()
    for sha in extra:
        k = pack.find(sha)
        if sha not in added and (k is None or not reached >> k & 1):
            added.add(sha)
            out.append(sha)
    return out


def _bits_of(pack: StoredPack, shas: list[bytes]) -> int:
    bits = 0
    for sha in shas:
        k = pack.find(sha)
        if k is None:
            return 0  # not in this pack: not the whole pack
        bits |= 1 << k
    return bits


def _walked_objects(
    walk: Walk, commits: list[bytes], commit_objects: CommitObjects | None
) -> list[bytes]:
    """The commits no bitmap covers, and the trees and blobs each brings in."""
    out = list(commits)
    for commit in commits:
        brought = commit_objects.get(commit) if commit_objects is not None else None
        if brought is None:
            brought, kinds = walk.introduced(commit)
            if commit_objects is not None:
                commit_objects.put(commit, brought, kinds)
        out.extend(brought)
    return out


def _set_bits(value: int, count: int) -> list[int]:
    raw = value.to_bytes((count + 7) // 8, "little")
    out: list[int] = []
    for i, byte in enumerate(raw):
        if byte:
            base = 8 * i
            out.extend(base + b for b in range(8) if byte >> b & 1)
    return out
