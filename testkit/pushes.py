"""What a push leaves on the server, as the tests look at it: the bare repository's refs,
quarantines and ref locks, objects, the server's log; and a seeded repository to push
to. Shared by the push, fsck, ref and bomb tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .keys import User
from .localgit import commit
from .server import Gateway
from .waiting import wait_for

# The hooks the repository ships (hooks/ at its root), as operators install them.
SHIPPED_HOOKS = Path(__file__).resolve().parent.parent / "hooks"


def bare_refs(repo_dir: Path) -> dict[str, str]:
    """Every ref of the bare repository as git itself reads them (loose and packed)."""
    out = subprocess.run(
        ["git", "for-each-ref", "--format=%(objectname) %(refname)"],
        cwd=repo_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}


def quarantines(repo_dir: Path) -> list[str]:
    return sorted(p.name for p in (repo_dir / "objects").glob("incoming-*"))


def no_quarantine_soon(repo_dir: Path, timeout: float = 5.0) -> bool:
    """The worker needs a moment to notice EOF and remove its quarantine."""
    return wait_for(lambda: not quarantines(repo_dir), timeout)


def ref_locks(repo_dir: Path) -> list[str]:
    found = [str(p.relative_to(repo_dir)) for p in (repo_dir / "refs").rglob("*.lock")]
    if (repo_dir / "packed-refs.lock").exists():
        found.append("packed-refs.lock")
    return found


def no_ref_locks_soon(repo_dir: Path, timeout: float = 5.0) -> bool:
    """No ref lock stays: background housekeeping packing refs holds packed-refs.lock
    for a moment, a lock a push left behind stays for good."""
    return wait_for(lambda: not ref_locks(repo_dir), timeout)


def has_object(repo_dir: Path, sha: str | bytes) -> bool:
    if isinstance(sha, bytes):
        sha = sha.decode()
    return (
        subprocess.run(["git", "cat-file", "-e", sha], cwd=repo_dir, capture_output=True).returncode
        == 0
    )


def log_since(g: Gateway, offset: int) -> str:
    return g.server_log()[offset:]


def assert_clean_log(text: str) -> None:
    assert "Traceback" not in text, text[-4000:]
    assert "git worker failed" not in text, text[-4000:]


def seed(g: Gateway, work: Path, name: str = "clone") -> tuple[User, str, Path, str]:
    """A writer, a workspace, a repository and a clone whose first commit is pushed."""
    alice = g.user()
    ws = g.workspace((alice, "write"))
    path = g.repo(ws)
    clone = work / name
    g.git(alice, "clone", g.url(path), str(clone))
    first = commit(clone, "README.md", "hello\n")
    g.git(alice, "push", "origin", "HEAD:main", cwd=clone)
    return alice, path, clone, first
