"""Receive a pack from the wire into an object store without mapping it into memory, and
without letting a small pack make the worker allocate much (delta and zlib bombs).

dulwich's `add_thin_pack` indexes the received pack through an mmap and then maps it
again to parse every object, so a 500 MB push shows as 500 MB more resident memory (the
pages are the page cache's, but they count against the process and its cgroup). Here the
same primitives read the pack through the file instead: the indexer seeks to each object,
so only the object being inflated is in memory. Commits, trees and tags are parsed as they
are indexed (blobs need no parsing), which is the check `add_thin_pack` makes in its
second pass, and handed whole to `visit` (the push's one look at them: newobjects.py).

Limits (`Limits`), checked on the first pass over the wire before anything is resolved:
each object's size as its header declares it, a delta's declared result (and base) size,
and the sum of every object's size once resolved. The first pass inflates in steps of
`INFLATE_STEP` and keeps nothing, so a zlib stream that inflates past its declared size
is refused after at most one step. dulwich's resolver keeps every pending base whole (a
chain of 16 MiB deltas, each with a second child, held them all: 2 GB for 16 KB pushed);
`_Indexer` keeps bases in a cache of `BASE_CACHE_BYTES` and makes an evicted one again.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from itertools import chain

from dulwich.errors import ChecksumMismatch
from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob
from dulwich.pack import (
    DELTA_TYPES,
    OFS_DELTA,
    REF_DELTA,
    PackIndexer,
    PackStreamCopier,
    UnpackedObject,
    extend_pack,
    read_pack_header,
    take_msb_bytes,
    write_pack_index,
)

from ...logs import log_event
from ..dulwich_seam import bound_read_callables, decode_object_header, new_pack_basepath

PACK_MODE = 0o444
MiB = 1024 * 1024
INFLATE_STEP = MiB  # the most the first pass inflates at once
BASE_CACHE_BYTES = 64 * MiB  # delta bases kept while their deltas wait (bigger ones: one)

log = logging.getLogger("gateway.git")


class LimitExceeded(ValueError):
    """A pack asks for more than a limit allows; the message names the limit."""


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int = 0  # 0: no limit
    max_inflated_bytes: int = 0
    worker_memory_limit: int = 0  # not checked here: named when a pack runs out of memory

    def check_object(self, size: int, what: str = "object") -> None:
        if self.max_object_bytes and size > self.max_object_bytes:
            raise LimitExceeded(
                f"{what} of {sizes_text(size, self.max_object_bytes)} (max_object_bytes)"
            )

    def check_total(self, total: int) -> None:
        if self.max_inflated_bytes and total > self.max_inflated_bytes:
            raise LimitExceeded(
                f"inflating the pack's objects comes to more than "
                f"{size_text(self.max_inflated_bytes)} (max_push_inflated_bytes)"
            )


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return (
                f"{value:.0f} {unit}"
                if value >= 10 or value == int(value)
                else f"{value:.1f} {unit}"
            )
    return f"{n} bytes"


def sizes_text(size: int, limit: int) -> str:
    """ "N exceeds the limit of M", in bytes where rounding would make them look equal."""
    a, b = size_text(size), size_text(limit)
    if a == b or a.split()[0] == b.split()[0] + ".0":
        a, b = f"{size} bytes", f"{limit} bytes"
    return f"{a} exceeds the limit of {b}"


def delta_sizes(head: bytes) -> tuple[int, int] | None:
    """(base size, result size) from the start of a delta, None if it is cut short."""
    sizes = []
    pos = 0
    for _ in range(2):
        value = shift = 0
        while True:
            if pos >= len(head) or shift > 63:
                return None
            byte = head[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        sizes.append(value)
    return sizes[0], sizes[1]


class _BoundedCopier(PackStreamCopier):
    """dulwich's copier (the pack to the file, its checksum checked), with a first pass
    that checks the limits and holds no object's data."""

    def __init__(self, hash_func, read_all, read_some, outfile, delta_iter, limits: Limits):
        super().__init__(hash_func, read_all, read_some, outfile, delta_iter=delta_iter)
        self.limits = limits
        self.total = 0

    def read_objects(self, compute_crc32: bool = False):
        # dulwich's read_objects with unpack_object replaced by _skim.
        _version, self._num_objects = read_pack_header(self.read)
        for _ in range(self._num_objects):
            offset = self.offset
            unpacked, unused = self._skim()
            unpacked.offset = offset
            buf = BytesIO()
            buf.write(unused)
            buf.write(self._rbuf.read())
            buf.seek(0)
            self._rbuf = buf
            yield unpacked
        if self._buf_len() < self._hash_size:
            self.read(self._hash_size)
        pack_sha = bytearray(self._trailer)
        if pack_sha != self.sha.digest():
            raise ChecksumMismatch(bytes(pack_sha).hex(), self.sha.hexdigest())

    def _skim(self) -> tuple[UnpackedObject, bytes]:
        """One entry: its header, checked, then its data inflated step by step and
        dropped (the indexer reads it again from the file)."""
        raw, _ = take_msb_bytes(self.read)
        type_num, size = decode_object_header(raw)
        delta_base: int | bytes | None = None
        if type_num == OFS_DELTA:
            raw, _ = take_msb_bytes(self.read)
            delta_base = _ofs(raw)
        elif type_num == REF_DELTA:
            delta_base = self.read(self._hash_size)
        self.limits.check_object(size, "a delta" if type_num in DELTA_TYPES else "an object")
        head, unused = self._inflate(size, want_head=type_num in DELTA_TYPES)
        if type_num in DELTA_TYPES:
            sizes = delta_sizes(head)
            if sizes is None:  # cut short, or a size of more than 64 bits
                raise zlib.error("a delta's header is malformed")
            self.limits.check_object(sizes[0], "a delta's base")
            self.limits.check_object(sizes[1], "a delta's result")
            size = sizes[1]
        self.total += size
        self.limits.check_total(self.total)
        return UnpackedObject(
            type_num, delta_base=delta_base, decomp_len=size, hash_func=self.hash_func
        ), unused

    def _inflate(self, size: int, want_head: bool) -> tuple[bytes, bytes]:
        """Inflate one zlib stream of `size` bytes, keeping only its first 20 bytes;
        returns (those, the bytes read past the stream's end)."""
        inflater = zlib.decompressobj()
        got = 0
        head = b""
        while not inflater.eof:
            data = self.recv(65536)
            if not data:
                raise zlib.error("EOF before end of zlib stream")
            while True:
                out = inflater.decompress(data, INFLATE_STEP)
                got += len(out)
                if got > size:
                    raise zlib.error("an object inflates past its declared size")
                if want_head and len(head) < 20:
                    head += out[: 20 - len(head)]
                data = inflater.unconsumed_tail
                if inflater.eof or (not data and len(out) < INFLATE_STEP):
                    break
        if got != size:
            raise zlib.error("an object inflates to less than its declared size")
        return head, inflater.unused_data


def _ofs(raw: list[int]) -> int:
    distance = raw[0] & 0x7F
    for byte in raw[1:]:
        distance = ((distance + 1) << 7) | (byte & 0x7F)
    if distance == 0:
        raise zlib.error("OFS_DELTA with a distance of 0")
    return distance


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

    def record(self, unpacked: UnpackedObject) -> None:
        super().record(unpacked)
        if unpacked.pack_type_num == OFS_DELTA:
            self._base_of[unpacked.offset] = unpacked.offset - unpacked.delta_base
        elif unpacked.pack_type_num == REF_DELTA:
            self._base_of[unpacked.offset] = bytes(unpacked.delta_base)

    def _result(self, unpacked):
        if unpacked.obj_type_num != Blob.type_num:
            unpacked.sha_file()  # raises on a malformed commit, tree or tag
            if self.visit is not None:
                self.visit(unpacked.sha(), unpacked.obj_type_num, unpacked.obj_chunks)
        return super()._result(unpacked)

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
            unpacked = self._resolve_object(offset, type_num, base)
            del base
            yield self._result(unpacked)
            if key is not None:
                self._done_with(key)
            children = list(
                chain(self._pending_ofs.pop(offset, []), self._pending_ref.pop(unpacked.sha(), []))
            )
            if children:
                for child in children:
                    self._base_of[child] = offset
                self._type[offset] = unpacked.obj_type_num
                self._waiting[offset] = len(children)
                self._keep(offset, unpacked.obj_chunks)
                todo.extend((child, unpacked.obj_type_num) for child in children)

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
            chunks = self._spend(self._resolve_object(key, self._type[key], None).obj_chunks)
        for offset in reversed(path):
            chunks = self._spend(
                self._resolve_object(offset, self._type[offset], chunks).obj_chunks
            )
        return chunks

    def _spend(self, chunks):
        self.spent += sum(map(len, chunks)) if isinstance(chunks, list) else len(chunks)
        self.limits.check_total(self.spent)
        return chunks


def receive_pack(
    store: DiskObjectStore,
    read_all: Callable[[int], bytes],
    read_some: Callable[[int], bytes] | None,
    max_bytes: int | None,
    limits: Limits = Limits(),
    visit: Callable[[bytes, int, list[bytes] | bytes], None] | None = None,
) -> str:
    """Copy a (possibly thin) pack into `store`'s pack directory, complete it with the
    delta bases it lacks, and write its index. Returns the pack's path without suffix.
    `visit(binary name, type, chunks)` sees each commit, tree and tag of the pack once,
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
            copier = _BoundedCopier(hash_func, read_all, read_some, f, indexer, limits)
            copier.verify()
            f.flush()
            indexer.spent = copier.total
            entries = list(indexer)  # no set_pack_data: objects are read through `f`
            pack_sha, extra = extend_pack(
                f, set(indexer.ext_refs()), get_raw=store.get_raw, object_format=store.object_format
            )
            f.flush()
            os.fsync(f.fileno())
        entries.extend(extra)
        entries.sort()
        base = new_pack_basepath(store, entries)
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
