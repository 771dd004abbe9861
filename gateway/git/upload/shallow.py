"""Shallow requests: the boundary a shallow clone or fetch gets, as C git computes it.

A client asks for a shallow history with `deepen N` (`--depth`, and `--deepen` as
`deepen-relative`), `deepen-since TIME` (`--shallow-since`), `deepen-not REF`
(`--shallow-exclude`) or a huge depth (`--unshallow`), and tells what it already lacks
with `shallow X` lines (the commits its own history stops at). `plan` answers with C
upload-pack's `shallow X` / `unshallow X` lines and with what the pack's walk needs:
the commits to walk as parentless (the new boundary and the client's), the parents of
the commits the client is no longer shallow at (now wanted) and those commits (the
client has them). fetch.send_pack then builds the pack from the stored packs.

Where C git would follow a client's shallow commit that no ref reaches (`--unshallow`,
`--deepen` after the branch was deleted), the gateway does not: nothing a ref does not
reach is ever sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .storedpacks import ObjectReader, PackError
from .walk import COMMIT, NewestFirst, Walk

INFINITE_DEPTH = 0x7FFFFFFF  # what `--unshallow` sends (C git's INFINITE_DEPTH)
# Where `deepen-not NAME` looks for NAME, in C git's order (refs.c: ref_rev_parse_rules).
REF_RULES = (b"%s", b"refs/%s", b"refs/tags/%s", b"refs/heads/%s", b"refs/remotes/%s")
REMOTE_HEAD_RULE = b"refs/remotes/%s/HEAD"


class ShallowError(ValueError):
    """A shallow request that cannot be served; the message is the one line the user sees."""


@dataclass(frozen=True)
class Deepen:
    """The deepening part of a request, as sent (`not_refs`: the names of `deepen-not`)."""

    depth: int = 0
    since: int | None = None
    not_refs: tuple[bytes, ...] = ()
    relative: bool = False


@dataclass
class ShallowPlan:
    shallow: list[bytes]  # the `shallow X` lines to send: the client's new boundary
    unshallow: list[bytes]  # the `unshallow X` lines: no longer a boundary
    # For the pack (fetch.send_pack): commits walked as parentless, C git's grafts;
    boundary: frozenset[bytes] = frozenset()
    extra_wants: list[bytes] = field(default_factory=list)  # parents of the unshallowed
    edges: list[bytes] = field(default_factory=list)  # the unshallowed: the client has them
    deepened: bool = False  # a deepen request was answered (v0 sends lines and a flush)


def parse_depth(value: bytes) -> int:
    """`deepen N`'s N: a positive number no larger than INFINITE_DEPTH."""
    text = value.decode("ascii", "replace")
    if not value.isdigit() or not 0 < int(value) <= INFINITE_DEPTH:
        raise ShallowError(f"invalid deepen: {_shown(text)} (a depth is a positive number)")
    return int(value)


def parse_since(value: bytes) -> int:
    """`deepen-since T`'s T: seconds since the epoch."""
    if not value.isdigit() or len(value) > 18:
        text = value.decode("ascii", "replace")
        raise ShallowError(f"invalid deepen-since: {_shown(text)} (seconds since 1970)")
    return int(value)


def _shown(text: str) -> str:
    """User input as it may appear in a message: printable, short."""
    return "".join(c if c.isprintable() else "?" for c in text[:60])


def plan(
    reader: ObjectReader,
    refs: Mapping[bytes, bytes],
    want_commits: Sequence[bytes],
    client_shallow: Iterable[bytes],
    deepen: Deepen | None,
) -> ShallowPlan:
    """The shallow and unshallow lines for a request, and what its pack's walk needs.
    `refs`: the refs the client may read (name -> sha); raises ShallowError."""
    try:
        return _plan(Walk(reader), refs, want_commits, client_shallow, deepen)
    except KeyError as exc:  # a ref reaches an object the repository lacks
        raise PackError(f"object {exc} is missing") from None


def _plan(
    walk: Walk,
    refs: Mapping[bytes, bytes],
    want_commits: Sequence[bytes],
    client_shallow: Iterable[bytes],
    deepen: Deepen | None,
) -> ShallowPlan:
    theirs = _known_commits(walk, client_shallow)
    if deepen is None:
        return ShallowPlan([], [], frozenset(theirs))
    wants = _peeled_commits(walk, want_commits)
    if deepen.depth < 0:
        raise ShallowError("invalid deepen: a depth is a positive number")
    if deepen.depth and (deepen.since is not None or deepen.not_refs):
        raise ShallowError("deepen and deepen-since (or deepen-not) cannot be used together")
    if deepen.depth == INFINITE_DEPTH:
        boundary: set[bytes] = set()
        not_shallow = _reachable_from_refs(walk, theirs, refs)
    elif deepen.depth and deepen.relative:
        heads = [c for c in theirs if c in _reachable_from_refs(walk, theirs, refs)]
        boundary, not_shallow = _levels(walk, heads, deepen.depth + 1)
    elif deepen.depth:
        boundary, not_shallow = _levels(walk, wants, deepen.depth)
    elif deepen.since is not None or deepen.not_refs:
        excluded = [_resolve(name, refs) for name in deepen.not_refs]
        boundary, not_shallow = _by_rev_list(walk, wants, excluded, deepen.since)
    else:
        raise ShallowError("invalid deepen: a depth is a positive number")
    their_set = set(theirs)
    shallow = sorted(c for c in boundary if c not in their_set and c not in not_shallow)
    unshallow = [c for c in theirs if c in not_shallow]
    extra_wants = [p for c in unshallow for p in walk.commit(c)[1]]
    return ShallowPlan(
        shallow=shallow,
        unshallow=unshallow,
        boundary=frozenset(shallow) | their_set,
        extra_wants=list(dict.fromkeys(extra_wants)),
        edges=unshallow,
        deepened=True,
    )


def _known_commits(walk: Walk, shas: Iterable[bytes]) -> list[bytes]:
    """The client's shallow commits we have, in order. One we lack is left out, as C git
    does (its branch may have been rewritten since); one that is not a commit is an error."""
    known: dict[bytes, None] = {}
    for sha in shas:
        try:
            type_num, _ = walk.reader.read(sha)
        except KeyError:
            continue
        if type_num != COMMIT:
            raise ShallowError(f"invalid shallow object {sha.decode('ascii', 'replace')}")
        known[sha] = None
    return list(known)


def _peeled_commits(walk: Walk, shas: Iterable[bytes]) -> list[bytes]:
    commits: dict[bytes, None] = {}
    for sha in shas:
        type_num, peeled = walk.peel(sha)
        if type_num == COMMIT:
            commits[peeled] = None
    return list(commits)


def _levels(walk: Walk, heads: Sequence[bytes], depth: int) -> tuple[set[bytes], set[bytes]]:
    """C git's get_shallow_commits: a head is at depth 1, a parent one deeper than its
    nearest child. The commits at exactly `depth` are the boundary; those above it are
    not shallow."""
    distance: dict[bytes, int] = {}
    level = list(dict.fromkeys(heads))
    for sha in level:
        distance[sha] = 1
    at = 1
    while level and at < depth:
        below: list[bytes] = []
        for sha in level:
            for parent in walk.commit(sha)[1]:
                if parent not in distance:
                    distance[parent] = at + 1
                    below.append(parent)
        level, at = below, at + 1
    boundary = {sha for sha, d in distance.items() if d == depth}
    not_shallow = {sha for sha, d in distance.items() if d < depth}
    return boundary, not_shallow


def _by_rev_list(
    walk: Walk, wants: Sequence[bytes], excluded: Sequence[bytes], since: int | None
) -> tuple[set[bytes], set[bytes]]:
    """C git's get_shallow_commits_by_rev_list over `rev-list --max-age=SINCE --not
    EXCLUDED --not WANTS`: the commits it lists are not shallow, except those with a
    parent it does not list, which are the boundary."""
    if excluded:
        listed = _limited_rev_list(walk, wants, excluded, since)
    else:
        listed = _rev_list_since(walk, wants, since or 0)
    if not listed:
        raise ShallowError("no commits selected for shallow requests")
    boundary = {sha for sha in listed if any(p not in listed for p in walk.commit(sha)[1])}
    return boundary, listed - boundary


def _rev_list_since(walk: Walk, wants: Sequence[bytes], since: int) -> set[bytes]:
    """Without exclusions rev-list stops at a commit older than SINCE: neither it nor
    what lies below it through it is listed."""
    listed: set[bytes] = set()
    stack = [sha for sha in wants if walk.commit(sha)[2] >= since]
    while stack:
        sha = stack.pop()
        if sha in listed:
            continue
        listed.add(sha)
        stack.extend(
            p for p in walk.commit(sha)[1] if p not in listed and walk.commit(p)[2] >= since
        )
    return listed


def _limited_rev_list(
    walk: Walk, wants: Sequence[bytes], excluded: Sequence[bytes], since: int | None
) -> set[bytes]:
    """With exclusions rev-list walks newest first and everything below an excluded
    commit, or below one older than SINCE, is left out; it stops once only left-out
    commits remain queued."""
    uninteresting: set[bytes] = set()
    queue = NewestFirst(walk)
    for sha in excluded:
        type_num, peeled = walk.peel(sha)
        if type_num == COMMIT:
            uninteresting.add(peeled)
            queue.push(peeled)
    for sha in wants:
        queue.push(sha)
    listed: set[bytes] = set()
    while queue and not queue.only(uninteresting):
        sha = queue.pop()
        _, parents, when = walk.commit(sha)
        if since is not None and when < since:
            uninteresting.add(sha)
        if sha in uninteresting:
            uninteresting.update(parents)
        else:
            listed.add(sha)
        for parent in parents:
            queue.push(parent)
    return listed - uninteresting


def _reachable_from_refs(
    walk: Walk, commits: Sequence[bytes], refs: Mapping[bytes, bytes]
) -> set[bytes]:
    """Which of `commits` some ref reaches (the client's shallow commits a deepening may
    follow: never one only a deleted branch reached)."""
    if not commits:
        return set()
    tips = _peeled_commits(walk, set(refs.values()))
    # What the commits reach that no ref reaches; a commit not in it is reached by a ref.
    unreached, _ = walk.commits_to_send(commits, tips)
    unreached_set = set(unreached)
    return {c for c in commits if c not in unreached_set}


def _resolve(name: bytes, refs: Mapping[bytes, bytes]) -> bytes:
    """`deepen-not NAME`: the one ref NAME means, by C git's rules (exactly one must match)."""
    found = [refs[rule % name] for rule in (*REF_RULES, REMOTE_HEAD_RULE) if rule % name in refs]
    shown = _shown(name.decode("utf-8", "replace"))
    if not found:
        raise ShallowError(f"deepen-not: no such ref: {shown}")
    if len(found) > 1:
        raise ShallowError(f"deepen-not: ambiguous ref: {shown}")
    return found[0]
