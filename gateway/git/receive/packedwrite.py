"""Many refs a push creates, written in one rewrite of `packed-refs` (SPEC §7).

dulwich writes each ref as a loose file with its own lock and fsync: a mirror push of
2,000 refs paid 2,000 fsyncs. Refs the push creates (none of them exists, loose or
packed: the pipeline checked that under its ref lock) go into `packed-refs` instead, in
one write under `packed-refs.lock` (Git's lock protocol, so C git and dulwich writers
wait for it or fail), fsynced once, renamed into place: readers see all of them or none.

The file keeps what its header promised: with `peeled`, a ref without a `^` line does
not peel, so every new ref naming an annotated tag gets its `^` line (peeled through
the objects, which have moved in by then). Refs are written sorted (`sorted`). When the
lock is taken by someone else, `add` returns False and the caller writes loose refs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ..upload.packedrefs import HEADER, PackedRefsFile
from ..upload.refnames import Prefixes

FILE = "packed-refs"
NEW_FILE_TRAITS = b" peeled fully-peeled sorted"


def rewrite(
    git_dir: str,
    add: Mapping[bytes, bytes],
    remove: frozenset[bytes] = frozenset(),
    peel: Callable[[bytes], bytes | None] = lambda sha: None,
) -> bool:
    """Add the refs `add` (name -> hex object) to packed-refs and drop those of
    `remove`; `peel(sha)` is what an annotated tag peels to (None: not a tag). False,
    changing nothing, if packed-refs is locked."""
    path = os.path.join(git_dir, FILE)
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_contents(git_dir, add, remove, peel))
            f.flush()
            os.fsync(f.fileno())
        os.rename(lock, path)
    except BaseException:
        try:
            os.unlink(lock)
        except OSError:
            pass
        raise
    return True


def _contents(
    git_dir: str,
    add: Mapping[bytes, bytes],
    remove: frozenset[bytes],
    peel: Callable[[bytes], bytes | None],
) -> bytes:
    existing = PackedRefsFile(git_dir)
    if existing.data:
        header = existing.data[: existing.body]
        traits = header[len(HEADER) :].split() if header.startswith(HEADER) else []
        if b"sorted" not in traits:
            traits.append(b"sorted")
        head = HEADER + b"".join(b" " + t for t in traits) + b"\n"
    else:
        head = HEADER + NEW_FILE_TRAITS + b"\n"
    found = existing.read(Prefixes())  # every ref
    refs, peeled = dict(found.refs), dict(found.peeled)
    for name in remove:
        refs.pop(name, None)
        peeled.pop(name, None)
    for name, sha in add.items():
        refs[name] = sha
        peeled.pop(name, None)
        if (target := peel(sha)) is not None:
            peeled[name] = target
    lines = [head]
    for name in sorted(refs):
        lines.append(b"%s %s\n" % (refs[name], name))
        if name in peeled:
            lines.append(b"^%s\n" % peeled[name])
    return b"".join(lines)
