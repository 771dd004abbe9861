"""What every upload-pack request ends with, whichever protocol asked: the pack.

Protocol v0/v1 (upload_pack.py, dulwich's negotiation) and v2 (its `fetch` command) both
come here once they know what the client wants and has: `send_pack` chooses the objects
(walk.py; a clone's list from clonecache.py or the commits' kept lists) and writes them
from the stored packs' bytes (packwriter.py); a partial clone of unchanged refs is sent
the pack the last one was (clonepack.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import bitmaps, clonecache, clonepack, packwriter, storedpacks, walk
from .clonecache import SortedNames
from .commitobjects import CommitObjects
from .filters import ObjectFilter
from .shallow import Deepen, ShallowPlan
from .storedpacks import ObjectReader


@dataclass
class Fetch:
    """What the client asked for, once negotiation is over."""

    wants: list[bytes]  # hex names
    haves: list[bytes]  # the client's objects we have (common commits)
    tagged: dict[bytes, bytes] = field(default_factory=dict)  # peeled -> tag (include-tag)
    ofs_delta: bool = False
    thin_pack: bool = False
    # The client's shallow commits: walked as if parentless, as the client has them.
    client_shallow: frozenset[bytes] = frozenset()
    # A partial clone's filter (filters.parse of the client's `filter` line).
    object_filter: ObjectFilter | None = None
    deepen: Deepen | None = None  # the request's deepen lines (None: not deepening)
    # shallow.plan()'s answer, which the protocol has sent: it bounds the walk.
    shallow_plan: ShallowPlan | None = None


def send_pack(
    repo_path: str,
    reader: ObjectReader,
    refs: dict[bytes, bytes],
    fetch: Fetch,
    write: Callable[[bytes], object],
    progress: Callable[[bytes], object],
) -> None:
    """Choose the objects `fetch` needs and write their pack with `write` (the pack
    bytes only: side-band framing is the caller's)."""
    tips = set(refs.values())
    # Wants that are not ref tips (a partial clone's lazy fetch of blobs by id) are no
    # clone: walked, and not put in the clone cache.
    # A shallow request is no clone either: its depth bounds what is sent.
    is_clone = (
        not (fetch.haves or fetch.client_shallow)
        and fetch.shallow_plan is None
        and tips.issuperset(fetch.wants)
    )
    kept = None
    if is_clone and fetch.object_filter is not None:
        pack_key = clonecache.key(refs, fetch.wants, fetch.tagged, fetch.object_filter)
        pack_key += b" ofs-delta" if fetch.ofs_delta else b""
        if clonepack.send_kept(repo_path, pack_key, write, progress):
            return
        kept = clonepack.KeptPackWriter(repo_path, pack_key, write)
        write = kept.write
    names: SortedNames | None = None  # a clone's list, as the clone cache keeps it
    shas: list[bytes] | None = None
    client_has: set[bytes] = set()
    try:
        if fetch.shallow_plan is not None:
            plan = fetch.shallow_plan
            # A shallow clone or a deepening may send much of the history: the commits'
            # kept lists then save reading their trees (not worth loading for a few).
            many = plan.unshallow or not fetch.haves
            commit_objects = CommitObjects(repo_path) if many else None
            shas, client_has = walk.objects_to_send(
                reader,
                [*fetch.wants, *plan.extra_wants],
                [*fetch.haves, *plan.edges],
                fetch.tagged,
                commit_objects,
                shallow=plan.boundary,
                object_filter=fetch.object_filter,
            )
            if commit_objects is not None:
                commit_objects.save()
        elif is_clone:
            names, shas = _clone_objects(repo_path, reader, refs, fetch)
        else:
            shas, client_has = walk.objects_to_send(
                reader,
                fetch.wants,
                fetch.haves,
                fetch.tagged,
                shallow=fetch.client_shallow,
                object_filter=fetch.object_filter,
            )
    except KeyError as exc:  # a ref reaches an object the repository lacks
        raise storedpacks.PackError(f"object {exc} is missing") from None
    count = len(shas) if shas is not None else len(names or ())
    progress(f"counting objects: {count}, done.\n".encode("ascii"))
    try:
        whole = None
        if fetch.ofs_delta and not fetch.haves:
            whole = packwriter.whole_pack(reader, names, shas)
        if whole is not None:
            packwriter.send_whole(write, whole)
        else:
            if shas is None:
                shas = names.hex_names() if names is not None else []
            packwriter.write_pack(
                write, reader, shas, fetch.ofs_delta, client_has if fetch.thin_pack else set()
            )
    except BaseException:
        if kept is not None:
            kept.discard()
        raise
    if kept is not None:
        kept.keep()


def _everything_reachable(fetch: Fetch) -> bool:
    """Whether the clone sends all that its wants reach (what a bitmap says): not if a
    filter or a depth leaves some out."""
    return fetch.object_filter is None and fetch.shallow_plan is None


def _clone_objects(
    repo_path: str, reader: ObjectReader, refs: dict[bytes, bytes], fetch: Fetch
) -> tuple[SortedNames, list[bytes] | None]:
    """A clone's objects: the last clone's list if the refs are the same, else C git's
    bitmaps if they cover the wants (bitmaps.py), else the commits' kept lists
    (commitobjects.py). As the clone cache keeps them, and as hex names when they were
    made so (a list read back, or a whole pack's, is left as it is stored)."""
    filtered = fetch.object_filter is not None
    cache_key = clonecache.key(refs, fetch.wants, fetch.tagged, fetch.object_filter)
    names = clonecache.load(repo_path, cache_key, filtered)
    if names is not None:
        return names, None
    if _everything_reachable(fetch):
        commit_objects = CommitObjects(repo_path)
        found = bitmaps.clone_objects(reader, fetch.wants, commit_objects)
        if found is not None:
            commit_objects.save()
            if isinstance(found, SortedNames):
                names, shas = found, None
            else:
                names, shas = SortedNames.of(found), found
            clonecache.save(repo_path, cache_key, names, filtered)
            return names, shas
    commit_objects = CommitObjects(repo_path)
    shas, _ = walk.objects_to_send(
        reader,
        fetch.wants,
        [],
        fetch.tagged,
        commit_objects,
        object_filter=fetch.object_filter,
    )
    commit_objects.save()
    names = SortedNames.of(shas)
    clonecache.save(repo_path, cache_key, names, filtered)
    return names, shas
