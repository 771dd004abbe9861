"""What the refs reach, and when it is safe to remove what they do not.

Reachable: every object any ref (and a detached HEAD) reaches, found with the upload
side's walk and the commits' kept lists (commitobjects.py), as a clone would send them.
A ref whose history is incomplete makes the walk fail: then nothing is pruned.

Safe to remove: an unreachable object is removed only once it is older than the grace
period (its pack's or its file's mtime, as C git's gc.pruneExpire), and only if, at the
moment the old packs go, under the lock pushes take to move refs (gateway-refs.lock, and on
PostgreSQL the advisory lock every node sees),
the refs are still those the walk started from and no push is in flight (no live
quarantine, `objects/incoming-*`). A push's objects wait in its quarantine until its
refs move, under that same lock; so a push that relies on an object the pruner found
unreachable (its connectivity check read it from the store) is either still in flight
(nothing is pruned), or has moved its ref (the refs differ: nothing is pruned).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from dulwich.repo import Repo

from ...store import nodelock
from ..upload import walk
from ..upload.commitobjects import CommitObjects
from ..upload.storedpacks import ObjectReader, PackError, open_reader

REFS_LOCK = "gateway-refs.lock"  # receive/pipeline.py's


class Unwalkable(Exception):
    """A ref's history is incomplete; the message says which object is missing."""


def ref_tips(repo: Repo) -> dict[bytes, bytes]:
    """Every ref's object (HEAD too, when it is detached)."""
    tips: dict[bytes, bytes] = {}
    for name in repo.refs.allkeys():
        try:
            tips[name] = repo.refs[name]
        except KeyError:
            continue  # a symbolic ref to a branch not born yet
    return tips


def reachable(repo_dir: str, reader: ObjectReader, tips: dict[bytes, bytes]) -> set[bytes]:
    commit_objects = CommitObjects(repo_dir)
    try:
        shas, _ = walk.objects_to_send(reader, sorted(set(tips.values())), [], {}, commit_objects)
    except KeyError as exc:
        raise Unwalkable(f"object {exc.args[0]!r} is missing") from None
    except PackError as exc:
        raise Unwalkable(str(exc)) from None
    commit_objects.save()
    return set(shas)


def fill_commit_lists(repo: Repo, tips: dict[bytes, bytes]) -> int:
    """Make the kept lists (commitobjects.py) of every commit the refs reach that has
    none, as a first clone would at request time; the number made. After a push of a
    whole history, the first clone then reads them instead of diffing trees."""
    reader = open_reader(repo)
    if reader is None:
        return 0  # packs this reader cannot read: dulwich serves them, without lists
    commit_objects = CommitObjects(repo.controldir())
    try:
        walk.objects_to_send(reader, sorted(set(tips.values())), [], {}, commit_objects)
    except (KeyError, PackError):
        return 0  # an incomplete history: the clone that needs them says so
    finally:
        reader.close()
    made = len(commit_objects.pending)
    commit_objects.save()
    return made


@contextmanager
def refs_held(repo_dir: str, database_url: str = "") -> Iterator[None]:
    """No push moves a ref (or moves its objects in) while this is held: on this machine
    (the flock), and on PostgreSQL on every gateway sharing the database (the advisory
    lock pushes take, store/nodelock.py; nodelock.LockUnavailable if it cannot be had)."""
    with open(os.path.join(repo_dir, REFS_LOCK), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with nodelock.held(database_url, nodelock.refs_lock_name(repo_dir)):
                yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
