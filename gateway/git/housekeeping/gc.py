"""One housekeeping run on one repository: which packs to combine, and the steps.

The plan is geometric, so that a run after pushes costs what the pushes added, not what
the repository holds: the small packs (all but the largest) and the loose objects are
folded into one new pack; only when the small ones add up to half the largest (or by
hand, `gateway repo gc`) is everything repacked into one, and only then is anything
unreachable pruned (reachability.py says when that is safe). Loose refs are packed in
every run (refpacking.py).

Each step leaves a repository that serves every ref if the process dies there
(packing.py); what a killed run leaves behind (temporary files, a removed pack's
index or bitmap, the lock's pid) is cleared by the next run, with one line saying so.
Anything unexpected (a pack whose index is missing or damaged: left as it is and not
counted; a full disk: nothing changed) is one line in `Report.problems`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass, field

from dulwich.errors import NotGitRepository
from dulwich.repo import Repo

from ...store import nodelock
from .. import packorder
from ..receive.quarantine import pushes_in_flight
from ..upload.storedpacks import ObjectReader, PackError, StoredPack
from . import faults, inventory, packing, reachability, refpacking
from .lock import HousekeepingLock

DEFAULT_PRUNE_AFTER = 14 * 86400  # C git's gc.pruneExpire
FULL_WHEN = 2  # repack everything once the small packs are 1/FULL_WHEN of the largest


class NotARepository(Exception):
    pass


@dataclass
class Options:
    full: bool = False  # everything into one pack, and prune (by hand)
    prune_after: int = DEFAULT_PRUNE_AFTER  # seconds an unreachable object is kept
    # PostgreSQL: pruning waits for the refs lock of every node (store/nodelock.py).
    database_url: str = field(default="", repr=False)


@dataclass
class Report:
    mode: str = "nothing to do"
    packs_before: int = 0
    packs_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    objects: int = 0  # in the new pack
    loose_packed: int = 0
    pruned: int = 0
    refs_packed: int = 0
    lists_made: int = 0  # commits' kept lists (commitobjects.py)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what it cleared up, one line each
    problems: list[str] = field(default_factory=list)  # what is wrong, one line each

    def summary(self) -> str:
        return (
            f"{self.mode}: packs {self.packs_before} -> {self.packs_after}, "
            f"{self.objects} objects written ({self.loose_packed} loose packed, "
            f"{self.pruned} pruned), {_size(self.bytes_before)} -> {_size(self.bytes_after)}, "
            f"{self.refs_packed} refs packed, {self.lists_made} commit lists made, "
            f"{self.seconds:.2f} s"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def open_repo(repo_dir: str) -> Repo:
    if not os.path.isdir(os.path.join(repo_dir, "objects")):
        raise NotARepository(f"{repo_dir} is not a Git repository (no objects directory)")
    try:
        return Repo(repo_dir)
    except (NotGitRepository, OSError, ValueError) as exc:
        raise NotARepository(f"{repo_dir} is not a Git repository ({exc})") from None


def run(repo_dir: str, options: Options) -> Report:
    """Raises NotARepository, lock.Busy; a full disk or a damaged pack is a problem line."""
    started = time.monotonic()
    report = Report()
    repo = open_repo(repo_dir)
    try:
        with HousekeepingLock(repo_dir) as lock:
            if lock.stale_pid is not None:
                report.notes.append(
                    f"cleared the stale lock of housekeeper pid {lock.stale_pid} (killed)"
                )
            try:
                _run(repo, repo_dir, options, report)
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                if exc.errno == errno.ENOSPC:
                    reason = "no space left on device"
                report.problems.append(f"gc stopped, nothing changed: {reason}")
            except (PackError, reachability.Unwalkable) as exc:
                report.problems.append(f"gc stopped, nothing changed: {exc}")
            except nodelock.LockUnavailable as exc:
                # The new pack is in place; the old ones stay (the next run folds them).
                report.problems.append(f"gc stopped before removing anything: {exc}")
    finally:
        repo.close()
    report.seconds = time.monotonic() - started
    return report


def _run(repo: Repo, repo_dir: str, options: Options, report: Report) -> None:
    objects_dir = os.path.join(repo_dir, "objects")
    now = time.time()
    finished = packing.finish_interrupted(os.path.join(objects_dir, "pack"))
    if finished:
        report.notes.append(f"put in place the index of {finished} pack(s) an interrupted gc left")
    found = inventory.take(objects_dir, now)
    if found.leftovers:
        packing.remove_leftovers(found.leftovers)
        report.notes.append(
            f"removed {len(found.leftovers)} file(s) an interrupted gc left in objects/pack"
        )
    report.problems.extend(found.problems)
    report.packs_before = report.packs_after = len(found.packs)
    report.bytes_before = report.bytes_after = found.pack_bytes
    candidates = sorted((p for p in found.packs if not p.kept), key=lambda p: -p.size)
    full = options.full
    if len(candidates) >= 2 and sum(p.size for p in candidates[1:]) * FULL_WHEN >= (
        candidates[0].size
    ):
        full = True
    chosen = candidates if full else candidates[1:]
    if chosen or found.loose:
        _repack(repo, repo_dir, found, chosen, full, options, now, report)
    report.refs_packed = refpacking.pack_refs(repo)
    report.lists_made = reachability.fill_commit_lists(repo, reachability.ref_tips(repo))


def _repack(
    repo: Repo,
    repo_dir: str,
    found: inventory.Inventory,
    chosen: list[inventory.PackFile],
    full: bool,
    options: Options,
    now: float,
    report: Report,
) -> None:
    objects_dir = os.path.join(repo_dir, "objects")
    stored = [StoredPack(p.basename) for p in chosen]
    reader = ObjectReader(repo.object_store, stored)
    try:
        names: dict[bytes, float] = {}  # hex name -> newest mtime of a copy
        for pack, info in zip(stored, chosen, strict=True):
            for sha in pack.index.hex_name_list():
                names[sha] = max(names.get(sha, 0.0), info.mtime)
        for obj in found.loose:
            names[obj.sha] = max(names.get(obj.sha, 0.0), obj.mtime)
        if not full:
            _leave_out_what_stays(found, chosen, names)
        prunable: set[bytes] = set()
        tips: dict[bytes, bytes] = {}
        if full and options.prune_after >= 0:
            cutoff = now - options.prune_after
            old = {sha for sha, mtime in names.items() if mtime < cutoff}
            if old and not pushes_in_flight(objects_dir):
                tips = reachability.ref_tips(repo)
                everything = ObjectReader(
                    repo.object_store, [StoredPack(p.basename) for p in found.packs]
                )
                try:
                    prunable = old - reachability.reachable(repo_dir, everything, tips)
                except reachability.Unwalkable as exc:
                    report.problems.append(f"nothing pruned: a ref's history is incomplete: {exc}")
                finally:
                    everything.close()
        if len(chosen) <= 1 and not found.loose and not prunable:
            return  # one pack already, nothing to drop
        keep = [sha for sha in names if sha not in prunable]
        report.mode = "full repack" if full else "geometric repack"
        new_basename = ""
        if keep:  # else all of it is in the packs that stay
            new = packing.write_new_pack(found.pack_dir, reader, keep)
            report.objects, new_basename = new.count, new.basename
            with contextlib.suppress(OSError, ValueError):  # a cache: the first reader makes it
                packorder.prepare(new.basename)
    finally:
        reader.close()
    old_packs = [p.basename for p in chosen if p.basename != new_basename]
    loose_in = [obj.path for obj in found.loose if obj.sha not in prunable]
    loose_out = [obj.path for obj in found.loose if obj.sha in prunable]
    if prunable:
        with reachability.refs_held(repo_dir, options.database_url):
            faults.reached("prune-check")
            if reachability.ref_tips(repo) != tips or pushes_in_flight(objects_dir):
                # A push came in: what it relies on may be among what would go.
                report.notes.append("prune put off: a push came in during gc")
                packing.remove_loose(loose_in)
                report.loose_packed = len(loose_in)
                _count_after(found.pack_dir, report)
                return
            packing.remove_packs(old_packs)
            packing.remove_loose(loose_in + loose_out)
        report.pruned = len(prunable)
    else:
        packing.remove_packs(old_packs)
        packing.remove_loose(loose_in)
    report.loose_packed = len(loose_in)
    _count_after(found.pack_dir, report)


def _leave_out_what_stays(
    found: inventory.Inventory, chosen: list[inventory.PackFile], names: dict[bytes, float]
) -> None:
    """Drop from `names` what the packs that stay (the largest, kept ones) hold, as C
    git's geometric repack does: a thin push's pack also holds copies of the bases its
    deltas were made against, which are most often in the largest pack already."""
    chosen_names = {p.basename for p in chosen}
    for info in found.packs:
        if info.basename in chosen_names or not names:
            continue
        pack = StoredPack(info.basename)
        try:
            wanted = list(names)
            for sha, k in zip(wanted, pack.find_many(wanted), strict=True):
                if k is not None:
                    del names[sha]
        finally:
            pack.close()


def _count_after(pack_dir: str, report: Report) -> None:
    after = inventory.take(os.path.dirname(pack_dir))
    report.packs_after = len(after.packs)
    report.bytes_after = after.pack_bytes
