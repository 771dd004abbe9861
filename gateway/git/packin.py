"""Receive a pack from the wire into an object store without mapping it into memory.

dulwich's `add_thin_pack` indexes the received pack through an mmap and then maps it
again to parse every object, so a 500 MB push shows as 500 MB more resident memory (the
pages are the page cache's, but they count against the process and its cgroup). Here the
same primitives read the pack through the file instead: the indexer seeks to each object,
so only the object being inflated is in memory. Commits, trees and tags are parsed as they
are indexed (blobs need no parsing), which is the check `add_thin_pack` makes in its
second pass.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from dulwich.object_store import DiskObjectStore, _bound_read_callables
from dulwich.objects import Blob
from dulwich.pack import PackIndexer, PackStreamCopier, extend_pack, write_pack_index

PACK_MODE = 0o444


class _ParsingIndexer(PackIndexer):
    """An index entry per object, after parsing the objects that have a syntax."""

    def _result(self, unpacked):
        if unpacked.obj_type_num != Blob.type_num:
            unpacked.sha_file()  # raises on a malformed commit, tree or tag
        return super()._result(unpacked)


def receive_pack(store: DiskObjectStore, read_all: Callable[[int], bytes],
                 read_some: Callable[[int], bytes] | None, max_bytes: int | None) -> str:
    """Copy a (possibly thin) pack into `store`'s pack directory, complete it with the
    delta bases it lacks, and write its index. Returns the pack's path without suffix.
    Raises (leaving nothing behind) on a truncated, corrupt or oversized pack."""
    if max_bytes:
        read_all, read_some = _bound_read_callables(read_all, read_some, max_bytes)
    hash_func = store.object_format.hash_func
    fd, path = tempfile.mkstemp(dir=store.path, prefix="tmp_pack_")
    try:
        with os.fdopen(fd, "w+b") as f:
            indexer = _ParsingIndexer(f, hash_func, resolve_ext_ref=store.get_raw)
            copier = PackStreamCopier(hash_func, read_all, read_some, f, delta_iter=indexer)
            copier.verify()
            f.flush()
            entries = list(indexer)  # no set_pack_data: objects are read through `f`
            pack_sha, extra = extend_pack(f, set(indexer.ext_refs()), get_raw=store.get_raw,
                                          object_format=store.object_format)
            f.flush()
            os.fsync(f.fileno())
        entries.extend(extra)
        entries.sort()
        base = store._get_pack_basepath(entries)
        os.chmod(path, PACK_MODE)
        os.rename(path, base + ".pack")
        index_tmp = base + ".idx.tmp"
        with open(index_tmp, "wb") as index_file:
            write_pack_index(index_file, entries, pack_sha)
            index_file.flush()
            os.fsync(index_file.fileno())
        os.chmod(index_tmp, PACK_MODE)
        os.rename(index_tmp, base + ".idx")
        return base
    except BaseException:
        _remove(path)
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
