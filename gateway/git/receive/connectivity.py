"""Is a push complete: does every object it brings name only objects that exist? (SPEC §7)

The push's new commits, trees and tags are read once, as the received pack is indexed
(newobjects.py: the same look fsck takes), and `Links` keeps every name they use. The
push is complete when each of those names, and each new tip, is in the quarantine or in
the store. Objects already stored were complete when they came in and are not read, so
the cost is what the push brings, whatever the history's length or the number of refs;
walking the history from each tip instead read the same objects once per ref (2,000 refs
of one history: 2,000 walks), each through dulwich's delta resolution.

This is C git's `index-pack --strict` rule (every link of every object in the pack
resolves), a little stricter than a walk from the tips: an object nothing reaches that
names a missing one refuses the push too. A push found incomplete is walked again from
each tip (pipeline.py) only to give each ref its own message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from operator import itemgetter

from dulwich.object_store import DiskObjectStore
from dulwich.objects import Commit, Tag, Tree, hex_to_sha, sha_to_hex

from ..dulwich_seam import loose_object_ids, pack_basename
from ..packindex import PackIndex
from .fsck import pack_holds

# A tree entry: its mode and the 20 bytes of its object's name (a gitlink's is skipped:
# a submodule's commit lives in another repository).
_TREE_ENTRY = re.compile(rb"([0-7]+) [^\0]*\0(.{20})", re.S)
GITLINK = b"160000"
_ENTRY_NAME = itemgetter(2)  # of fsck's (mode, name, binary name)


class Links:
    """The binary names new objects use, and the types of the tips among them."""

    def __init__(self, tips: Iterable[bytes]) -> None:
        self.named: set[bytes] = set()
        self.tips = set(tips)  # hex
        self.tip_types: dict[bytes, int] = {}

    def add(
        self,
        sha: bytes,
        type_num: int,
        data: bytes,
        entries: list[tuple[bytes, bytes, bytes]] | None = None,
    ) -> None:
        """One new object (hex name, type, raw content); a tree's entries (mode, name,
        binary name) if fsck has parsed them already."""
        if sha in self.tips:
            self.tip_types[sha] = type_num
        if type_num == Tree.type_num:
            if entries is not None and b"160000 " not in data:  # no gitlink: all of them
                self.named.update(map(_ENTRY_NAME, entries))
            elif entries is not None:
                self.named.update(entry for mode, _name, entry in entries if mode != GITLINK)
            else:
                self.named.update(n for mode, n in _TREE_ENTRY.findall(data) if mode != GITLINK)
        elif type_num == Commit.type_num:
            head = data.split(b"\n\n", 1)[0]
            # Every header line, as dulwich reads them (a continuation line, in a
            # mergetag or signature, starts with a space).
            for line in head.split(b"\n"):
                if line.startswith(b"tree ") or line.startswith(b"parent "):
                    self.named.add(_binary(line.split(b" ", 1)[1]))
        elif type_num == Tag.type_num:
            first = data.split(b"\n", 1)[0]
            if first.startswith(b"object "):
                self.named.add(_binary(first[7:]))


def _binary(hex_name: bytes) -> bytes:
    try:
        return hex_to_sha(hex_name.strip())
    except (ValueError, TypeError):
        return hex_name  # not a name: missing below, as anything unknown is


def present_names(store: DiskObjectStore) -> set[bytes]:
    """Every binary name in a quarantine (its packs and any loose objects)."""
    names: set[bytes] = set()
    for pack in store.packs:  # the index's name table, not dulwich's entry by entry
        index = PackIndex(pack_basename(pack) + ".idx")
        try:
            names.update(index.name_list())
        finally:
            index.close()
    names.update(hex_to_sha(sha) for sha in loose_object_ids(store))
    return names


def first_missing(
    links: Links, tips: Iterable[bytes], quarantine: DiskObjectStore, store: DiskObjectStore
) -> bytes | None:
    """A hex name that a new object or a tip uses and that neither the quarantine nor
    the store has; None when the push is complete."""
    wanted = set(links.named)
    wanted.update(hex_to_sha(tip) for tip in tips)
    rest = wanted - present_names(quarantine)
    if not rest:
        return None
    # The store's packs and loose objects, looked at once (dulwich's `in` rescans the
    # pack directory on every miss); what they lack is asked of dulwich, alternates and
    # all, before it counts as missing.
    packs, loose = list(store.packs), set(loose_object_ids(store))
    for sha in rest:
        if any(pack_holds(pack, sha) for pack in packs) or sha_to_hex(sha) in loose:
            continue
        if len(sha) != 20 or sha_to_hex(sha) not in store:
            return sha_to_hex(sha) if len(sha) == 20 else sha
    return None
