"""The refs a request lists: every ref (or those under v2's `ref-prefix`es), as Git lists them.

dulwich builds the same list from `repo.get_refs()`, then `get_peeled` and `sha in store`
per ref and `get_symrefs()`, each of which reads and checks every name again: for 20,000
refs, over a second where C git takes milliseconds. Here it is read once:
- `packed-refs` by packedrefs.py (its `^` lines are the peeled values; with a prefix and a
  sorted file, only the refs under the prefix are parsed);
- loose refs under `refs/` (only the directories a prefix can reach), which override the
  packed ones; a loose ref that is neither an object name nor `ref: NAME` is broken and
  listed neither loose nor packed, as C git does;
- HEAD, which names its target (`symref_target`); a symbolic ref is listed with its
  target's object, at most five symbolic refs deep as Git follows them.
A ref whose name is not a valid ref name, or whose object the repository lacks, is not
listed (objectindex.py answers from the pack indexes). A ref that may be an annotated tag
(loose, or packed in a file without `peeled`) costs one look at its object's type, and a
tag one read to peel it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from dulwich.object_store import DiskObjectStore, peel_sha
from dulwich.objects import ObjectID

from . import refnames
from .objectindex import ObjectIndex
from .packedrefs import PackedRefsFile

HEAD = b"HEAD"
SYMREF = b"ref: "
MAX_SYMREF_DEPTH = 5  # as Git: a chain of symbolic refs longer than this is broken
_OBJECT_NAME = re.compile(rb"[0-9a-fA-F]{40}(?:[0-9a-fA-F]{24})?\Z")
PACKED_ATTEMPTS = 5  # listings, when packed-refs is replaced during one
_UNKNOWN = b""  # a ref whose peeled value is not known until its object is read


class Ref(NamedTuple):
    """One listed ref. (Immutable like the frozen dataclass interfaces.md names, with the
    same fields: a NamedTuple is made three times faster, and a listing makes 20,000.)"""

    name: bytes
    sha: bytes  # hex; for a symbolic ref, its target's
    peeled: bytes | None  # what an annotated tag peels to; None if `sha` is not a tag
    symref_target: bytes | None  # the ref a symbolic ref (HEAD) names


def git_dir_of(repo_path: str | bytes) -> bytes:
    path = os.fsencode(repo_path)
    dot_git = os.path.join(path, b".git")
    return dot_git if os.path.isdir(dot_git) else path


def list_refs(
    repo_path: str | bytes,
    prefixes: Sequence[bytes] = (),
    *,
    store: DiskObjectStore | None = None,
) -> list[Ref]:
    """The repository's refs sorted by name, HEAD among them (when it resolves): only those
    whose object exists and, with `prefixes`, whose name starts with one of them (v2's
    `ref-prefix`). `store`, if the caller has the repository open, answers what the pack
    indexes cannot."""
    return _Lister(git_dir_of(repo_path), refnames.Prefixes(prefixes), store).refs()


def head_target(repo_path: str | bytes) -> bytes | None:
    """The ref HEAD names, whether or not it exists yet (v2's `unborn`); None if HEAD is
    detached or broken."""
    content = read_ref_file(os.path.join(git_dir_of(repo_path), HEAD))
    if content is None or not content.startswith(SYMREF):
        return None
    target = content[len(SYMREF) :]
    return target if _is_target(target) else None


def read_ref_file(path: bytes) -> bytes | None:
    """A ref file's first line, or None if there is no such file."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError:
        return b""  # unreadable: broken
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def iter_loose_refs(git_dir: bytes, prefixes: Sequence[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(name, first line) of every file under the directories of refs/ that `prefixes`
    reach, valid name or not (lsrefscache.py's key: anything there that changes may
    change the listing)."""
    for top in loose_dirs(refnames.Prefixes(prefixes)):
        for name, path in _walk(git_dir, top):
            yield name, read_ref_file(path) or b""


def symref_chain(git_dir: bytes, content: bytes) -> Iterator[bytes]:
    """The content of each loose ref a symbolic ref's `content` leads to, as `_resolve`
    follows them (lsrefscache.py's key: HEAD's target may lie outside the prefixes)."""
    for _ in range(MAX_SYMREF_DEPTH):
        if not content.startswith(SYMREF) or not _is_target(content[len(SYMREF) :]):
            return
        content = read_ref_file(os.path.join(git_dir, content[len(SYMREF) :])) or b"-"
        yield content


def _is_target(name: bytes) -> bool:
    return name.startswith(b"refs/") and refnames.is_valid(name)


class _Lister:
    def __init__(
        self, git_dir: bytes, prefixes: refnames.Prefixes, store: DiskObjectStore | None
    ) -> None:
        self.git_dir = git_dir
        self.prefixes = prefixes
        self.packed_identity = _identity(os.path.join(git_dir, b"packed-refs"))
        self.packed = PackedRefsFile(os.fsdecode(git_dir))
        self.objects = ObjectIndex(os.fsdecode(os.path.join(git_dir, b"objects")), store)

    def refs(self) -> list[Ref]:
        try:
            for _attempt in range(PACKED_ATTEMPTS):
                listed = self._refs()
                now = _identity(os.path.join(self.git_dir, b"packed-refs"))
                if now == self.packed_identity:
                    break
                # packed-refs was replaced while the loose refs were read: housekeeping
                # packing them may have removed a loose ref after the old file was read.
                self.packed_identity = now
                self.packed = PackedRefsFile(os.fsdecode(self.git_dir))
            return listed
        finally:
            self.objects.close()

    def _refs(self) -> list[Ref]:
        packed = self.packed.read(self.prefixes)
        default_peel = None if packed.peel_known else _UNKNOWN
        # name -> (object, peeled or _UNKNOWN or None)
        values: dict[bytes, tuple[bytes, bytes | None]] = {
            name: (sha, packed.peeled.get(name, default_peel)) for name, sha in packed.refs.items()
        }
        symrefs: dict[bytes, bytes] = {}
        for name, content in self._loose():
            values.pop(name, None)
            if content.startswith(SYMREF):
                symrefs[name] = content[len(SYMREF) :]
            elif _OBJECT_NAME.match(content):
                values[name] = (content.lower(), _UNKNOWN)
        head = read_ref_file(os.path.join(self.git_dir, HEAD))
        if head is not None and self.prefixes.wants(HEAD):
            if head.startswith(SYMREF):
                symrefs[HEAD] = head[len(SYMREF) :]
            elif _OBJECT_NAME.match(head):
                values[HEAD] = (head.lower(), _UNKNOWN)
        targets: dict[bytes, bytes] = {}
        for name, target in symrefs.items():
            resolved = self._resolve(target, values)
            if resolved is not None:
                values[name] = resolved
                targets[name] = target
        return self._checked(values, targets)

    def _checked(
        self, values: dict[bytes, tuple[bytes, bytes | None]], targets: dict[bytes, bytes]
    ) -> list[Ref]:
        """The refs whose objects exist, each peeled."""
        exists = self.objects.present({sha for sha, _ in values.values()})
        listed = []
        for name in sorted(values):
            sha, peeled = values[name]
            if sha not in exists:
                continue
            if peeled == _UNKNOWN:
                try:
                    peeled = self._peel(sha)
                except KeyError:
                    continue  # a tag whose object is missing: dulwich skips the ref too
            listed.append(Ref(name, sha, peeled, targets.get(name)))
        return listed

    def _peel(self, sha: bytes) -> bytes | None:
        if not self.objects.is_tag(sha):
            return None
        return peel_sha(self.objects.store, ObjectID(sha))[1].id

    def _resolve(
        self, target: bytes, values: dict[bytes, tuple[bytes, bytes | None]]
    ) -> tuple[bytes, bytes | None] | None:
        """What a symbolic ref to `target` lists: its target's object and peeled value."""
        for _ in range(MAX_SYMREF_DEPTH):
            if not _is_target(target):
                return None
            if target in values:
                return values[target]
            content = read_ref_file(os.path.join(self.git_dir, target))
            if content is None:  # not loose: packed, or unborn
                found = self.packed.get(target)
                if found is None:
                    return None
                sha, peeled = found
                return sha, (peeled if peeled is not None or self.packed.peel_known else _UNKNOWN)
            if not content.startswith(SYMREF):
                return (content.lower(), _UNKNOWN) if _OBJECT_NAME.match(content) else None
            target = content[len(SYMREF) :]
        return None

    def _loose(self) -> Iterator[tuple[bytes, bytes]]:
        """(name, first line) of each loose ref the prefixes can want."""
        for top in self._loose_dirs():
            for name, path in _walk(self.git_dir, top):
                if refnames.is_valid(name) and self.prefixes.wants(name):
                    content = read_ref_file(path)
                    if content is not None:
                        yield name, content

    def _loose_dirs(self) -> list[bytes]:
        return loose_dirs(self.prefixes)


def loose_dirs(prefixes: refnames.Prefixes) -> list[bytes]:
    """The directories under refs/ that hold every ref the prefixes ask for."""
    if prefixes.everything:
        return [b"refs"]
    dirs = set()
    for prefix in prefixes.minimal:
        if prefix.startswith(b"refs/"):
            dirs.add(prefix[: prefix.rindex(b"/")])
        elif b"refs/".startswith(prefix):
            dirs.add(b"refs")
    kept: list[bytes] = []
    for top in sorted(dirs):  # a directory comes right after its ancestors
        if not kept or not (top + b"/").startswith(kept[-1] + b"/"):
            kept.append(top)
    return kept


def _identity(path: bytes) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _walk(git_dir: bytes, top: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(name, path) of every file under git_dir/top, not following directory links."""
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(os.path.join(git_dir, directory)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            name = directory + b"/" + entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(name)
            elif entry.is_file():
                yield name, entry.path
