"""Receive a pack from the wire into an object store without mapping it into memory, and
without letting a small pack make the worker allocate much (delta and zlib bombs).

dulwich's `add_thin_pack` indexes the received pack through an mmap and then maps it
again to parse every object, so a 500 MB push shows as 500 MB more resident memory (the
pages are the page cache's, but they count against the process and its cgroup). Here the
pack is read through the file instead: the first pass (packstream.py) writes it and notes
where each entry lies, and the indexer reads each entry back with one `pread`, so only the
object being inflated is in memory. Commits, trees and tags are parsed as they are indexed
(blobs need no parsing), which is the check `add_thin_pack` makes in its second pass, and
handed whole to `visit` (the push's one look at them: newobjects.py).

Limits (`Limits`), checked on the first pass over the wire before anything is resolved:
each object's size as its header declares it, a delta's declared result (and base) size,
and the sum of every object's size once resolved. The first pass inflates in bounded
steps and keeps nothing, so a zlib stream that inflates past its declared size is
refused after at most one step. dulwich's resolver keeps every pending base whole (a
chain of 16 MiB deltas, each with a second child, held them all: 2 GB for 16 KB pushed);
`_Indexer` keeps bases in a cache of `BASE_CACHE_BYTES` and makes an evicted one again.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import zlib
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from itertools import chain
from operator import itemgetter

from dulwich.errors import ObjectFormatException
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, ShaFile, Tree, object_header, parse_tree
from dulwich.pack import (
    OFS_DELTA,
    REF_DELTA,
    ApplyDeltaError,
    PackIndexer,
    apply_delta,
    extend_pack,
)

from ...logs import log_event
from .. import packindex
from ..dulwich_seam import bound_read_callables, new_pack_basepath
from .limits import LimitExceeded, Limits, MiB
from .packstream import PackStream

PACK_MODE = 0o444
# From this many objects, two processes resolve the pack's delta chains, each from half
# of the whole objects (C git's index-pack uses threads): below it, forking costs more
# than it saves.
PARALLEL_FROM = 20_000
NO_LIMITS = Limits()
BASE_CACHE_BYTES = 64 * MiB  # delta bases kept while their deltas wait (bigger ones: one)

log = logging.getLogger("gateway.git")


class _Indexer(PackIndexer):
    """An index entry per object, after parsing the objects that have a syntax; delta
    bases kept within BASE_CACHE_BYTES, one evicted made again from its own base."""

    def __init__(self, f, hash_func, resolve_ext_ref, limits: Limits, visit=None) -> None:
        super().__init__(f, hash_func, resolve_ext_ref=resolve_ext_ref)
        self.limits = limits
        self.visit = visit
        self.spent = 0  # bytes inflated so far (the first pass sets it), rebuilds included
        self._base_of: dict[int, int | bytes] = {}  # delta's offset: its base's, or a name
        self._type: dict[int, int] = {}  # resolved type of each base in this pack
        self._waiting: dict[int | bytes, int] = {}  # base: its deltas not resolved yet
        self._cache: OrderedDict[int | bytes, list[bytes]] = OrderedDict()
        self._cached = 0
        self._fd = f.fileno()
        self._sha_len = hash_func().digest_size
        self._offsets = array("Q")  # each entry's offset, in pack order
        self._data_offsets = array("Q")  # where its zlib data starts
        self.end = 0  # where the last entry ends

    def note(self, offset: int, data_offset: int, kind: int, base: int | bytes | None) -> None:
        """One entry, as the first pass found it (packstream.Note)."""
        self._offsets.append(offset)
        self._data_offsets.append(data_offset)
        if kind == OFS_DELTA:
            assert isinstance(base, int)
            self._pending_ofs[offset - base].append(offset)
            self._base_of[offset] = offset - base
        elif kind == REF_DELTA:
            assert isinstance(base, bytes)
            self._pending_ref[base].append(offset)
            self._base_of[offset] = base
        else:
            self._full_ofs.append((offset, kind))

    def walk(self) -> list[tuple[bytes, int, int]]:
        """(binary name, offset, CRC32) of every entry, and each commit, tree and tag
        visited. A large pack whose deltas all name their base by offset (no thin
        pack's bases to fetch) is walked by two processes: the chains from every other
        whole object in a forked child, which sends back its entries and what its visit
        found (`visit.export()`, given to `visit.absorb`)."""
        if (
            len(self._offsets) < PARALLEL_FROM
            or self._pending_ref
            or (os.cpu_count() or 1) < 2
            or (self.visit is not None and not hasattr(self.visit, "export"))
        ):
            return list(self)
        roots = self._full_ofs
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its half, its result down the pipe, and gone
            os.close(reader)
            # Not holding the client's channel open should the worker itself go.
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(null, fd)
            try:
                mine = self._chains(roots[1::2])
                mine.sort(key=itemgetter(0))  # sorted here, beside the parent's sort
                result: tuple = ("ok", mine, self._export())
            except BaseException as exc:
                result = ("error", exc)
            try:
                with os.fdopen(writer, "wb") as out:
                    pickle.dump(result, out, protocol=pickle.HIGHEST_PROTOCOL)
            finally:
                os._exit(0)
        os.close(writer)
        try:
            entries = self._chains(roots[0::2])
            entries.sort(key=itemgetter(0))  # while the child may still be at its half
        finally:
            with os.fdopen(reader, "rb") as inp:
                sent = inp.read()
            os.waitpid(pid, 0)
        if not sent:
            raise OSError("the second process indexing the pack ended without a result")
        result = pickle.loads(sent)
        if result[0] == "error":
            raise result[1]
        entries += result[1]  # sorted there: the caller's sort merges two runs
        if self.visit is not None:
            self.visit.absorb(result[2])
        if len(entries) != len(self._offsets):  # dulwich's walk asserts this, too
            raise ValueError("a delta's base is not an object of the pack")
        return entries

    def _chains(self, roots: list[tuple[int, int]]) -> list[tuple[bytes, int, int]]:
        entries = []
        for offset, type_num in roots:
            entries.extend(self._follow_chain(offset, type_num, None))
        return entries

    def _export(self):
        return None if self.visit is None else self.visit.export()

    def _content(self, offset: int, type_num: int, base_chunks) -> tuple[list[bytes], int]:
        """(content, CRC32) of the entry at `offset`: read with one pread (its extent is
        known from the first pass, which also checked that it inflates to its declared
        size), inflated in one call and, for a delta, applied to `base_chunks`."""
        i = bisect_left(self._offsets, offset)
        end = self._offsets[i + 1] if i + 1 < len(self._offsets) else self.end
        raw = os.pread(self._fd, end - offset, offset)
        with memoryview(raw) as view:
            data = zlib.decompress(view[self._data_offsets[i] - offset :])
        if base_chunks is None:
            return [data], zlib.crc32(raw)
        chunks = apply_delta(base_chunks, [data])
        if type_num != Blob.type_num and not any(chunks):
            # dulwich's rule: an empty commit, tree or tag from a delta is malformed
            raise ApplyDeltaError(f"delta resolved to empty payload for type {type_num}")
        return chunks, zlib.crc32(raw)

    def _name(self, type_num: int, chunks: list[bytes]) -> bytes:
        """The object's binary name; a commit, tree or tag is parsed and visited."""
        if type_num == Blob.type_num:
            digest = self.hash_func(b"blob %d\0" % sum(map(len, chunks)))
            for chunk in chunks:
                digest.update(chunk)
            return digest.digest()
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        _parse(type_num, data, self._sha_len)
        digest = self.hash_func(object_header(type_num, len(data)))
        digest.update(data)
        sha = digest.digest()
        if self.visit is not None:
            self.visit(sha, type_num, data)
        return sha

    def _follow_chain(self, offset, obj_type_num, base_chunks):
        root_base = self._base_of.get(offset)
        if base_chunks is not None and root_base is not None:  # an external base
            self._waiting[root_base] = self._waiting.get(root_base, 0) + 1
            self._keep(root_base, base_chunks)
        del base_chunks
        todo = [(offset, obj_type_num)]
        while todo:
            offset, type_num = todo.pop()
            key = self._base_of.get(offset)
            base = None if key is None else self._base(key, type_num)
            chunks, crc = self._content(offset, type_num, base)
            del base
            sha = self._name(type_num, chunks)
            yield sha, offset, crc
            if key is not None:
                self._done_with(key)
            children = list(
                chain(self._pending_ofs.pop(offset, []), self._pending_ref.pop(sha, []))
            )
            if children:
                for child in children:
                    self._base_of[child] = offset
                self._type[offset] = type_num
                self._waiting[offset] = len(children)
                self._keep(offset, chunks)
                todo.extend((child, type_num) for child in children)

    def _keep(self, key, chunks) -> None:
        if key in self._cache:
            return
        self._cache[key] = chunks
        self._cached += sum(map(len, chunks)) if isinstance(chunks, list) else len(chunks)
        while self._cached > BASE_CACHE_BYTES and len(self._cache) > 1:
            self._drop(next(iter(self._cache)))

    def _drop(self, key) -> None:
        chunks = self._cache.pop(key, None)
        if chunks is not None:
            self._cached -= sum(map(len, chunks)) if isinstance(chunks, list) else len(chunks)

    def _done_with(self, key) -> None:
        left = self._waiting.get(key, 1) - 1
        if left <= 0:
            self._waiting.pop(key, None)
            self._drop(key)
        else:
            self._waiting[key] = left

    def _base(self, key, type_num: int):
        """The content of a base: from the cache, or made again."""
        chunks = self._cache.get(key)
        if chunks is not None:
            self._cache.move_to_end(key)
            return chunks
        chunks = self._rebuild(key)
        if self._waiting.get(key, 0) > 1:
            self._keep(key, chunks)
        return chunks

    def _rebuild(self, key):
        """An evicted base, made again; the work counts against max_push_inflated_bytes,
        so that a chain built to defeat the cache costs bounded time."""
        if isinstance(key, bytes):  # an external base: ask the store again
            return self._spend(self._resolve_ext_ref(key)[1])
        path = []
        while key in self._base_of and key not in self._cache:
            path.append(key)
            key = self._base_of[key]
        if key in self._cache:
            chunks = self._cache[key]
        elif isinstance(key, bytes):
            chunks = self._spend(self._resolve_ext_ref(key)[1])
        else:
            chunks = self._spend(self._content(key, self._type[key], None)[0])
        for offset in reversed(path):
            chunks = self._spend(self._content(offset, self._type[offset], chunks)[0])
        return chunks

    def _spend(self, chunks):
        self.spent += sum(map(len, chunks)) if isinstance(chunks, list) else len(chunks)
        self.limits.check_total(self.spent)
        return chunks


def _parse(type_num: int, data: bytes, sha_len: int) -> None:
    """Raises as dulwich does on a commit, tree or tag it cannot parse (the serving path
    parses them); a tree is parsed without building dulwich's Tree, a dict a tree."""
    if type_num == Tree.type_num:
        try:
            parse_tree(data, sha_len)
        except ValueError as exc:
            raise ObjectFormatException(exc) from exc
    else:
        ShaFile.from_raw_string(type_num, data)


def receive_pack(
    store: DiskObjectStore,
    read_all: Callable[[int], bytes],
    read_some: Callable[[int], bytes] | None,
    max_bytes: int | None,
    limits: Limits = NO_LIMITS,
    visit: Callable[[bytes, int, bytes], None] | None = None,
) -> str:
    """Copy a (possibly thin) pack into `store`'s pack directory, complete it with the
    delta bases it lacks, and write its index. Returns the pack's path without suffix.
    `visit(binary name, type, content)` sees each commit, tree and tag of the pack once,
    as it is indexed (not the bases appended to complete a thin pack). Raises (leaving
    nothing behind) on a truncated, corrupt or oversized pack: LimitExceeded for one
    that passes `limits`, or that runs out of memory."""
    if max_bytes:
        read_all, read_some = bound_read_callables(read_all, read_some, max_bytes)
    hash_func = store.object_format.hash_func
    fd, path = tempfile.mkstemp(dir=store.path, prefix="tmp_pack_")
    try:
        with os.fdopen(fd, "w+b") as f:
            indexer = _Indexer(f, hash_func, store.get_raw, limits, visit)
            stream = PackStream(read_some or read_all, f, hash_func, limits, indexer.note)
            stream.run()
            f.flush()
            indexer.spent, indexer.end = stream.total, stream.end
            entries = indexer.walk()
            missing = set(indexer.ext_refs())
            if missing:  # a thin pack: its bases appended, the header and trailer anew
                pack_sha, extra = extend_pack(
                    f, missing, get_raw=store.get_raw, object_format=store.object_format
                )
                f.flush()
                entries.extend(extra)
            else:  # complete as it came: its own trailer, checked on the first pass
                pack_sha = stream.checksum
            os.fsync(f.fileno())
        entries.sort(key=itemgetter(0))  # runs sorted by each process: one merge
        base = new_pack_basepath(store, entries)
        os.chmod(path, PACK_MODE)
        os.rename(path, base + ".pack")
        index_tmp = base + ".idx.tmp"
        with open(index_tmp, "wb") as index_file:
            packindex.write_index(index_file, entries, pack_sha)
            index_file.flush()
            os.fsync(index_file.fileno())
        os.chmod(index_tmp, PACK_MODE)
        os.rename(index_tmp, base + ".idx")
        return base
    except MemoryError:
        _remove(path)
        log_event(
            log,
            "git.out_of_memory",
            level=logging.WARNING,
            service="git-receive-pack",
            repository=os.path.dirname(os.path.dirname(os.path.abspath(store.path))),
            limit=limits.worker_memory_limit,
        )
        raise LimitExceeded(
            "the pack needs more memory than the server allows a request (worker_memory_limit)"
        ) from None
    except LimitExceeded as exc:
        _remove(path)
        log_event(
            log,
            "git.refused",
            service="git-receive-pack",
            repository=os.path.dirname(os.path.dirname(os.path.abspath(store.path))),
            reason=str(exc),
        )
        raise
    except BaseException:
        _remove(path)
        raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
