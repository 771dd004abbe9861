"""Housekeeping end to end (issue 17): pushes start it, clones and pushes run through it,
a housekeeper killed anywhere leaves a clean repository, and `gateway repo gc` / `fsck`
say what they did. Real git, a real `gateway serve`, `git fsck --full` as the checker."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path

import pytest

from testkit import Gateway, local_git
from testkit.localgit import client_fsck, commit, fsck
from testkit.pushes import assert_clean_log, bare_refs
from testkit.server import GATEWAY
from testkit.waiting import wait_for


def packs(repo_dir: Path) -> list[str]:
    return sorted(p.name for p in (repo_dir / "objects" / "pack").glob("*.idx"))


def pack_files(repo_dir: Path) -> list[str]:
    return sorted(p.name for p in (repo_dir / "objects" / "pack").iterdir())


def gateway_cli(g: Gateway, *args: str, fault: str = "") -> subprocess.CompletedProcess:
    """`gateway ARGS`, with the housekeeper's fault seam set if `fault`."""
    env = dict(g.env)
    env.pop("GATEWAY_HOUSEKEEPING_FAULT", None)
    if fault:
        env["GATEWAY_HOUSEKEEPING_FAULT"] = fault
    return subprocess.run(
        [*GATEWAY, "--data-dir", str(g.data), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=g.root,
        timeout=120,
    )


def seeded(g: Gateway, work: Path, pushes: int = 3):
    """A repository with `pushes` pushes (a pack each), a second branch and a tag."""
    alice = g.user()
    ws = g.workspace((alice, "write"))
    path = g.repo(ws)
    clone = work / "clone"
    g.git(alice, "clone", g.url(path), str(clone))
    for i in range(pushes):
        commit(clone, f"file{i}.txt", f"content {i}\n" * 50)
        g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    local_git("tag", "-a", "v1", "-m", "a tag", cwd=clone)
    g.git(alice, "push", "-q", "origin", "v1", "HEAD:refs/heads/side", cwd=clone)
    return alice, path, clone


def assert_serves_everything(g: Gateway, alice, path: str, work: Path, name: str) -> None:
    """git fsck --full of the server's repository is clean and a clone has every ref."""
    fsck(g, path)
    expected = bare_refs(g.repo_dir(path))
    copy = work / name
    g.git(alice, "clone", "-q", "--mirror", g.url(path), str(copy))
    client_fsck(copy)
    assert bare_refs(copy) == expected


def test_pushes_start_housekeeping_and_keep_the_pack_count_bounded(private, work):
    g = private("gc_auto_packs = 4\n")
    alice, path, clone = seeded(g, work, pushes=1)
    repo_dir = g.repo_dir(path)
    for i in range(40):
        commit(clone, f"n{i}.txt", f"push {i}\n")
        g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    assert wait_for(lambda: len(packs(repo_dir)) <= 5, timeout=60), packs(repo_dir)
    assert "event=housekeeping.done" in g.server_log()
    assert wait_for(lambda: not (repo_dir / "gateway-housekeeping.lock").read_bytes(), 60)
    assert_serves_everything(g, alice, path, work, "mirror")
    assert (repo_dir / "packed-refs").exists()
    assert_clean_log(g.server_log())


def test_a_background_housekeeper_killed_is_cleared_up_after(private, work):
    g = private("gc_auto_packs = 3\n", start=False)
    g.env["GATEWAY_HOUSEKEEPING_FAULT"] = "kill:pack-renamed"
    g.start()
    # Four pushes, four packs: only the last one starts a housekeeper.
    alice, path, clone = seeded(g, work, pushes=3)
    repo_dir = g.repo_dir(path)
    lock = repo_dir / "gateway-housekeeping.lock"

    def killed_after_renaming_its_pack() -> bool:
        names = pack_files(repo_dir)
        no_index = [n for n in names if n.endswith(".pack") and n[:-5] + ".idx" not in names]
        return bool(no_index) and any(n.startswith("tmp_gc_") for n in names)

    assert wait_for(killed_after_renaming_its_pack, timeout=60), pack_files(repo_dir)
    assert lock.read_bytes().strip()  # the killed housekeeper's pid
    assert_serves_everything(g, alice, path, work, "after-kill")
    again = gateway_cli(g, "repo", "gc", path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cleared the stale lock of housekeeper pid" in again.stdout
    assert "put in place the index of 1 pack(s) an interrupted gc left" in again.stdout
    assert len(packs(repo_dir)) == 1
    assert_serves_everything(g, alice, path, work, "after-gc")
    assert_clean_log(g.server_log())


def test_gc_off_leaves_packs_alone(private, work):
    g = private("gc_auto = false\ngc_auto_packs = 1\n")
    _, path, _ = seeded(g, work, pushes=4)
    assert len(packs(g.repo_dir(path))) >= 5
    assert "housekeeping" not in g.server_log()


def test_clone_during_repack_is_complete(private, work):
    g = private()
    alice, path, clone = seeded(g, work, pushes=2)
    for i in range(150):
        commit(clone, f"dir{i % 7}/f{i}.txt", f"line {i}\n" * (i % 30 + 1))
    g.git(alice, "push", "-q", "origin", "HEAD:main", cwd=clone)
    repo_dir = g.repo_dir(path)
    stop = threading.Event()
    runs: list[subprocess.CompletedProcess] = []

    def repack_again_and_again() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # A loose object each time, so that every run writes a new pack.
            subprocess.run(
                ["git", "hash-object", "-w", "--stdin"],
                input=f"loose {n}\n",
                cwd=repo_dir,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(gateway_cli(g, "repo", "gc", path))

    thread = threading.Thread(target=repack_again_and_again)
    thread.start()
    try:
        for i in range(8):
            copy = work / f"copy{i}"
            g.git(alice, "clone", "-q", g.url(path), str(copy))
            client_fsck(copy)
            assert local_git("rev-parse", "HEAD", cwd=copy).strip() == (
                local_git("rev-parse", "HEAD", cwd=clone).strip()
            )
            assert g.git(alice, "ls-remote", g.url(path)).stdout.count("refs/") == 4
    finally:
        stop.set()
        thread.join()
    assert len(runs) >= 2
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    assert sum("full repack" in run.stdout for run in runs) >= 2
    assert_serves_everything(g, alice, path, work, "mirror")
    assert_clean_log(g.server_log())


KILL_POINTS = [
    "write-pack",
    "write-index",
    "written",
    "pack-renamed",
    "installed",
    "removing-old",
    "prune-check",
    "refs-packed",
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_housekeeper_killed_anywhere_leaves_a_clean_repository(private, work, point):
    g = private("gc_prune_after = 0\n")
    alice, path, clone = seeded(g, work, pushes=3)
    # Something to prune: a branch pushed and deleted again.
    local_git("checkout", "-q", "-b", "gone", cwd=clone)
    commit(clone, "gone.txt", "unreachable soon\n")
    g.git(alice, "push", "-q", "origin", "gone", cwd=clone)
    g.git(alice, "push", "-q", "origin", ":gone", cwd=clone)
    repo_dir = g.repo_dir(path)
    before = bare_refs(repo_dir)

    killed = gateway_cli(g, "repo", "gc", path, fault=f"kill:{point}")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    assert bare_refs(repo_dir) == before
    assert_serves_everything(g, alice, path, work, "after-kill")

    again = gateway_cli(g, "repo", "gc", path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "cleared the stale lock of housekeeper pid" in again.stdout
    assert "Traceback" not in again.stdout + again.stderr
    assert len(packs(repo_dir)) == 1
    assert not [n for n in pack_files(repo_dir) if n.startswith("tmp_")]
    assert bare_refs(repo_dir) == before
    assert_serves_everything(g, alice, path, work, "after-gc")


def test_pruning_races_pushes_that_reuse_objects_about_to_go(private, work):
    """Each round: a branch is deleted while another push builds on its commit (a thin
    pack relying on it), and gc with no grace period runs all the while. A push may be
    refused; what is accepted is complete."""
    g = private("gc_prune_after = 0\n")
    alice, path, clone = seeded(g, work, pushes=1)
    repo_dir = g.repo_dir(path)
    stop = threading.Event()
    gc_runs: list[subprocess.CompletedProcess] = []

    def gc_loop() -> None:
        while not stop.is_set():
            gc_runs.append(gateway_cli(g, "repo", "gc", path))

    thread = threading.Thread(target=gc_loop)
    thread.start()
    accepted = []
    try:
        for i in range(8):
            local_git("checkout", "-q", "-B", f"old{i}", "main", cwd=clone)
            commit(clone, f"old{i}.txt", f"only on old{i}\n" * 20)
            g.git(alice, "push", "-q", "origin", f"old{i}", cwd=clone)
            commit(clone, f"new{i}.txt", f"builds on old{i}\n")
            results: dict[str, subprocess.CompletedProcess] = {}

            def push(name: str, *refspec: str, results=results) -> None:
                results[name] = g.git(alice, "push", "origin", *refspec, cwd=clone, check=False)

            pushes = [
                threading.Thread(target=push, args=("delete", f":old{i}")),
                threading.Thread(target=push, args=("build", f"HEAD:refs/heads/new{i}")),
            ]
            for t in pushes:
                t.start()
            for t in pushes:
                t.join()
            if results["build"].returncode == 0:
                accepted.append(f"refs/heads/new{i}")
    finally:
        stop.set()
        thread.join()
    assert gc_runs and all(run.returncode == 0 for run in gc_runs), [r.stdout for r in gc_runs]
    refs = bare_refs(repo_dir)
    assert set(accepted) <= set(refs)
    assert_serves_everything(g, alice, path, work, "mirror")
    # The last gc, with nothing racing it, prunes the deleted branches' leftovers.
    last = gateway_cli(g, "repo", "gc", path)
    assert last.returncode == 0
    assert_serves_everything(g, alice, path, work, "mirror-2")
    assert_clean_log(g.server_log())


def test_gc_and_fsck_by_hand(private, work):
    g = private()
    alice, path, _ = seeded(g, work, pushes=3)
    repo_dir = g.repo_dir(path)
    fsck_out = gateway_cli(g, "repo", "fsck", path)
    assert fsck_out.returncode == 0, fsck_out.stdout + fsck_out.stderr
    assert f"{path}: ok: " in fsck_out.stdout
    gc_out = gateway_cli(g, "repo", "gc", path)
    assert gc_out.returncode == 0, gc_out.stderr
    assert f"{path}: full repack: packs 4 -> 1, " in gc_out.stdout
    assert "refs packed" in gc_out.stdout and " s\n" in gc_out.stdout
    assert len(packs(repo_dir)) == 1
    everything = gateway_cli(g, "repo", "gc", "--all")
    assert (
        everything.returncode == 0 and f"{path}: nothing to do: packs 1 -> 1" in everything.stdout
    )
    assert gateway_cli(g, "repo", "fsck", "--all").returncode == 0
    usage = gateway_cli(g, "repo", "gc")
    assert usage.returncode == 2 and "--all" in usage.stderr
    missing = gateway_cli(g, "repo", "fsck", "nosuch/repo")
    assert missing.returncode == 1 and missing.stderr.startswith("ERROR: ")
    assert_serves_everything(g, alice, path, work, "mirror")


def test_fsck_finds_a_damaged_object(private, work):
    g = private()
    _, path, _ = seeded(g, work, pushes=1)
    assert gateway_cli(g, "repo", "gc", path).returncode == 0
    pack = next((g.repo_dir(path) / "objects" / "pack").glob("*.pack"))
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(pack, 0o644)
    pack.write_bytes(bytes(data))
    out = gateway_cli(g, "repo", "fsck", path)
    assert out.returncode == 1
    assert "checksum does not match" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_pack_whose_index_is_damaged_is_left_and_named(private, work):
    g = private()
    alice, path, clone = seeded(g, work, pushes=3)
    repo_dir = g.repo_dir(path)
    # A pack of its own holding an object no ref needs, then its index damaged.
    extra = work / "extra"
    extra.mkdir()
    local_git("init", "-q", cwd=extra)
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        input="orphan\n",
        cwd=extra,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    made = subprocess.run(
        ["git", "pack-objects", str(repo_dir / "objects" / "pack" / "pack")],
        input=blob + "\n",
        cwd=extra,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    idx = repo_dir / "objects" / "pack" / f"pack-{made}.idx"
    os.chmod(idx, 0o644)
    idx.write_bytes(idx.read_bytes()[:-5] + b"xxxxx")
    out = gateway_cli(g, "repo", "gc", path)
    assert out.returncode == 1
    lines = [line for line in out.stdout.splitlines() if f"pack-{made}" in line]
    assert len(lines) == 1 and "damaged" in lines[0] and "left as it is" in lines[0]
    assert (repo_dir / "objects" / "pack" / f"pack-{made}.pack").exists()
    assert idx.exists()
    refs = g.git(alice, "ls-remote", g.url(path)).stdout
    assert "refs/heads/main" in refs
    # A pack whose index is missing (not a push moving in: it is hours old).
    idx.rename(repo_dir / "damaged.idx")
    os.utime(repo_dir / "objects" / "pack" / f"pack-{made}.pack", (0, 0))
    out = gateway_cli(g, "repo", "gc", path)
    assert out.returncode == 1
    lines = [line for line in out.stdout.splitlines() if f"pack-{made}" in line]
    assert len(lines) == 1 and "has no index: left as it is" in lines[0], out.stdout
    assert (repo_dir / "objects" / "pack" / f"pack-{made}.pack").exists()
    assert_serves_everything(g, alice, path, work, "mirror")


def test_a_full_disk_changes_nothing(private, work):
    g = private()
    alice, path, _ = seeded(g, work, pushes=3)
    repo_dir = g.repo_dir(path)
    before = pack_files(repo_dir)
    out = gateway_cli(g, "repo", "gc", path, fault="enospc:write-pack")
    assert out.returncode == 1
    assert f"{path}: ERROR: gc stopped, nothing changed: no space left on device" in out.stdout
    assert pack_files(repo_dir) == before
    out = gateway_cli(g, "repo", "gc", path, fault="enospc:write-index")
    assert out.returncode == 1 and "no space left on device" in out.stdout
    assert pack_files(repo_dir) == before
    assert_serves_everything(g, alice, path, work, "mirror")


def test_not_a_repository_and_a_busy_one(private, work):
    g = private()
    _, path, _ = seeded(g, work, pushes=1)
    repo_dir = g.repo_dir(path)
    with open(repo_dir / "gateway-housekeeping.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = gateway_cli(g, "repo", "gc", path)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert busy.returncode == 1 and "another housekeeper" in busy.stdout
    # A stale lock: a pid written by a housekeeper that was killed.
    (repo_dir / "gateway-housekeeping.lock").write_text("999999999\n")
    stale = gateway_cli(g, "repo", "gc", path)
    assert stale.returncode == 0
    assert stale.stdout.count("cleared the stale lock of housekeeper pid 999999999") == 1
    other = g.repo(path.split("/")[0])
    (g.repo_dir(other) / "objects").rename(g.repo_dir(other) / "not-objects")
    out = gateway_cli(g, "repo", "gc", "--all")
    assert out.returncode == 1
    assert f"{other}: ERROR: not a Git repository" in out.stdout
    assert f"{path}: " in out.stdout  # the others are still done
    out = gateway_cli(g, "repo", "fsck", other)
    assert out.returncode == 1 and "not a Git repository" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_a_push_of_a_long_history_has_its_commit_lists_made_in_the_background(private, work):
    """Issue 16 item 5: after a push of a whole history (no repack due: one pack), the
    server's housekeeping makes every commit's kept list, so the first clone reads them
    instead of diffing trees at request time."""
    from gateway.git.housekeeping.scheduler import LISTS_AFTER_COMMITS
    from gateway.git.upload.commitobjects import CommitObjects

    g = private()
    alice = g.user()
    path = g.repo(g.workspace((alice, "write")))
    history = work / "history"
    local_git("init", "-q", "-b", "main", str(history), cwd=work)
    commits = LISTS_AFTER_COMMITS + 20
    stream = "".join(
        f"commit refs/heads/main\nmark :{n + 1}\n"
        f"committer A <a@example.com> {1700000000 + n} +0000\ndata 3\nc{n % 10}\n"
        + (f"from :{n}\n" if n else "")
        + f"M 100644 inline d{n % 7}/f{n % 13}.txt\ndata {len(str(n)) + 1}\n{n}\n\n"
        for n in range(commits)
    )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=history, input=stream.encode(), check=True
    )
    g.git(alice, "push", "-q", g.url(path), "main", cwd=history)
    repo_dir = g.repo_dir(path)
    assert len(packs(repo_dir)) == 1  # no repack is due: the run is for the lists
    all_commits = local_git("rev-list", "--all", cwd=repo_dir).split()
    assert len(all_commits) == commits

    def listed() -> bool:
        kept = CommitObjects(str(repo_dir))
        return all(kept.get(c.encode()) is not None for c in all_commits)

    assert wait_for(listed, timeout=60)
    assert "event=housekeeping.done" in g.server_log()
    assert_serves_everything(g, alice, path, work, "mirror")
