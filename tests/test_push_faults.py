"""The push pipeline under faults (SPEC §7): concurrent pushes to one branch, clients and
servers killed half-way through a pack, size limits, malformed protocol input and hooks
that run past their time limit.

What is checked is what a user or an operator can see: what `git push` prints and its
exit status, the refs of the bare repository, `git fsck --full`, no quarantine
(`objects/incoming-*`) or lock file left behind, no worker outliving the server, and no
traceback in the server's log. Nothing here patches the server.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from dulwich.objects import Blob, Commit, Tag, Tree

from testkit import Gateway, User, git_workers, local_git, pkt, unique, wait_for
from testkit.localgit import commit, fsck
from testkit.pushes import (
    assert_clean_log,
    bare_refs,
    has_object,
    log_since,
    no_quarantine_soon,
    no_ref_locks_soon,
    quarantines,
    ref_locks,
    seed,
)
from testkit.receivepack import (
    ZERO,
    commands,
    make_commit,
    new_history,
    pack_of,
    receive_pack,
    report_of,
)

MiB = 1024 * 1024
REJECTED = ("[remote rejected]", "[rejected]", "failed to update ref", "fetch first")


# --- helpers -------------------------------------------------------------------------


def tmp_pack_size(repo_dir: Path, ignore: set[str] | frozenset = frozenset()) -> int:
    """Bytes of pack received so far into a quarantine (0 when none is being received)."""
    sizes = []
    for path in (repo_dir / "objects").glob("incoming-*/tmp_pack_*"):
        if path.parent.name in ignore:
            continue
        try:
            sizes.append(path.stat().st_size)
        except OSError:
            pass
    return max(sizes, default=0)


def quarantine_pack_done(repo_dir: Path) -> bool:
    return bool(list((repo_dir / "objects").glob("incoming-*/pack/*.pack")))


def workers_for(repo_dir: Path) -> list[int]:
    """Git worker processes serving this repository."""
    return git_workers(repo_dir)


def worker_pids(repo_dir: Path) -> set[int]:
    pids = set(workers_for(repo_dir))
    for name in quarantines(repo_dir):  # incoming-PID-*
        pid = name.split("-")[1]
        if pid.isdigit():
            pids.add(int(pid))
    return pids


def process_state(pid: int) -> str | None:
    """The state letter from /proc (Z for a zombie), None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def db_integrity(g: Gateway) -> str:
    """SQLite's integrity check of the gateway's file; on PostgreSQL (which checks its own
    pages) that the database still answers."""
    if g.database_url:
        return "ok" if g.sql("SELECT count(*) FROM audit") else "no answer"
    db = g.data / "gateway.db"
    result = subprocess.run(
        ["sqlite3", str(db), "PRAGMA integrity_check;"], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0 and "not found" in result.stderr:
        with sqlite3.connect(db) as conn:  # no sqlite3 binary: the same check from Python
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
    return (result.stdout + result.stderr).strip()


def git_env(g: Gateway, user: User) -> dict:
    return {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(user.key))}


def start_push(g: Gateway, user: User, clone: Path, *args: str) -> subprocess.Popen:
    """`git push` in its own process group, so that it can be killed with its ssh child."""
    return subprocess.Popen(
        ["git", "push", *args],
        cwd=clone,
        env=git_env(g, user),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as timed_out:
        kill_group(proc)
        _, err = proc.communicate()
        raise AssertionError(
            f"git push still running after {timeout} s: {err.decode(errors='replace')}"
        ) from timed_out
    return proc.returncode, err.decode(errors="replace")


# --- 1. concurrency ---------------------------------------------------------------------

CLIENTS = 10
# Measured on the 2-core test machine: 50 rounds took 257 s (437 s when every client
# also fetched through the gateway), 30 rounds 203 s with other tests running beside. Each
# git request over SSH costs ~0.4 s of CPU (handshake + worker start), so a round of 10
# concurrent pushes takes 4.5-7 s. The issue asks for 50; PUSH_FAULTS_ROUNDS=N to change.
ROUNDS = int(os.environ.get("PUSH_FAULTS_ROUNDS", "50"))


def test_concurrent_pushes_to_one_branch_lose_no_update(private, work):
    """10 clones push to main at once, 50 times: exactly one push per round is accepted,
    every accepted commit is in main's history, every other push is told it was rejected."""
    # A worker ready for each client, so that the ten pushes overlap (with one spare,
    # the first push is done before the last worker has started, and every loser sees
    # the new tip and gives up in its own client: the server's compare-and-swap is
    # what this test is for).
    gw = private(f"spare_workers = {CLIENTS}\n")
    started = time.monotonic()
    offset = len(gw.server_log())
    writers = [gw.user() for _ in range(3)]
    ws = gw.workspace(*[(w, "write") for w in writers])
    path = gw.repo(ws)
    repo_dir = gw.repo_dir(path)
    seed_tree = work / "seed"
    gw.git(writers[0], "clone", gw.url(path), str(seed_tree))
    base = commit(seed_tree, "README.md", "hello\n")
    gw.git(writers[0], "push", "origin", "HEAD:main", cwd=seed_tree)

    clients = [(writers[i % len(writers)], work / f"c{i}") for i in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda c: gw.git(c[0], "clone", "-q", gw.url(path), str(c[1])), clients))

    accepted: list[tuple[int, int, str]] = []
    refused: list[tuple[int, int, str]] = []
    problems: list[str] = []
    barrier_passed: list[float] = []
    server_side = 0
    push_seconds = 0.0
    for rnd in range(ROUNDS):
        barrier = threading.Barrier(
            CLIENTS, timeout=120, action=lambda: barrier_passed.append(time.monotonic())
        )

        def one_client(i: int, rnd: int = rnd, barrier: threading.Barrier = barrier):
            user, tree = clients[i]
            try:
                # Catching up reads the bare repository directly: only the pushes go
                # through the gateway (fetching through it too made 50 rounds take 7 min).
                local_git(
                    "fetch",
                    "-q",
                    str(repo_dir),
                    "+refs/heads/main:refs/remotes/origin/main",
                    cwd=tree,
                )
                local_git("reset", "-q", "--hard", "origin/main", cwd=tree)
                sha = commit(
                    tree,
                    f"client{i}.txt",
                    f"round {rnd} client {i}\n",
                    message=f"round {rnd} client {i}",
                )
            except BaseException:
                barrier.abort()
                raise
            barrier.wait()
            result = gw.git(user, "push", "origin", "main", cwd=tree, check=False)
            return sha, result

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(one_client, range(CLIENTS)))
        push_seconds += time.monotonic() - (barrier_passed[-1] if barrier_passed else started)
        winners = 0
        for i, (sha, result) in enumerate(results):
            if result.returncode == 0:
                winners += 1
                accepted.append((rnd, i, sha))
                if "rejected" in result.stderr:
                    problems.append(f"round {rnd} client {i}: exit 0 but: {result.stderr}")
            else:
                refused.append((rnd, i, sha))
                if "[remote rejected]" in result.stderr:
                    server_side += 1  # lost the compare-and-swap on the server
                if not any(marker in result.stderr for marker in REJECTED):
                    problems.append(
                        f"round {rnd} client {i}: exit {result.returncode} "
                        f"without a rejection: {result.stderr}"
                    )
                if "Traceback" in result.stderr or "internal error" in result.stderr:
                    problems.append(f"round {rnd} client {i}: {result.stderr}")
        if winners != 1:
            # All clients started from the same tip: one compare-and-swap wins, the rest lose.
            problems.append(f"round {rnd}: {winners} pushes accepted, expected exactly 1")

    history = set(local_git("rev-list", "main", cwd=repo_dir).split())
    lost = [(rnd, i, sha) for rnd, i, sha in accepted if sha not in history]
    wrongly_in = [(rnd, i, sha) for rnd, i, sha in refused if sha in history]
    assert not lost, f"accepted pushes missing from main: {lost}"
    assert not wrongly_in, f"rejected pushes found in main: {wrongly_in}"
    assert not problems, "\n".join(problems[:20])
    # Not every loser was turned away by its own client (`fetch first`): the server's
    # compare-and-swap decided some of them.
    assert server_side > 0
    assert base in history
    # One commit per round on top of the first: a linear history with no update lost.
    assert len(history) == ROUNDS + 1, (len(history), len(accepted))
    assert bare_refs(repo_dir)["refs/heads/main"] == accepted[-1][2]
    user, tree = clients[0]
    gw.git(user, "fetch", "-q", "origin", cwd=tree)
    assert local_git("rev-parse", "origin/main", cwd=tree).strip() == accepted[-1][2]
    assert not quarantines(repo_dir)
    assert no_ref_locks_soon(repo_dir), ref_locks(repo_dir)
    fsck(gw, path)
    assert_clean_log(log_since(gw, offset))
    elapsed = time.monotonic() - started
    print(
        f"\n{ROUNDS} rounds x {CLIENTS} clients: {elapsed:.1f} s ({push_seconds:.1f} s pushing), "
        f"{len(accepted)} accepted, {len(refused)} rejected ({server_side} by the server)"
    )


# --- 2. client killed mid-pack ----------------------------------------------------------


def test_client_killed_mid_pack_leaves_nothing_behind(gw, work):
    """`git push` (with its ssh) is killed while the pack is on the wire, as Ctrl-C or a
    dropped connection would: the ref stays, the quarantine goes away once the worker sees
    the connection gone, the repository is sound and the next push works."""
    offset = len(gw.server_log())
    alice, path, clone, first = seed(gw, work)
    repo_dir = gw.repo_dir(path)
    before = bare_refs(repo_dir)
    hits, leftovers, survivors = [], [], []
    for attempt in range(4):
        earlier = set(quarantines(repo_dir))
        big = commit(clone, f"big{attempt}.bin", os.urandom(8 * MiB))
        proc = start_push(gw, alice, clone, "origin", "main")
        # Kill as soon as part of the pack sits in a quarantine: mid-pack for sure.
        seen = wait_for(
            lambda earlier=earlier, proc=proc: (
                tmp_pack_size(repo_dir, earlier) > 64 * 1024 or proc.poll() is not None
            ),
            30,
            interval=0.005,
        )
        midway = seen and proc.poll() is None and tmp_pack_size(repo_dir, earlier) > 0
        kill_group(proc)
        proc.communicate()
        hits.append(midway)
        if midway:
            assert bare_refs(repo_dir) == before, f"attempt {attempt}"
            assert not has_object(repo_dir, big)
        else:  # the push finished before the kill: then it must be complete
            before = bare_refs(repo_dir)
        assert no_ref_locks_soon(repo_dir), ref_locks(repo_dir)
        fsck(gw, path)
        if not no_quarantine_soon(repo_dir, 5):
            leftovers.append((attempt, set(quarantines(repo_dir)) - earlier))
        if not wait_for(lambda: not workers_for(repo_dir), 1):
            survivors.append((attempt, workers_for(repo_dir)))
    assert any(hits), "no attempt was killed in the middle of the pack"
    # The next push works (even with a stuck worker around).
    tip = commit(clone, "after.txt", "after\n")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    assert bare_refs(repo_dir)["refs/heads/main"] == tip
    fsck(gw, path)
    assert_clean_log(log_since(gw, offset))
    assert not survivors, f"workers still running 6 s after their client was killed: {survivors}"
    assert not leftovers, f"quarantines left 5 s after the client was killed: {leftovers}"


# --- 3. server killed mid-push ----------------------------------------------------------

KILL_POINTS = [
    "quarantine created",
    "pack half received",
    "pack fully received",
    "pack started",
    "after 1.5 s",
]


def test_server_killed_mid_push_recovers(private, work):
    """SIGKILL to `gateway serve` at five points of a push, then a restart: main holds the
    old or the new tip, the repository and the database are sound, nothing is left over,
    no worker outlived the server, and the next push works."""
    g = private()
    alice, path, clone, first = seed(g, work)
    repo_dir = g.repo_dir(path)
    size = 6 * MiB
    for rnd, point in enumerate(KILL_POINTS):
        old = bare_refs(repo_dir)["refs/heads/main"]
        new = commit(clone, f"big{rnd}.bin", os.urandom(size))
        proc = start_push(g, alice, clone, "origin", "main")
        condition = {
            "quarantine created": lambda: bool(quarantines(repo_dir)),
            "pack started": lambda: tmp_pack_size(repo_dir) > 0,
            "pack half received": lambda: tmp_pack_size(repo_dir) > size // 2,
            "pack fully received": lambda: quarantine_pack_done(repo_dir),
            "after 1.5 s": lambda: False,
        }[point]
        wait_for(
            lambda condition=condition, proc=proc: condition() or proc.poll() is not None,
            1.5 if point == "after 1.5 s" else 30,
            interval=0.002,
        )
        pids = worker_pids(repo_dir)
        g.proc.kill()
        g.proc.wait()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.communicate()
            pytest.fail(f"round {rnd} ({point}): git push hung after the server died")
        # PDEATHSIG: no worker outlives the server. Once the pack is in, a fast machine
        # may finish the push before the worker is looked for.
        if point not in ("after 1.5 s", "pack fully received"):
            assert pids, f"round {rnd} ({point}): no worker seen while the push ran"
        assert wait_for(lambda pids=pids: all(process_state(p) in (None, "Z") for p in pids), 5), (
            f"round {rnd} ({point}): workers {[(p, process_state(p)) for p in pids]} "
            "outlived the server"
        )
        assert wait_for(lambda: not workers_for(repo_dir), 5), workers_for(repo_dir)
        value = bare_refs(repo_dir).get("refs/heads/main")
        assert value in (old, new), f"round {rnd} ({point}): main = {value}"
        # As a supervisor would, restart once the old processes are gone (reaped).
        wait_for(lambda pids=pids: all(process_state(p) is None for p in pids), 10)
        g.start()
        assert not quarantines(repo_dir), f"round {rnd} ({point})"
        assert no_ref_locks_soon(repo_dir), (rnd, point, ref_locks(repo_dir))
        assert bare_refs(repo_dir).get("refs/heads/main") == value
        fsck(g, path)
        assert db_integrity(g) == "ok"
        # The next push works, whatever the killed one left.
        tip = commit(clone, f"after{rnd}.txt", f"after {rnd}\n")
        g.git(alice, "push", "origin", "main", cwd=clone)
        assert bare_refs(repo_dir)["refs/heads/main"] == tip
        fsck(g, path)
    assert "Traceback" not in g.server_log()
    g.stop()
    assert db_integrity(g) == "ok"


def test_restart_removes_a_quarantine_whose_pid_is_in_use_again(private, work):
    """At start-up no push of this server can be running, so every quarantine is a
    leftover, also one whose pid now belongs to another process, as happens when pids
    start over (a reboot, a new container). Left there, nothing ever removes it: the
    sweep before each push skips live pids too."""
    g = private()
    alice, path, clone, first = seed(g, work)
    repo_dir = g.repo_dir(path)
    g.stop()
    leftover = repo_dir / "objects" / f"incoming-{os.getpid()}-killed"
    (leftover / "pack").mkdir(parents=True)
    (leftover / "tmp_pack_abc").write_bytes(os.urandom(4096))
    g.start()
    commit(clone, "after.txt", "after\n")
    g.git(alice, "push", "origin", "main", cwd=clone)
    assert not quarantines(repo_dir)


# --- 4. size limit ----------------------------------------------------------------------


def test_push_over_max_push_bytes_is_refused(private, work):
    """With `max_push_bytes = 200000`, a 1 MB push is refused and git says why."""
    g = private("max_push_bytes = 200000\n")
    alice, path, clone, first = seed(g, work)
    repo_dir = g.repo_dir(path)
    before = bare_refs(repo_dir)
    big = commit(clone, "big.bin", os.urandom(MiB))
    result = g.git(alice, "push", "origin", "main", cwd=clone, check=False)
    assert result.returncode != 0
    # error: remote unpack failed: pack exceeds maximum input size of 200000 bytes
    assert re.search(
        r"remote unpack failed: .*(maximum|limit|too (large|big)).*200000", result.stderr
    ), result.stderr
    assert "[remote rejected] main -> main" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert bare_refs(repo_dir) == before
    assert not has_object(repo_dir, big)
    assert no_quarantine_soon(repo_dir), quarantines(repo_dir)
    fsck(g, path)
    # A small push still goes through.
    local_git("reset", "-q", "--hard", first, cwd=clone)
    small = commit(clone, "small.txt", "small\n")
    g.git(alice, "push", "origin", "main", cwd=clone)
    assert bare_refs(repo_dir)["refs/heads/main"] == small
    fsck(g, path)
    assert "Traceback" not in g.server_log()


# --- 5. bad protocol input --------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_repo(gw, tmp_path_factory):
    """One repository for the protocol-level tests: each leaves it as it found it, then
    pushes one normal commit on top."""
    alice, path, clone, first = seed(gw, tmp_path_factory.mktemp("raw"))
    commit(clone, "second.txt", "second\n")
    gw.git(alice, "push", "origin", "main", cwd=clone)
    return alice, path, clone


@pytest.fixture
def raw(gw, raw_repo):
    """(user, path, first, second, untouched): `second` is main's tip, `first` its parent;
    untouched(result, *shas) checks that nothing changed and that git can still push."""
    alice, path, clone = raw_repo
    repo_dir = gw.repo_dir(path)
    second = local_git("rev-parse", "main", cwd=repo_dir).strip()
    first = local_git("rev-parse", "main~1", cwd=repo_dir).strip()
    before = bare_refs(repo_dir)
    offset = len(gw.server_log())

    def untouched(result: subprocess.CompletedProcess, *absent: bytes | str) -> None:
        err = result.stderr.decode(errors="replace")
        assert "Traceback" not in err and "internal error" not in err, err
        assert bare_refs(repo_dir) == before
        assert no_quarantine_soon(repo_dir), quarantines(repo_dir)
        for sha in absent:  # nothing of a refused push entered the store
            assert not has_object(repo_dir, sha), sha
        assert no_ref_locks_soon(repo_dir), ref_locks(repo_dir)
        fsck(gw, path)
        assert_clean_log(log_since(gw, offset))
        tip = commit(clone, unique("next") + ".txt")
        gw.git(alice, "push", "origin", "main", cwd=clone)
        assert bare_refs(repo_dir)["refs/heads/main"] == tip
        fsck(gw, path)

    return alice, path, first, second, untouched


@pytest.mark.parametrize(
    "body",
    [
        b"this is not a pkt-line at all\n" * 4,
        b"zzzz" + os.urandom(200),
        pkt(b"not-a-sha also-not refs/heads/main\x00report-status\n") + b"0000",
        b"ffff" + b"short",
        pkt(b"") + b"0000",
    ],
    ids=["text", "bad-length", "bad-command", "long-length-then-eof", "empty-pkt"],
)
def test_garbage_instead_of_commands(gw, raw, body):
    alice, path, first, second, untouched = raw
    result = receive_pack(gw, alice, path, body)
    out = result.stdout
    assert out.startswith(b"00") and b"refs/heads/main" in out  # it advertised, then gave up
    assert b"\nok " not in out and b"ok refs/" not in out
    untouched(result)


@pytest.mark.parametrize("cut", ["header-only", "mid-object", "missing-trailer"])
def test_truncated_pack(gw, raw, cut):
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    pack = pack_of(*objects)
    data = {
        "header-only": pack[:12],
        "mid-object": pack[: len(pack) // 2],
        "missing-trailer": pack[:-20],
    }[cut]
    result = receive_pack(gw, alice, path, commands((ZERO, c.id, b"refs/heads/truncated")) + data)
    report = report_of(result.stdout)
    if report:  # a report is optional once the client has hung up, but then it says no
        assert report.get("unpack") != "ok", report
        assert report.get("refs/heads/truncated", "").startswith("ng"), report
    untouched(result, *(o.id for o in objects))


def test_pack_with_bad_checksum(gw, raw):
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    pack = bytearray(pack_of(*objects))
    pack[-1] ^= 0xFF
    result = receive_pack(
        gw, alice, path, commands((second.encode(), c.id, b"refs/heads/main")) + bytes(pack)
    )
    report = report_of(result.stdout)
    assert report.get("unpack") not in (None, "ok"), report
    assert report.get("refs/heads/main", "").startswith("ng"), report
    untouched(result, *(o.id for o in objects))


def test_pack_with_corrupt_object_data(gw, raw):
    """A checksum that matches bytes that do not inflate: the pack is refused as well."""
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    pack = bytearray(pack_of(*objects)[:-20])
    pack[len(pack) // 2] ^= 0xFF
    pack += hashlib.sha1(pack).digest()
    result = receive_pack(
        gw, alice, path, commands((second.encode(), c.id, b"refs/heads/main")) + bytes(pack)
    )
    report = report_of(result.stdout)
    assert report.get("refs/heads/main", "").startswith("ng"), report
    untouched(result, c.id)


class _RawTree(Blob):
    """A tree object with whatever bytes it is given, parseable or not."""

    type_num = Tree.type_num
    type_name = Tree.type_name


def test_pack_with_a_malformed_tree_is_refused(gw, raw):
    """Even a tree that no new tip reaches: `git fsck --full` would report it broken."""
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    broken = _RawTree.from_string(b"100644 no-nul-and-no-sha")
    result = receive_pack(
        gw,
        alice,
        path,
        commands((second.encode(), c.id, b"refs/heads/main")) + pack_of(*objects, broken),
    )
    report = report_of(result.stdout)
    assert report.get("unpack") not in (None, "ok"), report
    assert report.get("refs/heads/main", "").startswith("ng"), report
    untouched(result, c.id, broken.id)


@pytest.mark.parametrize(
    "ref",
    [
        b"refs/heads/../x",
        b"refs/heads/a\x01b",
        b"HEAD",
        b"refs/heads/x.lock",
        b"refs/heads/a..b",
        b"refs/heads/",
        b"main",
        b"refs/heads/sp\x7fce",
    ],
    ids=[
        "dotdot",
        "control",
        "HEAD",
        "lock",
        "double-dot",
        "trailing-slash",
        "not-under-refs",
        "del",
    ],
)
def test_funny_refnames_are_refused(gw, raw, ref):
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    result = receive_pack(gw, alice, path, commands((ZERO, c.id, ref)) + pack_of(*objects))
    report = report_of(result.stdout)
    assert report.get("unpack") == "ok", report
    assert report.get(ref.decode(errors="replace")) == "ng funny refname", report
    untouched(result, *(o.id for o in objects))


def test_deleting_a_missing_ref(gw, raw):
    alice, path, first, second, untouched = raw
    result = receive_pack(gw, alice, path, commands((first.encode(), ZERO, b"refs/heads/nope")))
    report = report_of(result.stdout)
    assert report.get("refs/heads/nope") == "ng no such ref", report
    untouched(result)


def test_stale_old_value_is_refused(gw, raw):
    """The client says main is at `first`; it is at `second`: compare-and-swap fails."""
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    result = receive_pack(
        gw, alice, path, commands((first.encode(), c.id, b"refs/heads/main")) + pack_of(*objects)
    )
    report = report_of(result.stdout)
    assert report.get("unpack") == "ok", report
    assert report.get("refs/heads/main") == "ng failed to update ref", report
    untouched(result)


def test_stale_old_value_leaves_no_objects_behind(gw, raw):
    """SPEC §7: a rejected push changes nothing, `no object of it becomes ... visible`."""
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    result = receive_pack(
        gw, alice, path, commands((first.encode(), c.id, b"refs/heads/main")) + pack_of(*objects)
    )
    assert report_of(result.stdout).get("refs/heads/main") == "ng failed to update ref"
    untouched(result, *(o.id for o in objects))


def test_stale_delete_is_refused(gw, raw):
    alice, path, first, second, untouched = raw
    # The default branch's rule would refuse the deletion before its old value is
    # compared: this is about the comparison, so the rule goes first.
    gw.cli("branch-rule", "remove", path, "main")
    result = receive_pack(gw, alice, path, commands((first.encode(), ZERO, b"refs/heads/main")))
    report = report_of(result.stdout)
    assert report.get("refs/heads/main") == "ng failed to update ref", report
    untouched(result)


@pytest.mark.parametrize("missing", ["tree", "parent", "blob", "tagged"])
def test_missing_objects_are_refused(gw, raw, missing):
    """The new tip needs an object that is neither in the pack nor in the repository."""
    alice, path, first, second, untouched = raw
    blob = Blob.from_string(os.urandom(16).hex().encode())
    tree = Tree()
    tree.add(b"f.txt", 0o100644, blob.id)
    ghost = os.urandom(20).hex().encode()
    ref = b"refs/heads/incomplete"
    if missing == "tree":
        c = make_commit(tree.id, [second.encode()])
        sent, new = [c], c
    elif missing == "parent":
        c = make_commit(tree.id, [ghost])
        sent, new = [c, tree, blob], c
    elif missing == "blob":
        c = make_commit(tree.id, [second.encode()])
        sent, new = [c, tree], c
    else:
        c = make_commit(tree.id, [second.encode()])  # not sent
        tag = Tag()
        tag.object = (Commit, c.id)
        tag.name = b"v-missing"
        tag.tagger = b"Raw <raw@example.com>"
        tag.tag_time, tag.tag_timezone = int(time.time()), 0
        tag.message = b"tag of a missing commit\n"
        sent, new, ref = [tag, tree, blob], tag, b"refs/tags/v-missing"
    result = receive_pack(gw, alice, path, commands((ZERO, new.id, ref)) + pack_of(*sent))
    report = report_of(result.stdout)
    assert report.get(ref.decode()) == "ng missing necessary objects", report
    untouched(result, *(o.id for o in sent))


def test_same_ref_twice_in_one_push(gw, raw):
    alice, path, first, second, untouched = raw
    c, objects = new_history(second)
    result = receive_pack(
        gw,
        alice,
        path,
        commands(
            (second.encode(), c.id, b"refs/heads/main"),
            (second.encode(), first.encode(), b"refs/heads/main"),
            caps=b"report-status atomic",
        )
        + pack_of(*objects),
    )
    report = report_of(result.stdout)
    assert report.get("refs/heads/main", "").startswith("ng"), report
    untouched(result, c.id)


def test_branch_pointing_at_a_blob_is_refused(gw, raw):
    alice, path, first, second, untouched = raw
    blob = Blob.from_string(os.urandom(16).hex().encode())
    result = receive_pack(
        gw, alice, path, commands((ZERO, blob.id, b"refs/heads/blobby")) + pack_of(blob)
    )
    report = report_of(result.stdout)
    assert report.get("refs/heads/blobby", "").startswith("ng"), report
    untouched(result, blob.id)


def test_bad_and_good_commands_in_one_push(gw, raw):
    """Without --atomic each ref gets its own verdict: the good one lands, the bad do not."""
    alice, path, first, second, untouched_unused = raw
    repo_dir = gw.repo_dir(path)
    name = unique("b").encode()
    c, objects = new_history(second)
    result = receive_pack(
        gw,
        alice,
        path,
        commands(
            (ZERO, c.id, b"refs/heads/good-" + name),
            (ZERO, c.id, b"refs/heads/bad..name"),
            (first.encode(), ZERO, b"refs/heads/ghost-" + name),
        )
        + pack_of(*objects),
    )
    report = report_of(result.stdout)
    good, ghost = f"refs/heads/good-{name.decode()}", f"refs/heads/ghost-{name.decode()}"
    assert report == {
        "unpack": "ok",
        good: "ok",
        "refs/heads/bad..name": "ng funny refname",
        ghost: "ng no such ref",
    }, report
    assert bare_refs(repo_dir)[good] == c.id.decode()
    assert "refs/heads/bad..name" not in bare_refs(repo_dir)
    assert not quarantines(repo_dir)
    fsck(gw, path)


# --- 6. hooks past their time limit -------------------------------------------------------


def test_pre_receive_past_hook_timeout_is_stopped(private, work):
    g = private("hook_timeout = 2\n")
    alice, path, clone, first = seed(g, work)
    pidfile = g.root / "hook.pid"
    hook = g.root / "hooks" / "pre-receive"
    hook.parent.mkdir(parents=True, exist_ok=True)
    hook.write_text(f"#!/bin/sh\necho 'checking slowly'\necho $$ > {pidfile}\nexec sleep 30\n")
    hook.chmod(0o755)
    repo_dir = g.repo_dir(path)
    before = bare_refs(repo_dir)
    new = commit(clone, "slow.txt", "slow\n")
    started = time.monotonic()
    result = g.git(alice, "push", "origin", "main", cwd=clone, check=False)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert elapsed < 10, f"refused after {elapsed:.1f} s"
    assert "remote: checking slowly" in result.stderr, result.stderr
    assert re.search(r"took longer than 2 ?s", result.stderr), result.stderr
    assert "[remote rejected] main -> main (pre-receive hook declined)" in result.stderr
    assert bare_refs(repo_dir) == before
    assert not has_object(repo_dir, new)
    assert no_quarantine_soon(repo_dir)
    fsck(g, path)
    # The hook (now `sleep 30`) was stopped, not left running.
    pid = int(pidfile.read_text())
    assert wait_for(lambda: not Path(f"/proc/{pid}").exists(), 2), f"hook {pid} still runs"


def test_hook_timeout_holds_when_the_hook_leaves_a_child_behind(private, work):
    """A hook that starts a background job in a session of its own (which keeps the
    output pipe open) and then hangs: the time limit must still end the push."""
    g = private("hook_timeout = 2\n")
    hooks_dir = g.root / "hooks"
    hooks_dir.mkdir(parents=True, exist_ok=True)
    alice, path, clone, first = seed(g, work)
    pidfile = g.root / "daemon.pid"
    hook = hooks_dir / "pre-receive"
    hook.write_text(f"#!/bin/sh\nsetsid sh -c 'echo $$ > {pidfile}; exec sleep 15' &\nsleep 30\n")
    hook.chmod(0o755)
    repo_dir = g.repo_dir(path)
    before = bare_refs(repo_dir)
    commit(clone, "slow.txt", "slow\n")
    started = time.monotonic()
    try:
        result = g.git(alice, "push", "origin", "main", cwd=clone, check=False)
        elapsed = time.monotonic() - started
    finally:
        if wait_for(pidfile.exists, 2):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    assert result.returncode != 0
    assert elapsed < 10, f"refused after {elapsed:.1f} s: {result.stderr}"
    assert "took longer than 2" in result.stderr, result.stderr
    assert bare_refs(repo_dir) == before
