"""What a full clone sends, remembered until a ref changes.

The object walk is most of a clone's CPU in the worker, and every clone of an unchanged
repository walks to the same answer. A clone writes the list of objects it sent to
`gateway-clone-objects` in the repository, with the key of the refs, wants and tags it
answered and its roots (the wants and the tags it included); the next clone with the same
key reads the list back instead of walking. Any ref change gives a different key, so a
stale list is never taken as it is (see sendpack.extend_clone_objects for what a
fast-forward makes of it). Objects are never deleted while a ref still reaches them, so
a list stays valid across repacks.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import tempfile
from typing import NamedTuple

FILE = "gateway-clone-objects"
MAGIC = b"GWCLONE2\n"
SHA_LEN = 20


def key(refs: dict[bytes, bytes], wants: list[bytes], tagged: dict[bytes, bytes]) -> bytes:
    digest = hashlib.sha256()
    for name in sorted(refs):
        digest.update(b"ref %s %s\n" % (name, refs[name]))
    for sha in sorted(wants):
        digest.update(b"want %s\n" % sha)
    for peeled in sorted(tagged):
        digest.update(b"tag %s %s\n" % (peeled, tagged[peeled]))
    return digest.hexdigest().encode()


class Cached(NamedTuple):
    key: bytes
    roots: list[bytes]
    shas: list[bytes]


def load(repo_dir: str) -> Cached | None:
    """The last clone's answer, or None if there is none or it is damaged."""
    try:
        with open(os.path.join(repo_dir, FILE), "rb") as f:
            data = f.read()
    except OSError:
        return None
    parts = data.split(b"\n", 3)
    if len(parts) != 4 or parts[0] + b"\n" != MAGIC or len(parts[3]) % SHA_LEN:
        return None
    roots = parts[2].split()
    if not all(len(root) == 2 * SHA_LEN for root in roots):
        return None
    names = binascii.hexlify(parts[3])
    return Cached(parts[1], roots, [names[i:i + 2 * SHA_LEN] for i in range(0, len(names), 2 * SHA_LEN)])


def save(repo_dir: str, cache_key: bytes, roots: list[bytes], shas: list[bytes]) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees half."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=FILE + ".", dir=repo_dir)
    except OSError:
        return  # a read-only repository: clones just walk
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + cache_key + b"\n" + b" ".join(roots) + b"\n" + binascii.unhexlify(b"".join(shas)))
        os.replace(tmp, os.path.join(repo_dir, FILE))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
