"""Whether the repository has an object, and its type, from the pack indexes' bytes.

Listing refs asks both of every ref: C git lists only refs whose object exists, and an
annotated tag's ref is advertised with the object it peels to. dulwich's `sha in store`
and `store[sha]` cost tens of microseconds each; here a lookup is a bisection in one
256th of a `.idx` file (mapped, so only the pages touched are read) and a type is the
first byte of the object's entry in the pack. Loose objects are a stat; anything this
module cannot read (an index that is not v2, alternates, a delta's type) is asked of
dulwich's object store, so the answers are always dulwich's.
"""

from __future__ import annotations

import binascii
import os
import zlib

from dulwich.object_store import DiskObjectStore
from dulwich.objects import ObjectID

from ..packindex import SHA_LEN, PackIndex

OBJ_TYPES = {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}
TAG = 4
# One bisection in an index costs about what putting this many of its names in a set does.
BISECT_COST = 40


class _Index(PackIndex):
    """One pack's index, and the type byte of an object's entry in the pack."""

    def __init__(self, idx_path: str) -> None:
        super().__init__(idx_path)
        self.pack_path = idx_path[: -len(".idx")] + ".pack"
        # Opened now, not when a type is first asked: housekeeping may remove the pack
        # once it has repacked, and an open file outlives its name.
        try:
            self._pack_fd: int | None = os.open(self.pack_path, os.O_RDONLY)
        except OSError:
            self.map.close()
            raise

    def type_at(self, position: int) -> int:
        """The type number in the object's entry header (6, 7: a delta)."""
        if self._pack_fd is None:
            self._pack_fd = os.open(self.pack_path, os.O_RDONLY)
        return (os.pread(self._pack_fd, 1, self.offset(position))[0] >> 4) & 7

    def close(self) -> None:
        super().close()
        if self._pack_fd is not None:
            os.close(self._pack_fd)


class ObjectIndex:
    """The objects of one repository (`objects_dir`), for lookups by hex name."""

    def __init__(self, objects_dir: str, store: DiskObjectStore | None = None) -> None:
        self.objects_dir = objects_dir
        self._store = store
        self._own_store = store is None  # one we open, we close
        self._indexes: list[_Index] = []
        self.complete = not os.path.exists(os.path.join(objects_dir, "info", "alternates"))
        pack_dir = os.path.join(objects_dir, "pack")
        try:
            names = sorted(os.listdir(pack_dir))
        except FileNotFoundError:
            names = []
        for name in names:
            pack = os.path.join(pack_dir, name[: -len(".idx")] + ".pack")
            if name.endswith(".idx") and os.path.exists(pack):
                try:
                    self._indexes.append(_Index(os.path.join(pack_dir, name)))
                except FileNotFoundError:
                    # Removed since the listing, by housekeeping, which put a new pack
                    # in first: dulwich (listing again) finds what is not here.
                    self.complete = False
                except (OSError, ValueError):
                    self.complete = False  # dulwich reads what we cannot
        # Largest first: most lookups end at the first index tried.
        self._indexes.sort(key=lambda index: index.count, reverse=True)

    @property
    def store(self) -> DiskObjectStore:
        if self._store is None:
            self._store = DiskObjectStore(self.objects_dir)
        return self._store

    def close(self) -> None:
        for index in self._indexes:
            index.close()
        self._indexes = []
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None

    def _find(self, sha: bytes) -> tuple[_Index, int] | None:
        binsha = binascii.unhexlify(sha)
        for index in self._indexes:
            position = index.position(binsha)
            if position is not None:
                return index, position
        return None

    def _loose_path(self, sha: bytes) -> str:
        return os.path.join(self.objects_dir, sha[:2].decode(), sha[2:].decode())

    def present(self, shas: set[bytes]) -> set[bytes]:
        """Which of `shas` (hex) the repository has: bisections for a few, a set of an
        index's names when there are many to look up in it."""
        missing = {sha for sha in shas if len(sha) == 2 * SHA_LEN}
        found = shas - missing  # not SHA-1: asked of dulwich below
        found = {sha for sha in found if ObjectID(sha) in self.store}
        for index in self._indexes:
            if not missing:
                break
            if len(missing) * BISECT_COST > index.count:
                here = missing & index.hex_names()
            else:
                here = {s for s in missing if index.position(binascii.unhexlify(s)) is not None}
            found |= here
            missing -= here
        for sha in missing:
            if os.path.exists(self._loose_path(sha)) or (
                not self.complete and ObjectID(sha) in self.store
            ):
                found.add(sha)
        return found

    def contains(self, sha: bytes) -> bool:
        if len(sha) != 2 * SHA_LEN:
            return ObjectID(sha) in self.store  # not SHA-1: dulwich knows
        if self._find(sha) is not None or os.path.exists(self._loose_path(sha)):
            return True
        return not self.complete and ObjectID(sha) in self.store

    def is_tag(self, sha: bytes) -> bool:
        """Whether the object is an annotated tag; KeyError if it is missing."""
        found = self._find(sha) if len(sha) == 2 * SHA_LEN else None
        if found is not None:
            type_num = found[0].type_at(found[1])
            if type_num in OBJ_TYPES:
                return type_num == TAG
        else:
            loose = self._loose_type(sha)
            if loose is not None:
                return loose == b"tag"
        return self.store.get_raw(ObjectID(sha))[0] == TAG  # a delta, or not here: dulwich reads it

    def _loose_type(self, sha: bytes) -> bytes | None:
        try:
            with open(self._loose_path(sha), "rb") as f:
                head = zlib.decompressobj().decompress(f.read(64), 16)
        except (OSError, zlib.error, UnicodeError):
            return None
        return head.split(b" ", 1)[0] or None
