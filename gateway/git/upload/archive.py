"""`git archive --remote`'s tar stream, with large files sent in pieces.

dulwich's `tar_stream` holds each blob whole, and again in its tar buffer: a 256 MiB
blob stored as a 16 KB delta cost about 1 GB per archive. Here the archive is planned
first, before the client is told ACK: every path is checked the way dulwich checks it
(an unsafe one is a refusal), and every file's size is read from its pack entry's header
(for a delta, from the first bytes of the delta) without inflating it, so a file over
`max_object_bytes` is refused before anything is sent. Files above `STREAM_ABOVE` are
then inflated, or their delta applied, in pieces of at most `PIECE` bytes; smaller ones
are read whole, as upload-pack reads them.

Loose objects and packs that `storedpacks` cannot read are read whole through dulwich.
"""

from __future__ import annotations

import binascii
import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from dulwich.archive import UnsafeArchivePathError
from dulwich.index import cleanup_mode
from dulwich.objects import Blob, Tree

from ..dulwich_seam import is_unsafe_archive_path, loose_object_path
from ..receive.limits import sizes_text
from ..receive.packstream import delta_sizes
from .storedpacks import (
    OFS_DELTA,
    REF_DELTA,
    SHA_LEN,
    ObjectReader,
    PackError,
    StoredPack,
    parse_header,
    parse_ofs,
)

BLOB = 3
GITLINK = 0o160000
STREAM_ABOVE = 4 * 1024 * 1024
PIECE = 1024 * 1024


class ArchiveRefused(Exception):
    """The archive cannot be made; the message is for the user."""


@dataclass
class _File:
    path: bytes
    mode: int
    sha: bytes
    size: int
    where: tuple | None  # (pack, entry, kind, base) when read from a stored pack


def plan(
    store, reader: ObjectReader | None, tree: Tree, prefix: bytes, max_object_bytes: int
) -> list[_File]:
    """Every file of the archive, checked; raises ArchiveRefused."""
    files = []
    try:
        for path, entry in _walk(store, tree, prefix):
            if entry.mode == GITLINK or stat.S_ISDIR(entry.mode):
                continue  # a submodule's commit is not here (dulwich skips it too)
            found = _locate(store, reader, entry.sha)
            if found is None:
                continue  # missing, or not a blob: dulwich leaves it out as well
            size, base_size, where = found
            if max_object_bytes and size > max_object_bytes:
                raise ArchiveRefused(
                    f"a file of {sizes_text(size, max_object_bytes)} (max_object_bytes)"
                )
            if max_object_bytes and base_size > max_object_bytes:
                raise ArchiveRefused(
                    f"a file stored as a delta on an object of "
                    f"{sizes_text(base_size, max_object_bytes)} (max_object_bytes)"
                )
            files.append(_File(path, entry.mode, entry.sha, size, where))
    except UnsafeArchivePathError:
        raise ArchiveRefused(
            "the tree holds a path that is not safe in an archive "
            "(an absolute path, '..' or '.git')"
        ) from None
    return files


def _walk(store, tree: Tree, root: bytes):
    for entry in tree.iteritems():
        if is_unsafe_archive_path(entry.path):
            raise UnsafeArchivePathError(entry.path)
        path = posixpath.join(root, entry.path)
        if stat.S_ISDIR(entry.mode):
            try:
                subtree = store[entry.sha]
            except KeyError:
                continue
            if isinstance(subtree, Tree):
                yield from _walk(store, subtree, path)
        else:
            yield path, entry


def _locate(store, reader: ObjectReader | None, sha: bytes) -> tuple[int, int, tuple | None] | None:
    """(size, its delta base's size or 0, where) of a blob without inflating it; None if
    it is not a blob here."""
    found = reader.locate(sha) if reader is not None else None
    if found is None:
        loose = _loose_header(store, sha)
        if loose is not None:
            kind, size = loose
            return (size, 0, None) if kind == b"blob" else None
        try:
            obj = store[sha]  # in a pack storedpacks cannot read: dulwich, whole
        except KeyError:
            return None
        return (obj.raw_length(), 0, None) if isinstance(obj, Blob) else None
    pack, k = found
    start, end = pack.starts[k], pack.starts[k + 1]
    head = os.pread(pack.fd, min(end - start, 64), start)
    type_num, size, pos = parse_header(head)
    if type_num == OFS_DELTA:
        distance, pos = parse_ofs(head, pos)
        base = pack.at_offset(start - distance)
    elif type_num == REF_DELTA:
        base = binascii.hexlify(head[pos : pos + SHA_LEN])
        pos += SHA_LEN
    elif type_num == BLOB:
        return size, 0, (pack, k, "whole", start + pos)
    else:
        return None
    # A delta: its result's size is at the start of the delta data.
    inflater = zlib.decompressobj()
    first = inflater.decompress(os.pread(pack.fd, min(end - start - pos, 4096), start + pos), 32)
    sizes = delta_sizes(first)
    if sizes is None:
        raise PackError("a stored delta is cut short")
    return sizes[1], sizes[0], (pack, k, "delta", (base, start + pos, size, sizes[0]))


def _loose_header(store, sha: bytes) -> tuple[bytes, int] | None:
    """(type, size) of a loose object from its first inflated bytes, None if not loose."""
    try:
        with open(loose_object_path(store, sha), "rb") as f:
            first = zlib.decompressobj().decompress(f.read(4096), 64)
    except (OSError, zlib.error):
        return None
    kind, _, rest = first.partition(b" ")
    size = rest.split(b"\0", 1)[0]
    return (kind, int(size)) if size.isdigit() else None


def stream(
    store, reader: ObjectReader | None, files: list[_File], mtime: int, fmt: str
) -> Iterator[bytes]:
    """The archive: tar (PAX, as tarfile writes it), gzip-compressed if fmt is "gz"."""
    out = io.BytesIO()
    sink = (
        gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=mtime)
        if fmt == "gz"
        else out
    )
    written = 0

    def emit(data: bytes) -> bytes:
        nonlocal written
        sink.write(data)
        written += len(data)
        chunk = out.getvalue()
        out.seek(0)
        out.truncate()
        return chunk

    for f in files:
        info = tarfile.TarInfo(f.path.decode("utf-8", "surrogateescape"))
        info.size = f.size
        info.mode = cleanup_mode(f.mode) & 0o777  # as dulwich: no setuid bits from a tree
        info.mtime = mtime
        yield emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        sent = 0
        for piece in _content(store, reader, f):
            sent += len(piece)
            if sent > f.size:
                raise PackError("a stored object is longer than its header says")
            yield emit(piece)
        if sent != f.size:
            raise PackError("a stored object is shorter than its header says")
        if f.size % tarfile.BLOCKSIZE:
            yield emit(tarfile.NUL * (tarfile.BLOCKSIZE - f.size % tarfile.BLOCKSIZE))
    end = tarfile.NUL * (tarfile.BLOCKSIZE * 2)
    pad = -(written + len(end)) % tarfile.RECORDSIZE
    yield emit(end + tarfile.NUL * pad)
    if sink is not out:
        sink.close()
    yield out.getvalue()


def _content(store, reader: ObjectReader | None, f: _File) -> Iterator[bytes]:
    if f.where is None:
        yield store[f.sha].as_raw_string()
        return
    pack, k, kind, extra = f.where
    if f.size <= STREAM_ABOVE:
        yield reader.read_entry(pack, k)[1]
        return
    if kind == "whole":
        yield from _inflate_pieces(pack, extra, pack.starts[k + 1], f.size)
        return
    base_ref, data_at, delta_len, base_len = extra
    if isinstance(base_ref, int):
        _type, base = reader.read_entry(pack, base_ref)
    else:
        _type, base = reader.read(base_ref)
    if len(base) != base_len:
        raise PackError("a stored delta's base has the wrong size")
    delta = b"".join(_inflate_pieces(pack, data_at, pack.starts[k + 1], delta_len))
    yield from _apply_pieces(base, delta)


def large_delta(
    reader: ObjectReader, pack: StoredPack, k: int
) -> tuple[int, int, Iterator[bytes]] | None:
    """A stored delta whose result is over STREAM_ABOVE: (type, size, the result in
    pieces), its base read whole; None for anything else (read it whole). For
    upload-pack, which must sometimes send a delta's result whole."""
    start, end = pack.starts[k], pack.starts[k + 1]
    head = os.pread(pack.fd, min(end - start, 64), start)
    type_num, size, pos = parse_header(head)
    if type_num == OFS_DELTA:
        distance, pos = parse_ofs(head, pos)
        base_ref: int | bytes = pack.at_offset(start - distance)
    elif type_num == REF_DELTA:
        base_ref = binascii.hexlify(head[pos : pos + SHA_LEN])
        pos += SHA_LEN
    else:
        return None
    first = zlib.decompressobj().decompress(
        os.pread(pack.fd, min(end - start - pos, 4096), start + pos), 32
    )
    sizes = delta_sizes(first)
    if sizes is None or sizes[1] <= STREAM_ABOVE:
        return None
    base_type, base = (
        reader.read_entry(pack, base_ref) if isinstance(base_ref, int) else reader.read(base_ref)
    )
    if len(base) != sizes[0]:
        raise PackError("a stored delta's base has the wrong size")
    delta = b"".join(_inflate_pieces(pack, start + pos, end, size))
    return base_type, sizes[1], _apply_pieces(base, delta)


def _inflate_pieces(pack: StoredPack, at: int, end: int, size: int) -> Iterator[bytes]:
    inflater = zlib.decompressobj()
    pending = b""
    got = 0
    while not inflater.eof:
        if not pending and at < end:
            pending = os.pread(pack.fd, min(64 * 1024, end - at), at)
            at += len(pending)
        out = inflater.decompress(pending, PIECE)
        pending = inflater.unconsumed_tail
        got += len(out)
        if got > size:
            raise PackError("stored data inflates past its size")
        if out:
            yield out
        elif not pending and at >= end and not inflater.eof:
            raise PackError("stored data is cut short")
    if got != size:
        raise PackError("stored data inflates to the wrong size")


def _apply_pieces(base: bytes, delta: bytes) -> Iterator[bytes]:
    """A delta applied to `base`, in pieces of about PIECE bytes (Git's delta format)."""
    view = memoryview(base)
    sizes = delta_sizes(delta[:32])
    if sizes is None or sizes[0] != len(base):
        raise PackError("a stored delta does not fit its base")
    pos = 0
    for _ in range(2):  # skip the two sizes
        while delta[pos] & 0x80:
            pos += 1
        pos += 1
    pieces: list = []
    held = 0
    while pos < len(delta):
        cmd = delta[pos]
        pos += 1
        if cmd & 0x80:
            offset = size = 0
            try:
                for i in range(4):
                    if cmd & (1 << i):
                        offset |= delta[pos] << (8 * i)
                        pos += 1
                for i in range(3):
                    if cmd & (1 << (4 + i)):
                        size |= delta[pos] << (8 * i)
                        pos += 1
            except IndexError:
                raise PackError("a stored delta is cut short") from None
            size = size or 0x10000
            if offset + size > len(base):
                raise PackError("a stored delta copies from past its base")
            pieces.append(view[offset : offset + size])
        elif cmd:
            if pos + cmd > len(delta):
                raise PackError("a stored delta is cut short")
            pieces.append(delta[pos : pos + cmd])
            size = cmd
            pos += cmd
        else:
            raise PackError("a stored delta has opcode 0")
        held += size
        if held >= PIECE:
            yield b"".join(pieces)
            pieces, held = [], 0
    if pieces:
        yield b"".join(pieces)
