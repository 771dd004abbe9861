"""A partial clone's pack, kept until a ref changes.

A full clone of an unchanged repository mostly sends a stored pack as it is
(packwriter.send_whole). A partial clone (`--filter=blob:none`) cannot: its pack is a
choice of entries, and copying a few hundred thousand entries one by one is most of its
time in Python. So the pack a filtered clone sent is kept in `gateway-clone-pack` under
the key of what it answered (refs, wants, tags, filter, delta encoding: clonecache.key),
and the next clone with the same key is sent the file's bytes. One file: another filter
or a ref change replaces it. Its checksum is checked before it is sent; a file that
fails is removed and the pack made again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable

from .storedpacks import PackError

FILE = "gateway-clone-pack"
MAGIC = b"GWPACK1\n"
SHA_LEN = 20
CHUNK = 1 << 20


def send_kept(
    repo_dir: str,
    cache_key: bytes,
    write: Callable[[bytes], object],
    progress: Callable[[bytes], object],
) -> bool:
    """Send the kept pack if it answers `cache_key` and its checksum holds (checked
    before a byte is sent, so a damaged file is made again, not sent); else False."""
    head = MAGIC + cache_key + b"\n"
    try:
        fd = os.open(os.path.join(repo_dir, FILE), os.O_RDONLY)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if f.read(len(head)) != head:
            return False
        size = os.fstat(fd).st_size - len(head)
        start = len(head)
        first = os.pread(fd, 12, start)
        if size < 12 + SHA_LEN or first[:4] != b"PACK":
            return False
        digest = hashlib.sha1()
        for data in _pieces(fd, start, size - SHA_LEN):
            digest.update(data)
        if os.pread(fd, SHA_LEN, start + size - SHA_LEN) != digest.digest():
            _forget(repo_dir)
            return False
        progress(f"counting objects: {int.from_bytes(first[8:12], 'big')}, done.\n".encode())
        for data in _pieces(fd, start, size):
            write(data)
    return True


def _pieces(fd: int, start: int, length: int):
    at, end = start, start + length
    while at < end:
        data = os.pread(fd, min(CHUNK, end - at), at)
        if not data:
            raise PackError("the kept clone pack is shorter than it was")
        yield data
        at += len(data)


def _forget(repo_dir: str) -> None:
    """A damaged kept pack is removed: the next clone makes it again."""
    try:
        os.unlink(os.path.join(repo_dir, FILE))
    except OSError:
        pass


class KeptPackWriter:
    """Sends pack bytes on and keeps a copy; `keep()` once the pack is whole puts it in
    place (renamed over the old one: a reader never sees half)."""

    def __init__(self, repo_dir: str, cache_key: bytes, write: Callable[[bytes], object]) -> None:
        self.repo_dir = repo_dir
        self.send = write
        self.file = None
        self.tmp = ""
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=FILE + ".", dir=repo_dir)
        except OSError:
            return  # a read-only repository: the next clone writes its pack again
        self.file = os.fdopen(fd, "wb")
        self._copy(MAGIC + cache_key + b"\n")

    def write(self, data: bytes) -> None:
        self.send(data)
        self._copy(data)

    def _copy(self, data: bytes) -> None:
        if self.file is None:
            return
        try:
            self.file.write(data)
        except OSError:
            self.discard()

    def keep(self) -> None:
        if self.file is None:
            return
        try:
            self.file.close()
            os.replace(self.tmp, os.path.join(self.repo_dir, FILE))
        except OSError:
            self.discard()
        self.file = None

    def discard(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
