"""The push's one look at each commit, tree and tag it brings, as its pack is indexed.

Indexing the received pack (packreader.py) inflates every object whole, once. The
commits, trees and tags the repository does not have yet are taken from there for the
connectivity check's links and for fsck, so neither inflates the pack again: a push of
a 300,000-object history was inflated three times, once for the index, once more for
these checks, after the first pass over the wire. Blobs are not looked at here (fsck
reads the few that new trees name `.gitmodules` or `.gitattributes` at the end), nor are
objects the repository already has (a thin pack's bases, or what another push brought).
"""

from __future__ import annotations

from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, Commit, sha_to_hex

from ..dulwich_seam import loose_object_ids
from . import fsck
from .connectivity import Links


class NewObjects:
    """`visit` for packreader.receive_pack: each new commit, tree and tag to `links`
    and, when fsck is on, to `checker`."""

    def __init__(self, store: DiskObjectStore, links: Links, checker: fsck.Checker | None):
        self.store = store
        self.links = links
        self.checker = checker
        self._stored = fsck.stored_test(store)
        self.commits = 0  # new commits seen (the server's housekeeping asks)

    def __call__(self, sha: bytes, type_num: int, data: bytes) -> None:
        if not self._stored(sha):
            self._see(sha_to_hex(sha), type_num, data)

    def _see(self, hex_sha: bytes, type_num: int, data: bytes) -> None:
        self.commits += type_num == Commit.type_num
        entries = None if self.checker is None else self.checker.check(hex_sha, type_num, data)
        self.links.add(hex_sha, type_num, data, entries)

    def export(self) -> tuple:
        """What this pass found, for the process that indexes the pack's other half
        (packreader._Indexer.walk) to `absorb`."""
        checked = None
        if self.checker is not None:
            checked = (self.checker.problems, self.checker.gitmodules, self.checker.gitattributes)
        return self.links.named, self.links.tip_types, checked, self.commits

    def absorb(self, found: tuple) -> None:
        named, tip_types, checked, commits = found
        self.commits += commits
        self.links.named |= named
        self.links.tip_types.update(tip_types)
        if self.checker is not None and checked is not None:
            problems, gitmodules, gitattributes = checked
            self.checker.problems += problems
            self.checker.gitmodules |= gitmodules
            self.checker.gitattributes |= gitattributes

    def finish(self, quarantine: DiskObjectStore) -> list[fsck.Problem]:
        """After the pack: loose objects in the quarantine (packreader writes none; to
        be sure), then fsck's look at the blobs new trees named. fsck's problems."""
        for hex_sha in loose_object_ids(quarantine):
            if hex_sha not in self.store:
                type_num, data = quarantine.get_raw(hex_sha)
                if type_num != Blob.type_num:
                    self._see(hex_sha, type_num, data)
        if self.checker is None:
            return []
        return fsck.finish_checks(self.checker, quarantine, self.store)
