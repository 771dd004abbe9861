"""What a full clone sends, remembered until a ref changes.

Every clone of an unchanged repository comes to the same list of objects. A clone writes
the list it sent to `gateway-clone-objects` in the repository, under the key of the refs,
wants and tags it answered; the next clone with the same key reads it back and does not
even walk the commits. Any ref change gives a different key, so a stale list is never
used (that clone makes its list from the commits' kept lists, commitobjects.py). Objects
are never deleted while a ref still reaches them, so a list stays valid across repacks.
A partial clone's list (a filter, filters.py) is kept the same way in its own file,
`gateway-clone-objects-filtered`, its key naming the filter too, so that it does not
push out the full clone's.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import tempfile

from .filters import ObjectFilter

FILE = "gateway-clone-objects"
FILTERED_FILE = "gateway-clone-objects-filtered"
MAGIC = b"GWCLONE1\n"
SHA_LEN = 20


def key(
    refs: dict[bytes, bytes],
    wants: list[bytes],
    tagged: dict[bytes, bytes],
    object_filter: ObjectFilter | None = None,
) -> bytes:
    digest = hashlib.sha256()
    if object_filter is not None:
        digest.update(b"filter %r %r\n" % (object_filter.blob_limit, object_filter.tree_depth))
    for name in sorted(refs):
        digest.update(b"ref %s %s\n" % (name, refs[name]))
    for sha in sorted(wants):
        digest.update(b"want %s\n" % sha)
    for peeled in sorted(tagged):
        digest.update(b"tag %s %s\n" % (peeled, tagged[peeled]))
    return digest.hexdigest().encode()


class SortedNames:
    """A clone's objects as this file keeps them: binary names, sorted, 20 bytes each,
    as a pack index's name table is (packwriter.whole_pack compares the two as they are:
    a clone of a repository repacked since its last change never makes hex names)."""

    def __init__(self, table: bytes) -> None:
        self.table = table

    @classmethod
    def of(cls, shas: list[bytes]) -> SortedNames:
        return cls(binascii.unhexlify(b"".join(sorted(shas))))

    def __len__(self) -> int:
        return len(self.table) // SHA_LEN

    def hex_names(self) -> list[bytes]:
        names = binascii.hexlify(self.table)
        return [names[i : i + 2 * SHA_LEN] for i in range(0, len(names), 2 * SHA_LEN)]


def load(repo_dir: str, cache_key: bytes, filtered: bool = False) -> SortedNames | None:
    try:
        with open(os.path.join(repo_dir, FILTERED_FILE if filtered else FILE), "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = MAGIC + cache_key + b"\n"
    body = data[len(head) :]
    if not data.startswith(head) or len(body) % SHA_LEN:
        return None
    return SortedNames(body)


def save(repo_dir: str, cache_key: bytes, names: SortedNames, filtered: bool = False) -> None:
    write_whole(
        repo_dir, FILTERED_FILE if filtered else FILE, MAGIC + cache_key + b"\n" + names.table
    )


def write_whole(repo_dir: str, name: str, data: bytes) -> None:
    """Written whole under a temporary name, then renamed: a reader never sees half. A
    read-only repository keeps nothing (its requests just walk)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=name + ".", dir=repo_dir)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(repo_dir, name))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
