"""Does every commit and annotated tag a ref update brings to a ref carry a verified
signature? Read from the quarantine (the store its alternate) before any ref moves.

"Newly reachable" is Git's `rev-list NEW --not OLD`: what the new tip reaches that the
ref's old value (and any other tips the caller counts as already checked, `known`) does
not. Only the objects a push brings is not enough: `git push origin feature:main` of a
branch already stored brings nothing new, yet makes `feature`'s unsigned commits part of
`main`. The walk paints commits from both sides, newest first (by committer time, as
C git's merge-base walk), and stops once nothing it still holds is only new; the cost is
the commits between the tips and where their histories meet, capped at `max_commits`
(past it the update is refused: fail closed). A committer clock that runs backwards can
make the walk check a few commits the old tip did reach: more checked, never fewer.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dulwich.object_store import BaseObjectStore
from dulwich.objects import Commit, ObjectID, Tag

from .. import signatures

MAX_COMMITS = 100_000
NEW, OLD = 1, 2
ZERO = b"0" * 40


@dataclass(frozen=True)
class _Parsed:
    time: int
    parents: tuple[bytes, ...]


def _commit(objects: BaseObjectStore, sha: bytes) -> _Parsed | None:
    """A commit's committer time and parents, from its header alone; None if the object
    is missing or not a commit."""
    try:
        type_num, raw = objects.get_raw(ObjectID(sha))
    except KeyError:
        return None
    if type_num != Commit.type_num:
        return None
    parents: list[bytes] = []
    time = 0
    for line in raw.split(b"\n\n", 1)[0].split(b"\n"):
        if line.startswith(b"parent "):
            parents.append(line[7:].strip())
        elif line.startswith(b"committer "):
            try:
                time = int(line.rsplit(b" ", 2)[-2])
            except (ValueError, IndexError):
                time = 0
    return _Parsed(time, tuple(parents))


def _peel(objects: BaseObjectStore, sha: bytes) -> tuple[list[bytes], bytes | None]:
    """(the annotated tags on the way from `sha`, the commit at the end or None)."""
    tags: list[bytes] = []
    seen: set[bytes] = set()
    while sha not in seen:
        seen.add(sha)
        try:
            type_num, raw = objects.get_raw(ObjectID(sha))
        except KeyError:
            return tags, None
        if type_num == Commit.type_num:
            return tags, sha
        if type_num != Tag.type_num:
            return tags, None
        tags.append(sha)
        first = raw.split(b"\n", 1)[0]
        if not first.startswith(b"object "):
            return tags, None
        sha = first[7:].strip()
    return tags, None


def new_commits(
    objects: BaseObjectStore, new: bytes, known: Iterable[bytes], max_commits: int = MAX_COMMITS
) -> list[bytes] | None:
    """The commits `new` reaches and none of `known` does, newest first; None when
    finding them would take more than `max_commits` steps."""
    flags: dict[bytes, int] = {}
    parsed: dict[bytes, _Parsed | None] = {}
    heap: list[tuple[int, int, bytes, int]] = []
    queued: set[bytes] = set()  # commits with a live entry in the heap
    counter = 0
    only_new = 0  # live entries that only the new side reached

    def reach(sha: bytes, flag: int) -> None:
        nonlocal counter, only_new
        before = flags.get(sha, 0)
        after = before | flag
        if after == before:
            return
        if sha not in parsed:
            parsed[sha] = _commit(objects, sha)
        info = parsed[sha]
        if before == NEW and sha in queued:
            only_new -= 1  # its entry in the heap is stale now
        flags[sha] = after
        counter += 1
        heapq.heappush(heap, (-(info.time if info else 0), counter, sha, after))
        queued.add(sha)
        if after == NEW:
            only_new += 1

    for tip in known:
        reach(tip, OLD)
    reach(new, NEW)
    order: list[bytes] = []
    steps = 0
    while heap and only_new > 0:
        _time, _n, sha, flag = heapq.heappop(heap)
        if flags[sha] != flag:
            continue  # a later entry carries more
        queued.discard(sha)
        if flag == NEW:
            only_new -= 1
            order.append(sha)
        steps += 1
        if steps > max_commits:
            return None
        info = parsed[sha]
        for parent in info.parents if info else ():
            reach(parent, flag)
    return [sha for sha in order if flags[sha] == NEW]


def first_unverified(
    objects: BaseObjectStore,
    new: bytes,
    old: bytes,
    keys: Mapping[str, str],
    own_account: str | None = None,
    *,
    known: Iterable[bytes] = (),
    max_commits: int = MAX_COMMITS,
) -> tuple[bytes, str] | None:
    """The first commit or annotated tag that updating a ref from `old` to `new` makes
    reachable from it and that is not signed by a registered key (`keys`: fingerprint
    to account; with `own_account`, only that account's keys), as (hex id, reason);
    None when all verify. `objects` is the quarantine (the store its alternate);
    `known` are further tips whose history counts as checked (for a new ref, say, the
    refs the same rule already protects). A deletion brings nothing."""
    if new == ZERO:
        return None
    old_tags: set[bytes] = set()
    old_commits: list[bytes] = []
    for tip in (old, *known):
        if tip == ZERO:
            continue
        tags, commit = _peel(objects, tip)
        old_tags.update(tags)
        if commit is not None:
            old_commits.append(commit)
    tags, commit = _peel(objects, new)
    for tag in tags:
        if tag in old_tags:
            break  # the rest of the chain was there before
        failure = _check(objects, tag, signatures.verify_tag, keys, own_account)
        if failure is not None:
            return failure
    if commit is None:
        return None
    found = new_commits(objects, commit, old_commits, max_commits)
    if found is None:
        return commit, f"more than {max_commits} commits to verify; push fewer at a time"
    for sha in found:
        failure = _check(objects, sha, signatures.verify_commit, keys, own_account)
        if failure is not None:
            return failure
    return None


def _check(
    objects: BaseObjectStore,
    sha: bytes,
    verify: signatures.Verifier,
    keys: Mapping[str, str],
    own_account: str | None,
) -> tuple[bytes, str] | None:
    try:
        _type, raw = objects.get_raw(ObjectID(sha))
    except KeyError:
        return sha, "missing object"
    try:
        verify(raw, keys, own_account)
    except signatures.Unverified as refused:
        return sha, str(refused)
    return None


@dataclass(frozen=True)
class SigningKey:
    """A signing key registered with the gateway, as the worker's job carries it: the
    signature carries the public key, which must have this fingerprint."""

    account: str
    fingerprint: str


def refusal(
    objects: BaseObjectStore,
    old: bytes,
    new: bytes,
    keys: tuple[SigningKey, ...],
    own_account: str | None,
    known: Iterable[bytes] = (),
) -> str | None:
    """Why a `--require-signed` rule refuses the update from `old` to `new` (one line
    naming the object), or None when everything it makes reachable verifies. `objects`:
    the quarantine with the store its alternate (or the store when nothing was pushed);
    `own_account`: with `--own-keys`, the pusher's account."""
    registered = {key.fingerprint: key.account for key in keys}
    failure = first_unverified(objects, new, old, registered, own_account, known=known)
    if failure is None:
        return None
    sha, reason = failure
    return f"{sha.decode('ascii', 'replace')}: {reason}"
