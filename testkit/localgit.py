"""Git as the tests run it beside the gateway: plain local git on work trees, checks of a
server's repository on disk, what ls-remote lists, and the gateway's Git worker
processes as /proc shows them."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .keys import User
    from .server import Gateway


def git_workers(repo_dir: Path) -> list[int]:
    """Live Git worker processes serving REPO_DIR: a worker serving a repository has it
    as its working directory (a worker started per request also has it in its command)."""
    target = str(repo_dir.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (
            b"gateway.git.workers.worker" in cmdline
            and state != "Z"
            and (cwd == target or target.encode() in cmdline)
        ):
            pids.append(int(entry.name))
    return pids


def local_git(*args: str, cwd: Path, env: dict | None = None) -> str:
    """Plain local git (no network), for preparing and inspecting work trees."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def commit(tree: Path, name: str, content: str | bytes = "", message: str | None = None) -> str:
    path = tree / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content or f"{name}\n")
    local_git("add", name, cwd=tree)
    local_git("commit", "-q", "-m", message or f"add {name}", cwd=tree)
    return local_git("rev-parse", "HEAD", cwd=tree).strip()


def client_fsck(clone: Path) -> None:
    """A clone's own `git fsck --full --strict` is clean (dangling objects aside)."""
    result = subprocess.run(
        ["git", "fsck", "--full", "--strict", "--no-dangling"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What C git's fsck says when a pack it listed is removed under it: the gateway's
# housekeeping (scheduled after pushes) repacked the repository meanwhile.
_PACK_VANISHED = re.compile(r"packfile \S+ (index not opened|cannot be accessed)")


def fsck(gw: Gateway, path: str) -> None:
    for _attempt in range(3):
        result = subprocess.run(
            ["git", "fsck", "--full", "--strict"],
            cwd=gw.repo_dir(path),
            capture_output=True,
            text=True,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        if result.returncode == 0 or not all(_PACK_VANISHED.search(e) for e in errors):
            break
        time.sleep(1)  # a repack ran under it: read the repository as it is now
    assert result.returncode == 0, result.stdout + result.stderr


def remote_refs(gw: Gateway, user: User, path: str) -> dict[str, str]:
    out = gw.git(user, "ls-remote", gw.url(path)).stdout
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}
