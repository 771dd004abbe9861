"""Which ids a client may fetch: only objects a ref reaches.

A client's wants are mostly ref tips, but a partial clone later fetches what it left out
by id (a checkout's blobs, `git log -p`'s), and any client may send any id. An object
is served only if a ref the identity may read reaches it (today every ref of the
repository): never an object only a deleted branch reached, never one the repository
does not have. The objects all refs reach are listed once per ref state, sorted, in
`gateway-reachable-objects` (the key of the refs first, as in clonecache.py), made from
the commits' kept lists (commitobjects.py) the first time an id that is not a tip is
asked for; a ref change gives a new key and the list is made again.
"""

from __future__ import annotations

import binascii
import os

from . import clonecache, walk
from .commitobjects import CommitObjects
from .storedpacks import ObjectReader, PackError

FILE = "gateway-reachable-objects"
MAGIC = b"GWREACH1\n"
SHA_LEN = 20


class NotReachable(ValueError):
    """A want no ref reaches; the message is the user's one line."""

    def __init__(self, sha: bytes) -> None:
        self.sha = sha
        shown = sha.decode("ascii", "replace")
        super().__init__(f"upload-pack: not our ref {shown}: no branch or tag reaches it")


def check_wants(
    repo_path: str, reader: ObjectReader, refs: dict[bytes, bytes], wants: list[bytes]
) -> None:
    """Raise NotReachable for the first of `wants` that no ref in `refs` reaches."""
    tips = set(refs.values())
    others = [sha for sha in wants if sha not in tips]
    if not others:
        return
    names = _reachable(repo_path, reader, refs)
    for sha in others:
        try:
            name = binascii.unhexlify(sha)
        except (binascii.Error, ValueError):
            raise NotReachable(sha) from None
        if len(name) != SHA_LEN or not _contains(names, name):
            raise NotReachable(sha)


def _reachable(repo_path: str, reader: ObjectReader, refs: dict[bytes, bytes]) -> bytes:
    """The sorted binary names of every object the refs reach."""
    cache_key = clonecache.key(refs, [], {})
    head = MAGIC + cache_key + b"\n"
    path = os.path.join(repo_path, FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data.startswith(head) and (len(data) - len(head)) % SHA_LEN == 0:
            return data[len(head) :]
    except OSError:
        pass
    commit_objects = CommitObjects(repo_path)
    try:
        shas, _ = walk.objects_to_send(reader, sorted(set(refs.values())), [], {}, commit_objects)
    except KeyError as exc:  # a ref reaches an object the repository lacks
        raise PackError(f"object {exc} is missing") from None
    commit_objects.save()
    binary = [binascii.unhexlify(sha) for sha in shas]
    binary.sort()
    names = b"".join(binary)
    clonecache.write_whole(repo_path, FILE, head + names)
    return names


def _contains(names: bytes, name: bytes) -> bool:
    """Binary search of the sorted, fixed-width names."""
    low, high = 0, len(names) // SHA_LEN
    while low < high:
        middle = (low + high) // 2
        at = names[middle * SHA_LEN : (middle + 1) * SHA_LEN]
        if at < name:
            low = middle + 1
        elif at > name:
            high = middle
        else:
            return True
    return False
