"""Where a push's objects wait until its refs may move (SPEC §7), as Git's quarantine.

A push's pack is read into `objects/incoming-PID-*` with the real store as its alternate:
fetches cannot see it, while connectivity checks, fsck and the hooks can read both. Only
when some ref will move do its packs move into the store (packs first, then their
indexes); in every case the quarantine is then removed. A push killed half-way leaves
its quarantine behind: the next push into that repository removes those whose process
is gone, and the server at start-up removes them all.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from dulwich.object_store import DiskObjectStore

QUARANTINE_PREFIX = "incoming-"


def create(objects_dir: str) -> DiskObjectStore:
    """A new, empty quarantine inside `objects_dir` (after removing dead pushes' ones)."""
    sweep_quarantines(objects_dir)
    path = tempfile.mkdtemp(prefix=f"{QUARANTINE_PREFIX}{os.getpid()}-", dir=objects_dir)
    os.mkdir(os.path.join(path, "pack"))
    os.mkdir(os.path.join(path, "info"))
    with open(os.path.join(path, "info", "alternates"), "w") as f:
        f.write(os.path.abspath(objects_dir) + "\n")
    return DiskObjectStore(path)


def remove(quarantine: DiskObjectStore) -> None:
    quarantine.close()
    shutil.rmtree(quarantine.path, ignore_errors=True)


def move_in(quarantine: DiskObjectStore, objects_dir: str) -> None:
    """Packs first, then their indexes: a reader never sees an index without its pack."""
    source = os.path.join(quarantine.path, "pack")
    target = os.path.join(objects_dir, "pack")
    names = sorted(os.listdir(source), key=lambda n: (not n.endswith(".pack"), n.endswith(".idx")))
    for name in names:
        if name.startswith("tmp_"):
            continue
        os.rename(os.path.join(source, name), os.path.join(target, name))


def sweep_quarantines(objects_dir: str, all_of_them: bool = False) -> None:
    """Remove quarantines left by pushes whose process died (killed mid-push); at
    start-up, when no push of ours can be running, all of them (a pid may be reused)."""
    for name, pid in _quarantines(objects_dir):
        if all_of_them or (pid is not None and not _alive(pid)):
            shutil.rmtree(os.path.join(objects_dir, name), ignore_errors=True)


def pushes_in_flight(objects_dir: str) -> bool:
    """A live quarantine: a push receiving, checking or deciding (housekeeping then
    prunes nothing: what it would remove may be what that push relies on)."""
    return any(pid is None or _alive(pid) for _, pid in _quarantines(objects_dir))


def _quarantines(objects_dir: str) -> list[tuple[str, int | None]]:
    """Each quarantine directory's name, and the pid of the push that made it."""
    try:
        entries = os.listdir(objects_dir)
    except OSError:
        return []
    found = []
    for name in entries:
        if name.startswith(QUARANTINE_PREFIX):
            pid = name[len(QUARANTINE_PREFIX) :].split("-", 1)[0]
            found.append((name, int(pid) if pid.isdigit() else None))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
