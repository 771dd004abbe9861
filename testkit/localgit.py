"""Plain local git, and the gateway's Git worker processes as /proc shows them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


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
        if b"gateway.git.worker" in cmdline and state != "Z" and (
                cwd == target or target.encode() in cmdline):
            pids.append(int(entry.name))
    return pids


def local_git(*args: str, cwd: Path, env: dict | None = None) -> str:
    """Plain local git (no network), for preparing and inspecting work trees."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout
