"""Which objects a fetch or clone sends: the walk C git's `rev-list --objects` does.

Commits newest first from the wants, stopping where every commit still queued is one the
client has (reachable from its haves); then the trees and blobs of the commits to send,
minus those of the boundary commits the client has. It may send a little more than needed
(commit dates that go backwards), never less. Objects are read from the stored packs
(storedpacks.ObjectReader); packwriter.py then sends them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from dulwich.objects import parse_tree

from .commitobjects import TREE_BIT, CommitObjects, kind
from .filters import ObjectFilter
from .storedpacks import SHA_LEN, ObjectReader, PackError

COMMIT, TREE, BLOB, TAG = 1, 2, 3, 4
GITLINK_MODE = 0o160000
DIR_MODE = 0o040000


def _commit_links(raw: bytes) -> tuple[bytes, list[bytes], int]:
    """(tree, parents, committer time) from a commit's header lines."""
    tree, parents, when = b"", [], 0
    for line in raw.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(b"tree "):
            tree = line[5:]
        elif line.startswith(b"parent "):
            parents.append(line[7:])
        elif line.startswith(b"committer "):
            try:
                when = int(line.rsplit(b" ", 2)[1])
            except (IndexError, ValueError):
                when = 0
            break
    return tree, parents, when


def _tag_target(raw: bytes) -> bytes:
    first = raw.split(b"\n", 1)[0]
    if not first.startswith(b"object "):
        raise PackError("a tag without an object line")
    return first[7:]


class Walk:
    def __init__(self, reader: ObjectReader, shallow: Iterable[bytes] = ()) -> None:
        self.reader = reader
        # A shallow client's boundary commits: walked as if they had no parents, as the
        # client has them (so nothing below them is taken as the client's).
        self.shallow = frozenset(shallow)
        self.commits: dict[bytes, tuple[bytes, list[bytes], int]] = {}
        self.blob_sizes: dict[bytes, int] = {}

    def commit(self, sha: bytes) -> tuple[bytes, list[bytes], int]:
        """(tree, parents, committer time); PackError if the object is not a commit."""
        links = self.commits.get(sha)
        if links is None:
            type_num, raw = self.reader.read(sha)
            if type_num != COMMIT:
                raise PackError(f"{sha.decode()} is not a commit")
            tree, parents, when = _commit_links(raw)
            links = self.commits[sha] = (tree, [] if sha in self.shallow else parents, when)
        return links

    def peel(self, sha: bytes, tags: list[bytes] | None = None) -> tuple[int, bytes]:
        """Follow tags to what they point at; the tags passed on the way go in `tags`."""
        while True:
            type_num = self.reader.type_of(sha)
            if type_num != TAG:
                return type_num, sha
            type_num, raw = self.reader.read(sha)
            if tags is not None:
                tags.append(sha)
            sha = _tag_target(raw)

    def commits_to_send(
        self, wants: Iterable[bytes], haves: Iterable[bytes]
    ) -> tuple[list[bytes], set[bytes]]:
        """The commits reachable from `wants` but not from `haves` (newest first), and
        the commits the client has that those commits' parents include (the boundary)."""
        uninteresting: set[bytes] = set()
        queue = NewestFirst(self)
        for sha in haves:
            uninteresting.add(sha)
            queue.push(sha)
        for sha in wants:
            queue.push(sha)
        order: list[bytes] = []
        while queue:
            if uninteresting and queue.only(uninteresting):
                break  # what is left is the client's
            sha = queue.pop()
            _, parents, _ = self.commit(sha)
            if sha in uninteresting:
                self._mark_uninteresting(parents, uninteresting)
            else:
                order.append(sha)
            for parent in parents:
                queue.push(parent)
        send = [sha for sha in order if sha not in uninteresting]
        boundary = {p for sha in send for p in self.commits[sha][1] if p in uninteresting}
        return send, boundary

    def _mark_uninteresting(self, parents: list[bytes], uninteresting: set[bytes]) -> None:
        """Mark parents, and whatever we already know of their ancestry, as the client's."""
        stack = list(parents)
        while stack:
            sha = stack.pop()
            if sha in uninteresting:
                continue
            uninteresting.add(sha)
            known = self.commits.get(sha)
            if known is not None:
                stack.extend(known[1])

    def tree_objects(self, root: bytes, seen: set[bytes], out: list[bytes]) -> None:
        """Append to `out` the trees and blobs under `root` not in `seen`, adding them to it."""
        if root in seen:
            return
        seen.add(root)
        out.append(root)
        stack = [root]
        while stack:
            # Most entries were seen under an earlier commit: filter them in one pass.
            for _name, mode, sha in [
                entry for entry in self.entries(stack.pop()) if entry[2] not in seen
            ]:
                if sha in seen or mode == GITLINK_MODE:  # a name twice in one tree; a submodule
                    continue
                seen.add(sha)
                out.append(sha)
                if mode & 0o170000 == DIR_MODE:
                    stack.append(sha)

    def introduced(self, sha: bytes) -> tuple[list[bytes], list[int]]:
        """The trees and blobs of commit `sha` not at the same path in its first parent
        (all of its tree for a root commit), and their kinds (commitobjects.kind: tree or
        blob, and depth). Breadth first, so that an object at two paths of this commit is
        kept at the shallower: see commitobjects.py."""
        tree, parents, _ = self.commit(sha)
        old_root = self.commit(parents[0])[0] if parents else None
        if tree == old_root:
            return [], []
        out, kinds, seen = [tree], [kind(0, True)], {tree}
        level = [(tree, old_root)]
        depth = 0
        while level:
            depth += 1
            below = []
            for new, old in level:
                before = {name: (mode, sha) for name, mode, sha in self.entries(old)} if old else {}
                for name, mode, sha in self.entries(new):
                    if sha in seen or mode == GITLINK_MODE:
                        continue
                    was = before.get(name)
                    if was is not None and was[1] == sha:
                        continue  # the parent has it at the same path
                    seen.add(sha)
                    out.append(sha)
                    is_tree = mode & 0o170000 == DIR_MODE
                    kinds.append(kind(depth, is_tree))
                    if is_tree:
                        old_tree = (
                            was[1] if was is not None and was[0] & 0o170000 == DIR_MODE else None
                        )
                        below.append((sha, old_tree))
            level = below
        return out, kinds

    def filtered_tree_objects(
        self,
        root: bytes,
        depth: int,
        seen: set[bytes],
        out: list[bytes],
        object_filter: ObjectFilter,
        tree_depths: dict[bytes, int],
    ) -> None:
        """`tree_objects` for a filter: what `object_filter` keeps under `root` (at
        `depth`). A tree met again less deep is walked again (what it holds may now be
        shallow enough), as Git does; `tree_depths` holds the least depth each was walked at."""
        stack = [(root, depth)]
        while stack:
            tree, at = stack.pop()
            if tree in seen and tree not in tree_depths:
                continue  # the client has it
            if not object_filter.keeps_depth(at) or tree_depths.get(tree, at + 1) <= at:
                continue
            tree_depths[tree] = at
            if tree not in seen:
                seen.add(tree)
                out.append(tree)
            for _name, mode, sha in self.entries(tree):
                if mode == GITLINK_MODE:
                    continue
                if mode & 0o170000 == DIR_MODE:
                    stack.append((sha, at + 1))
                elif sha not in seen and self.keeps_blob(sha, at + 1, object_filter):
                    seen.add(sha)
                    out.append(sha)

    def keeps_blob(self, sha: bytes, depth: int, object_filter: ObjectFilter) -> bool:
        """Whether the filter keeps blob `sha` at `depth` (its size from the pack headers)."""
        if not object_filter.keeps_depth(depth):
            return False
        if object_filter.blob_limit is None:
            return True
        if object_filter.blob_limit == 0:
            return False
        size = self.blob_sizes.get(sha)
        if size is None:
            size = self.blob_sizes[sha] = self.reader.size(sha)
        return object_filter.keeps_size(size)

    def entries(self, tree: bytes) -> list[tuple[bytes, int, bytes]]:
        """A tree's (name, mode, hex name) entries; PackError if it is not a tree."""
        type_num, raw = self.reader.read(tree)
        if type_num != TREE:
            raise PackError("a tree entry is not a tree")
        return parse_tree(raw, SHA_LEN)


class NewestFirst:
    """Commits queued at most once each and taken newest first (committer time; ties in
    the order queued), as rev-list walks them."""

    def __init__(self, walk: Walk) -> None:
        self.walk = walk
        self._heap: list[tuple[int, int, bytes]] = []
        self._queued: set[bytes] = set()

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, sha: bytes) -> None:
        if sha not in self._queued:
            self._queued.add(sha)
            heapq.heappush(self._heap, (-self.walk.commit(sha)[2], len(self._queued), sha))

    def pop(self) -> bytes:
        return heapq.heappop(self._heap)[2]

    def only(self, shas: set[bytes]) -> bool:
        """Whether every commit still queued is in `shas`."""
        return all(sha in shas for _, _, sha in self._heap)


def objects_to_send(
    reader: ObjectReader,
    wants: Iterable[bytes],
    haves: Iterable[bytes],
    tagged: dict[bytes, bytes],
    commit_objects: CommitObjects | None = None,
    shallow: Iterable[bytes] = (),
    object_filter: ObjectFilter | None = None,
) -> tuple[list[bytes], set[bytes]]:
    """Hex names of the objects a client with `haves` needs for `wants`, in pack order
    (commits newest first, then tags, then trees and blobs), and the objects we know the
    client has. `tagged` maps a peeled object to the annotated tag to send with it
    (include-tag). With `commit_objects` (for a clone: it may send objects a client with
    haves already has), each commit's trees and blobs come from its kept list, made
    from a tree diff the first time it is needed. `shallow`: the client's shallow commits.
    `object_filter` (a partial clone) leaves out trees and blobs, never an object named
    in `wants` itself."""
    walk = Walk(reader, shallow)
    want_commits: list[bytes] = []
    other: list[tuple[int, bytes]] = []
    tags: list[bytes] = []
    for sha in wants:
        type_num, peeled = walk.peel(sha, tags)
        if type_num == COMMIT:
            want_commits.append(peeled)
        else:
            other.append((type_num, peeled))
    have_commits: list[bytes] = []
    client_has: set[bytes] = set()
    for sha in haves:
        try:
            type_num, peeled = walk.peel(sha)
        except KeyError:
            continue
        client_has.add(sha)
        if type_num == COMMIT:
            have_commits.append(peeled)
        else:
            client_has.add(peeled)

    commits, boundary = walk.commits_to_send(want_commits, have_commits)
    if walk.shallow:
        # A shallow client's boundary commits have no parents to diff against: as C git
        # (pack-objects --shallow), every tree of a commit it has counts as its own.
        boundary.update(have_commits)
    # Everything under the boundary's trees the client has: not sent.
    for sha in boundary:
        walk.tree_objects(walk.commits[sha][0], client_has, [])

    sent = set(commits)
    for peeled, tag in tagged.items():
        if peeled in sent:
            walk.peel(tag, tags)
    tags = [t for t in dict.fromkeys(tags) if t not in client_has]

    seen = set(client_has)
    seen.update(tags)
    trees_and_blobs: list[bytes] = []
    if object_filter is not None:
        _filtered_trees_and_blobs(
            walk, commits, commit_objects, object_filter, seen, trees_and_blobs
        )
    else:
        for sha in commits:
            if commit_objects is None or sha in walk.shallow:
                # (A shallow boundary commit has no parent here: its whole tree is sent,
                # and is not its kept list.)
                walk.tree_objects(walk.commits[sha][0], seen, trees_and_blobs)
                continue
            for obj in _kept_list(walk, commit_objects, sha)[0]:
                if obj not in seen:
                    seen.add(obj)
                    trees_and_blobs.append(obj)
            walk.tree_objects(walk.commits[sha][0], seen, trees_and_blobs)
    # Objects named in the wants: sent whatever the filter; a tree's content filtered
    # as Git does, counting its entries at depth 0.
    tree_depths: dict[bytes, int] = {}
    for type_num, sha in other:
        if type_num == TREE and object_filter is None:
            walk.tree_objects(sha, seen, trees_and_blobs)
            continue
        if sha not in seen:
            seen.add(sha)
            trees_and_blobs.append(sha)
        if type_num == TREE and object_filter is not None:
            for _name, mode, entry in walk.entries(sha):
                if mode == GITLINK_MODE:
                    continue
                if mode & 0o170000 == DIR_MODE:
                    walk.filtered_tree_objects(
                        entry, 0, seen, trees_and_blobs, object_filter, tree_depths
                    )
                elif entry not in seen and walk.keeps_blob(entry, 0, object_filter):
                    seen.add(entry)
                    trees_and_blobs.append(entry)
    return commits + tags + trees_and_blobs, client_has


def _kept_list(
    walk: Walk, commit_objects: CommitObjects, sha: bytes
) -> tuple[list[bytes], list[int]]:
    brought = commit_objects.get(sha)
    kinds = commit_objects.kinds(sha) if brought is not None else None
    if brought is None or kinds is None:
        brought, kinds = walk.introduced(sha)
        commit_objects.put(sha, brought, kinds)
    return brought, kinds


def _filtered_trees_and_blobs(
    walk: Walk,
    commits: list[bytes],
    commit_objects: CommitObjects | None,
    object_filter: ObjectFilter,
    seen: set[bytes],
    out: list[bytes],
) -> None:
    """The commits' trees and blobs that `object_filter` keeps, added to `out`."""
    if object_filter.tree_depth == 0:
        return  # commits and tags only
    if commit_objects is None or walk.shallow:
        # (Shallow boundary commits have no parent to take a kept list against.)
        tree_depths: dict[bytes, int] = {}
        for sha in commits:
            walk.filtered_tree_objects(
                walk.commits[sha][0], 0, seen, out, object_filter, tree_depths
            )
        return
    if object_filter.tree_depth is None:  # blob:limit (blob:none): all the trees
        left_out: set[bytes] = set()  # not in `seen`: a want may still name one
        for sha in commits:
            brought, kinds = _kept_list(walk, commit_objects, sha)
            for obj, obj_kind in zip(brought, kinds, strict=True):
                if obj in seen or obj in left_out:
                    continue
                if obj_kind & TREE_BIT or walk.keeps_blob(obj, 0, object_filter):
                    seen.add(obj)
                    out.append(obj)
                else:
                    left_out.add(obj)
        return
    # The kept lists hold every (object, depth) a commit brings in; an object's least
    # depth over them is its least depth in the history (commitobjects.py).
    least: dict[bytes, int] = {}
    for sha in commits:
        brought, kinds = _kept_list(walk, commit_objects, sha)
        for obj, obj_kind in zip(brought, kinds, strict=True):
            if obj in seen:
                continue
            known = least.get(obj)
            if known is None or obj_kind < known:
                least[obj] = obj_kind
    for obj, obj_kind in least.items():
        depth = obj_kind >> 1
        if obj_kind & TREE_BIT:
            keep = object_filter.keeps_depth(depth)
        else:
            keep = walk.keeps_blob(obj, depth, object_filter)
        if keep:
            seen.add(obj)
            out.append(obj)
