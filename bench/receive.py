"""The large-push rows (issue 17): the gateway beside OpenSSH + C git, as in compare.py.

    .venv/bin/python bench/compare.py --only receive [--runs 3] [--quick]
    .venv/bin/python bench/receive.py --profile huge|mirror|refs   (the worker under cProfile)

Rows, each a fresh target repository on both sides for every run, the same client:
- a push of the huge history's main (~300,000 objects) into an empty repository;
- `git push --mirror` of the "mirror" repository (below: ~50,000 objects, ~2,000 refs)
  into an empty repository;
- a push of NEW_REFS new branches, each at an existing commit, into a copy of the mirror
  repository (no new objects: the per-ref work alone);
- the first clone of each pushed huge history, after the server's background work on it
  (the gateway's housekeeping makes the commits' kept lists; its CPU is its own row).
Each push is checked: the target's refs are the client's afterwards; the first run's
gateway repository of each row gets `git fsck --full`.

--quick: small stands in for huge, and 100 new refs for NEW_REFS.

--profile NAME captures what `git push` sends for that row (through a tee in
--receive-pack, into a local empty repository), then replays it into the gateway's
worker (`python -m gateway.git.workers.worker git-receive-pack REPO`, the job's defaults:
quarantine, connectivity check and fsck on, no hooks) under cProfile and prints the top
of the profile.
"""

from __future__ import annotations

import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import compare
import overtime
from compare import (
    Results,
    Sides,
    alternate,
    cached_repo,
    fail,
    fast_import,
    git_local,
    log,
    measured,
    scratch,
    tree_stream,
)

# The mirror repository: the huge history's generator for 5,500 commits (~50,000
# objects), a tag every 5 commits (1,100, annotated and lightweight in turn) and
# BRANCHES branches at commits spread over the history: ~2,000 refs.
MIRROR = dict(kind="mirror", commits=5_500, seed=5, tag_every=5, branches=900, version=1)
NEW_REFS = 1_000
BACKGROUND_ROW = "server CPU in the background after the push of {} (subreaper-counted, s)"
compare.NEW_REPOS["mirror"] = MIRROR
# The rows' targets (issue 17), ahead of compare.py's "push" (1.2 for the 20 MB push).
compare.TARGETS[:0] = [
    ("push of the huge history", 1.5, "ratio"),
    ("push --mirror", 1.5, "ratio"),
    ("push of new refs", 1.5, "ratio"),
    ("first clone after the push of the huge history", 1.2, "ratio"),
]


def mirror_stream(out, params: dict) -> None:
    tree_stream(out, params, 0, params["commits"])
    step = params["commits"] // params["branches"]
    for n in range(params["branches"]):
        out.write(b"reset refs/heads/topic/%d\nfrom :%d\n\n" % (n, 1 + n * step))


def build_mirror_repo(build: Path, params: dict) -> None:
    server = build / "server.git"
    fast_import(server, params, 0, 0, lambda out: mirror_stream(out, params))
    git_local("--git-dir", str(server), "repack", "-a", "-d", "-f", "-q")
    git_local("--git-dir", str(server), "gc", "--quiet")


compare.BUILDERS["mirror"] = build_mirror_repo


def add_empty_repo(sides: Sides, name: str) -> None:
    """An empty repository on both servers (the gateway's made by `gateway repo add`)."""
    sides.paths[name] = sides.gw.repo(sides.ws, name)
    git_local("init", "-q", "--bare", "-b", "main", str(sides.ossh.repo_dir(name)))


def client_copy(sides: Sides, source: str) -> Path:
    """A bare --local clone (hard links) of a cached repository, all its refs: the client."""
    client = scratch(sides, f"client-{source}") / "c.git"
    git_local(
        "clone", "-q", "--bare", "--local", str(cached_repo(source) / "server.git"), str(client)
    )
    return client


def refs_of(git_dir: Path) -> dict[str, str]:
    out = git_local("--git-dir", str(git_dir), "for-each-ref", "--format=%(objectname) %(refname)")
    return {ref: sha for sha, ref in (line.split(" ", 1) for line in out.splitlines())}


def check_pushed(sides: Sides, side: str, name: str, want: dict[str, str], fsck: bool) -> None:
    target = sides.server_dir(side, name)
    got = refs_of(target)
    wrong = [ref for ref, sha in want.items() if got.get(ref) != sha]
    if wrong:
        fail(f"push to {side} ({name}): {len(wrong)} refs not as pushed, e.g. {wrong[0]}")
    if fsck:
        result = subprocess.run(
            ["git", "--git-dir", str(target), "fsck", "--full", "--no-progress"],
            capture_output=True,
        )
        if result.returncode != 0:
            fail(f"git fsck --full of {side}'s {name} after the push: {result.stderr[-800:]!r}")


def new_branches(client: Path, count: int, prefix: str) -> dict[str, str]:
    """`count` new branches in the client, at commits spread over main's history."""
    shas = git_local("--git-dir", str(client), "rev-list", "main").split()
    refs = {f"refs/heads/{prefix}/{n}": shas[(n * 7) % len(shas)] for n in range(count)}
    stdin = "".join(f"create {ref} {sha}\n" for ref, sha in refs.items()).encode()
    git_local("--git-dir", str(client), "update-ref", "--stdin", input=stdin)
    return refs


def bench_receive(sides: Sides, res: Results, runs: int, quick: bool = False) -> None:
    huge, new_refs = ("small", 100) if quick else ("huge", NEW_REFS)

    # A push of the huge history's main into an empty repository.
    client = client_copy(sides, huge)
    tip = {"refs/heads/main": git_local("--git-dir", str(client), "rev-parse", "main").strip()}
    row = f"push of the huge history ({huge}'s main) into an empty repository (s)"
    for run in range(runs):
        for side in alternate(run):
            name = f"into-empty-{run}"
            if side == alternate(run)[0]:
                add_empty_repo(sides, name)
            argv = ["--git-dir", str(client), "push", "-q", sides.url(side, name), "main"]
            measured(sides, res, side, row, f"push of {huge}", argv)
            # What the server does in the background after it (the gateway's housekeeping
            # makes the commits' kept lists), waited for so that no row shares the cores.
            cpu = sides.server_cpu(side)
            overtime.wait_quiet(sides.server_dir(side, name))
            res.add(BACKGROUND_ROW.format(huge), side, sides.server_cpu(side) - cpu)
            check_pushed(sides, side, name, tip, fsck=run == 0 and side == "gateway")
    shutil.rmtree(client.parent, ignore_errors=True)

    # The first clone of what was pushed (nothing made by a clone before it).
    row = f"first clone after the push of the huge history ({huge}, s)"
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"first-after-push-{side}-{run}") / "c"
            argv = ["clone", "-q", "--no-checkout", sides.url(side, f"into-empty-{run}"), str(dest)]
            measured(
                sides, res, side, row, f"first clone after the push of {huge}", argv, trace=True
            )
            if run == 0:
                git_local("--git-dir", str(dest / ".git"), "fsck", "--full", "--no-progress")
            shutil.rmtree(dest.parent, ignore_errors=True)

    # `git push --mirror` of the mirror repository into an empty repository.
    client = client_copy(sides, "mirror")
    want = refs_of(client)
    row = f"push --mirror, {len(want):,} refs, into an empty repository (s)"
    for run in range(runs):
        for side in alternate(run):
            name = f"mirror-{run}"
            if side == alternate(run)[0]:
                add_empty_repo(sides, name)
            argv = ["--git-dir", str(client), "push", "-q", "--mirror", sides.url(side, name)]
            measured(sides, res, side, row, "push --mirror", argv)
            check_pushed(sides, side, name, want, fsck=run == 0 and side == "gateway")

    # NEW_REFS new branches at existing commits into a copy of the mirror repository.
    added = new_branches(client, new_refs, "new")
    row = f"push of new refs ({new_refs:,} branches at existing commits, to {len(want):,} refs, s)"
    for run in range(runs):
        for side in alternate(run):
            name = f"new-refs-{run}"
            if side == alternate(run)[0]:
                sides.add_repo(name, source="mirror")
            argv = [
                "--git-dir",
                str(client),
                "push",
                "-q",
                sides.url(side, name),
                "refs/heads/new/*:refs/heads/new/*",
            ]
            measured(sides, res, side, row, f"push of {new_refs:,} new refs", argv)
            check_pushed(sides, side, name, added, fsck=False)
    shutil.rmtree(client.parent, ignore_errors=True)


# --- --profile: the worker alone, on a captured push ---------------------------------------


def capture(root: Path, client: Path, target: Path, push_args: list[str]) -> Path:
    """What `git push` sends to receive-pack (C git's, into `target`), kept in a file."""
    request = root / "request"
    tee = f"tee {request} | git-receive-pack"
    git_local(
        "--git-dir", str(client), "push", "-q", f"--receive-pack={tee}", str(target), *push_args
    )
    return request


def main_profile(name: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="gateway-receive-profile-"))
    try:
        source = {"huge": "huge", "mirror": "mirror", "refs": "mirror"}[name]
        client = root / "client.git"
        git_local(
            "clone", "-q", "--bare", "--local", str(cached_repo(source) / "server.git"), str(client)
        )
        target = root / "target.git"
        if name == "refs":
            new_branches(client, NEW_REFS, "new")
            shutil.copytree(cached_repo(source) / "server.git", target, symlinks=True)
            push_args = ["refs/heads/new/*:refs/heads/new/*"]
        else:
            git_local("init", "-q", "--bare", "-b", "main", str(target))
            push_args = ["--mirror"] if name == "mirror" else ["main"]
        fresh = root / "fresh.git"
        shutil.copytree(target, fresh, symlinks=True)  # before the capture moved its refs
        request = capture(root, client, target, push_args)
        prof = root / "worker.prof"
        worker = ["-m", "gateway.git.workers.worker", "git-receive-pack", str(fresh)]
        started = time.perf_counter()
        with open(request, "rb") as stdin:
            result = subprocess.run(
                [sys.executable, "-m", "cProfile", "-o", str(prof), *worker],
                stdin=stdin,
                capture_output=True,
                cwd=root,
            )
        elapsed = time.perf_counter() - started
        if result.returncode != 0 or b"ng " in result.stdout:
            fail(f"the worker's push failed: {result.stdout[-600:]!r} {result.stderr[-600:]!r}")
        print(
            f"\nThe gateway's worker receiving the {name} push under cProfile: {elapsed:.1f} s.\n"
        )
        for order in ("tottime", "cumulative"):
            text = io.StringIO()
            pstats.Stats(str(prof), stream=text).strip_dirs().sort_stats(order).print_stats(25)
            lines = text.getvalue().splitlines()
            start = next(i for i, line in enumerate(lines) if "ncalls" in line)
            print(f"Top 25 by {order}:\n```")
            print("\n".join(lines[start : start + 26]))
            print("```\n", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    log("profile done")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--profile"] or len(sys.argv) != 3:
        sys.exit("usage: bench/receive.py --profile huge|mirror|refs")
    main_profile(sys.argv[2])
    if compare.FAILURES:
        sys.exit(1)
