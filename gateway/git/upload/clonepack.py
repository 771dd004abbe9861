"""A partial clone's pack, kept until a ref changes.

A full clone of an unchanged repository mostly sends a stored pack as it is
(packwriter.send_whole). A partial clone (`--filter=blob:none`) cannot: its pack is a
choice of entries, and copying a few hundred thousand entries one by one is most of its
time in Python. So the pack a filtered clone sent is kept in `gateway-clone-pack` under
the key of what it answered (refs, wants, tags, filter, delta encoding: clonecache.key),
and the next clone with the same key is sent the file's bytes. One file: another filter
or a ref change replaces it. Its checksum is verified on the way out, as send_whole does.
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
    """Send the kept pack if it answers `cache_key`; False if there is none."""
    head = MAGIC + cache_key + b"\n"
    try:
        fd = os.open(os.path.join(repo_dir, FILE), os.O_RDONLY)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if f.read(len(head)) != head:
            return False
        size = os.fstat(f.fileno()).st_size - len(head)
        first = f.read(min(CHUNK, size))
        if size < 12 + SHA_LEN or first[:4] != b"PACK":
            return False
        count = int.from_bytes(first[8:12], "big")
        progress(f"counting objects: {count}, done.\n".encode("ascii"))
        digest = hashlib.sha1()
        left = size - SHA_LEN
        data = first
        while left > 0:
            if not data:
                data = f.read(min(CHUNK, left))
                if not data:
                    _forget(repo_dir)
                    raise PackError("the kept clone pack is cut short")
            piece, data = data[:left], data[left:]
            digest.update(piece)
            write(piece)
            left -= len(piece)
        trailer = (data + f.read(SHA_LEN))[:SHA_LEN]
        if trailer != digest.digest():
            _forget(repo_dir)
            raise PackError("the kept clone pack's checksum does not match its contents")
        write(trailer)
    return True


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
