"""Loose refs into packed-refs, as `git pack-refs --all`, without a ref ever missing.

dulwich's own pack_refs removes each loose ref before the new packed-refs is renamed in:
a listing in between misses the ref, and a crash there loses it. Here, under the lock
pushes take to move refs, the new packed-refs (every packed and loose ref, tags peeled)
is written and renamed in first; only then are the loose files removed, each only if it
still says what was packed. A crash at any point leaves each ref loose, packed, or both
with the same value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from dulwich.file import GitFile
from dulwich.object_store import peel_sha
from dulwich.objects import ObjectID
from dulwich.refs import Ref, write_packed_refs
from dulwich.repo import Repo

from ..dulwich_seam import forget_packed_refs
from ..upload.objectindex import ObjectIndex
from . import faults
from .reachability import refs_held

_OBJECT_NAME = re.compile(rb"[0-9a-f]{40}")
KEEP_DIRS = {b"refs", b"refs/heads", b"refs/tags"}


def pack_refs(repo: Repo) -> int:
    """Pack every loose ref; the number of loose refs packed."""
    git_dir = os.fsencode(repo.controldir())
    with refs_held(repo.controldir()):
        loose = dict(_loose_refs(git_dir))
        if not loose:
            return 0
        packed = {bytes(n): bytes(sha) for n, sha in repo.refs.get_packed_refs().items()}
        packed.update(loose)
        index = ObjectIndex(os.path.join(repo.controldir(), "objects"), repo.object_store)
        try:
            present = index.present(set(packed.values()))
            packed = {name: sha for name, sha in packed.items() if sha in present}
            peeled: dict[Ref, ObjectID] = {}
            for name, sha in packed.items():
                if index.is_tag(sha):
                    peeled[Ref(name)] = peel_sha(repo.object_store, ObjectID(sha))[1].id
        finally:
            index.close()
        with GitFile(os.path.join(git_dir, b"packed-refs"), "wb") as f:
            write_packed_refs(
                f, {Ref(name): ObjectID(sha) for name, sha in sorted(packed.items())}, peeled
            )
        faults.reached("refs-packed")
        removed = 0
        for name, sha in loose.items():
            if packed.get(name) != sha:
                continue  # its object is missing: left loose, as it was
            path = os.path.join(git_dir, name)
            if _read(path) == sha:
                os.unlink(path)
                removed += 1
                _remove_empty_parents(git_dir, name)
        forget_packed_refs(repo.refs)
        return removed


def _loose_refs(git_dir: bytes) -> Iterator[tuple[bytes, bytes]]:
    top = os.path.join(git_dir, b"refs")
    for directory, _dirs, files in os.walk(top):
        for file in files:
            if file.endswith(b".lock"):
                continue
            path = os.path.join(directory, file)
            content = _read(path)
            if content is not None and _OBJECT_NAME.fullmatch(content):
                yield os.path.relpath(path, git_dir).replace(os.sep.encode(), b"/"), content


def _read(path: bytes) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(100).strip().lower()
    except OSError:
        return None


def _remove_empty_parents(git_dir: bytes, name: bytes) -> None:
    parent = name.rsplit(b"/", 1)[0]
    while parent not in KEEP_DIRS and b"/" in parent:
        try:
            os.rmdir(os.path.join(git_dir, parent))
        except OSError:
            return
        parent = parent.rsplit(b"/", 1)[0]
