"""The trees and blobs each commit brings in, computed once per commit and kept.

A clone must send every tree and blob its commits reach. Finding them by reading every
tree of the history is most of a clone's time in Python. But the objects of a commit's
tree that are not at the same path in its first parent's tree depend only on the commit
and its parent, which never change. The union of those lists over the commits a clone
sends is exactly the trees and blobs it must send: an object at an unchanged path came
from an ancestor on the first-parent chain, and a root commit brings its whole tree.
So each commit's list is made once, by a tree diff against its first parent
(walk.Walk.introduced), and kept in `gateway-commit-objects.2` in the repository.

Beside each name the list keeps its kind: tree or blob, and its depth under the root tree
(at the shallowest path the diff found it), so that a partial clone (filters.py) is
chosen from the lists without reading a tree: `blob:none` keeps the trees, `tree:N`
what is less than N deep. (The first format, `gateway-commit-objects`, had no kinds: it
is removed and the lists made again.)

The file is a sequence of records (commit, count, CRC-32, names, kinds), only ever
appended to.
Reading stops at the first record that is short or fails its CRC (a crash half-way
through a write, a damaged disk): that record and those after it are made again and the
file is rewritten from there. Two clones appending at once at worst write a list twice.
"""

from __future__ import annotations

import binascii
import os
import sys
import zlib
from array import array

FILE = "gateway-commit-objects.2"
OLD_FILES = ("gateway-commit-objects",)
SHA_LEN = 20
HEAD_LEN = SHA_LEN + 8  # commit, count, CRC-32
KIND_LEN = 2  # big-endian: depth << 1 | 1 for a tree
MAX_DEPTH = 0x7FFF
TREE_BIT = 1


def kind(depth: int, is_tree: bool) -> int:
    return min(depth, MAX_DEPTH) << 1 | is_tree


class CommitObjects:
    def __init__(self, repo_dir: str) -> None:
        self.path = os.path.join(repo_dir, FILE)
        self.lists: dict[bytes, bytes] = {}  # hex commit -> the names it brings in, binary
        self.kind_lists: dict[bytes, bytes] = {}  # hex commit -> their kinds, binary
        self.valid_bytes = 0
        self.file_bytes = 0
        self.pending: list[bytes] = []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return
        self.file_bytes = len(data)
        pos = 0
        while pos + HEAD_LEN <= len(data):
            count = int.from_bytes(data[pos + SHA_LEN : pos + SHA_LEN + 4], "big")
            names_end = pos + HEAD_LEN + SHA_LEN * count
            end = names_end + KIND_LEN * count
            body = data[pos + HEAD_LEN : end]
            crc = int.from_bytes(data[pos + SHA_LEN + 4 : pos + HEAD_LEN], "big")
            if end > len(data) or zlib.crc32(data[pos : pos + SHA_LEN + 4] + body) != crc:
                break
            commit = binascii.hexlify(data[pos : pos + SHA_LEN])
            if commit not in self.lists:
                self.lists[commit] = data[pos + HEAD_LEN : names_end]
                self.kind_lists[commit] = data[names_end:end]
            pos = end
        self.valid_bytes = pos

    def get(self, commit: bytes) -> list[bytes] | None:
        body = self.lists.get(commit)
        if body is None:
            return None
        names = binascii.hexlify(body)
        return [names[i : i + 2 * SHA_LEN] for i in range(0, len(names), 2 * SHA_LEN)]

    def kinds(self, commit: bytes) -> list[int] | None:
        """The kinds (`kind()`) of `get(commit)`'s names, in the same order."""
        body = self.kind_lists.get(commit)
        if body is None:
            return None
        kinds = array("H", body)
        if sys.byteorder == "little":
            kinds.byteswap()
        return kinds.tolist()

    def put(self, commit: bytes, shas: list[bytes], kinds: list[int]) -> None:
        names = binascii.unhexlify(b"".join(shas))
        kind_bytes = b"".join(k.to_bytes(KIND_LEN, "big") for k in kinds)
        self.lists[commit] = names
        self.kind_lists[commit] = kind_bytes
        body = names + kind_bytes
        head = binascii.unhexlify(commit) + len(shas).to_bytes(4, "big")
        self.pending.append(head + zlib.crc32(head + body).to_bytes(4, "big") + body)

    def save(self) -> None:
        """Append what was made since loading (dropping a damaged tail first)."""
        if not self.pending:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            return  # a read-only repository: the lists are made again next time
        try:
            if self.valid_bytes < self.file_bytes:
                os.ftruncate(fd, self.valid_bytes)
            os.write(fd, b"".join(self.pending))
        except OSError:
            pass
        finally:
            os.close(fd)
        self.pending = []
        for old in OLD_FILES:
            try:
                os.unlink(os.path.join(os.path.dirname(self.path), old))
            except OSError:
                pass
