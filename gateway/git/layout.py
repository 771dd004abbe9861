"""Bare repositories on disk: where they live, creating them, moving them aside.

Disk paths are built only from names stored in the database (validated when they were
created), never from what a client typed, and are checked to resolve inside the
repositories root, so a symlink planted there cannot lead outside it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from dulwich.repo import Repo

from ..errors import Refusal


def disk_path(repos_dir: Path, workspace: str, name: str) -> Path:
    return repos_dir / workspace / f"{name}.git"


def resolve(repos_dir: Path, workspace: str, name: str) -> Path:
    """The real path of an existing repository, refusing anything outside the root."""
    root = repos_dir.resolve()
    path = disk_path(repos_dir, workspace, name)
    real = path.resolve()
    if real.parent.parent != root or not (real / "objects").is_dir():
        raise Refusal(f"Repository not found: {workspace}/{name}")
    return real


def create(repos_dir: Path, workspace: str, name: str, default_branch: str) -> Path:
    """Initialise a bare repository atomically: built aside, then renamed into place."""
    target = disk_path(repos_dir, workspace, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(target):
        raise Refusal(f"A repository directory already exists at {target}")
    staging = Path(tempfile.mkdtemp(prefix=".new-", dir=target.parent))
    try:
        repo = Repo.init_bare(str(staging))
        repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/" + default_branch.encode())
        repo.close()
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def move_aside(repos_dir: Path, trash_dir: Path, workspace: str, name: str) -> Path | None:
    """Move a repository under DATA/trash so it can be restored by hand."""
    source = disk_path(repos_dir, workspace, name)
    if not source.exists():
        return None
    dest_dir = trash_dir / workspace
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{name}.git.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    os.rename(source, dest)
    return dest


def sweep_all(repos_dir: Path) -> None:
    """At start-up: clear what pushes killed with the previous server left behind."""
    from .receive.pipeline import sweep_ref_locks
    from .receive.quarantine import sweep_quarantines

    for repo in repos_dir.glob("*/*.git"):
        if repo.is_dir() and not repo.is_symlink():
            sweep_quarantines(str(repo / "objects"), all_of_them=True)
            sweep_ref_locks(str(repo))
