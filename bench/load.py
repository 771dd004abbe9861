"""The load rows of bench/compare.py (group `load`, or `--load`): many clients at once.

N clients (8, then 32) each run a loop of the four requests a busy server sees most,
for a fixed time against one side, then the other:

- `git ls-remote URL`;
- an up-to-date `git fetch` into the client's own clone;
- an incremental fetch: a fresh copy of the cached `base` clone (the repository without
  its last INCREMENTAL commits) fetches those commits, so every one is the same work;
- `git clone --depth 1`.

Client i starts the loop at request i % 4, so the mix is the same at every moment. The
clients' repositories borrow the cached repository's objects (objects/info/alternates):
only the clients' git state is copied per request, and the work on both servers is
identical (their repositories are byte-identical copies). Each client logs in with one
of ACCOUNTS accounts, as users do; the gateway's per-account cap (16 requests at once by
default) is a setting for one user's burst, not for a crowd of users.

Printed per N and side: requests per second (completed requests / wall time), p50 and p99
latency, server CPU seconds per request (counted by the subreaper: bench/subreaper.py),
the clients' CPU per request (git and ssh of every request, and this process: they use
the same cores as the server, so the reader can judge how much was left to it), the
server's peak memory and the failed requests (each failure also fails the run).
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

KINDS = ("ls-remote", "up-to-date fetch", "incremental fetch", "clone --depth 1")
CLIENTS = (8, 32)
ACCOUNTS = 4


def borrowing_copy(clone: Path, dest: Path, url: str) -> None:
    """A client repository with `clone`'s refs and config whose objects are `clone`'s
    (alternates): what a real clone holds, at the cost of copying a few small files."""
    git = clone / ".git"
    shutil.copytree(git, dest / ".git", symlinks=True, ignore=shutil.ignore_patterns("objects"))
    (dest / ".git" / "objects" / "pack").mkdir(parents=True)
    (dest / ".git" / "objects" / "info").mkdir()
    (dest / ".git" / "objects" / "info" / "alternates").write_text(f"{git / 'objects'}\n")
    run(["git", "-C", str(dest), "remote", "set-url", "origin", url])


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[:3])} failed: {result.stderr.decode(errors='replace')[-800:]}"
        )


def client_envs(sides, count: int) -> list[dict[str, str]]:
    """`count` accounts with a key each, members of the bench workspace on the gateway,
    their keys in sshd's AuthorizedKeysFile; one client environment per account."""
    envs = []
    for i in range(count):
        user = sides.gw.user(f"load{i}")
        sides.gw.cli("member", "add", sides.ws, user.name, "--role", "write")
        with open(sides.ossh.authorized, "a") as keys:
            keys.write(user.pub.read_text().strip() + "\n")
        ssh = sides.env["GIT_SSH_COMMAND"].replace(str(sides.user.key), str(user.key))
        envs.append({**sides.env, "GIT_SSH_COMMAND": ssh})
    return envs


class Client(threading.Thread):
    """One client's loop: requests in turn until `deadline`, each timed."""

    def __init__(self, index: int, work: Path, url: str, env: dict[str, str], deadline: float):
        super().__init__(daemon=True)
        self.index, self.work, self.url, self.env, self.deadline = index, work, url, env, deadline
        self.done: list[tuple[str, float]] = []  # (kind, seconds)
        self.errors: list[str] = []
        self.noop = work / "noop"
        self.incremental_template = work / "incremental"

    def git(self, *args: str, cwd: Path | None = None) -> None:
        result = subprocess.run(
            ["git", *args], cwd=cwd, env=self.env, capture_output=True, timeout=600
        )
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode(errors="replace")[-400:])

    def request(self, kind: str, n: int) -> None:
        fresh = self.work / f"r{n}"
        try:
            if kind == "ls-remote":
                self.git("ls-remote", self.url)
            elif kind == "up-to-date fetch":
                self.git("fetch", "-q", "origin", cwd=self.noop)
            elif kind == "incremental fetch":
                shutil.copytree(self.incremental_template, fresh, symlinks=True)
                self.git("fetch", "-q", "origin", cwd=fresh)
            else:
                self.git("clone", "-q", "--no-checkout", "--depth", "1", self.url, str(fresh))
        finally:
            shutil.rmtree(fresh, ignore_errors=True)

    def run(self) -> None:
        n = self.index
        while time.monotonic() < self.deadline:
            kind = KINDS[n % len(KINDS)]
            started = time.perf_counter()
            try:
                self.request(kind, n)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
                self.errors.append(f"{kind}: {e}")
            else:
                self.done.append((kind, time.perf_counter() - started))
            n += 1


def describe(seconds: float) -> str:
    return (
        f"Load rows: {' and '.join(map(str, CLIENTS))} clients at once, each a loop of "
        f"{', '.join(KINDS)} (client i starting at request i mod 4) for {seconds:.0f} s a "
        f"side; the incremental fetch brings the last 10 commits to a fresh copy of a clone "
        f"without them; clients log in as {ACCOUNTS} accounts; their repositories borrow "
        "the cached objects (alternates). Requests per second = completed / wall time; "
        "server CPU counted by the subreaper; clients' CPU = every git and ssh of the "
        "clients plus the benchmark process, on the same cores."
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_of_children_and_self() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def bench_load(
    sides,
    res,
    name: str,
    cached: Path,
    seconds: float,
    sampler: Callable,
    alternate: Callable[[int], tuple[str, str]],
    fail: Callable[[str], None],
    log: Callable[[str], None],
    clients: tuple[int, ...] = CLIENTS,
) -> None:
    """`cached`: the cached repository (server.git, base) both servers hold as NAME."""
    envs = client_envs(sides, ACCOUNTS)
    base = cached / "base"
    for round_, n in enumerate(clients):
        for side in alternate(round_):
            url = sides.url(side, name)
            root = sides.root / "clients" / f"load-{side}-{n}"
            # One up-to-date clone and one incremental-fetch template for every client,
            # made before the clock starts (the template's fetch brings it up to date).
            template = root / "template"
            borrowing_copy(base, template, url)
            run(["git", "-C", str(template), "fetch", "-q", "origin"], envs[0])
            workers = []
            deadline = time.monotonic() + 3600  # set again below, once all are ready
            for i in range(n):
                work = root / f"client{i}"
                work.mkdir(parents=True)
                shutil.copytree(template, work / "noop", symlinks=True)
                borrowing_copy(base, work / "incremental", url)
                workers.append(Client(i, work, url, envs[i % len(envs)], deadline))
            cpu = sides.server_cpu(side)
            client_cpu = cpu_of_children_and_self()
            started = time.monotonic()
            for w in workers:
                w.deadline = started + seconds
            with sampler(sides.server_pid(side), 0.5) as memory:
                try:
                    for w in workers:
                        w.start()
                    for w in workers:
                        w.join()
                finally:
                    # Stopped early (SIGTERM, Ctrl-C): each client ends its request in
                    # flight, while the servers still run, and starts no other.
                    for w in workers:
                        w.deadline = 0
                    for w in workers:
                        if w.is_alive():
                            w.join(120)
            elapsed = time.monotonic() - started
            time.sleep(0.5)  # the last sessions' processes are reaped
            server = sides.server_cpu(side) - cpu
            client = cpu_of_children_and_self() - client_cpu
            shutil.rmtree(root, ignore_errors=True)
            latencies = [t for w in workers for _, t in w.done]
            errors = [e for w in workers for e in w.errors]
            count = len(latencies)
            for e in errors[:3]:
                fail(f"load, {n} clients, {side}: {e}")
            label = f"load, {n} clients"
            res.add(f"{label}: requests per second ({seconds:.0f} s, mixed)", side, count / elapsed)
            if count:
                res.add(f"{label}: p50 latency (s)", side, percentile(latencies, 0.5))
                res.add(f"{label}: p99 latency (s)", side, percentile(latencies, 0.99))
                res.add(f"{label}: server CPU per request (s)", side, server / count)
                res.add(f"{label}: clients' CPU per request (s)", side, client / count)
                for kind in KINDS:
                    mine = [t for w in workers for k, t in w.done if k == kind]
                    if mine:
                        res.add(f"{label}: {kind}, median (s)", side, statistics.median(mine))
            res.add(
                f"{label}: server peak memory (process tree RSS, MB)", side, memory.peak_rss / 1024
            )
            res.add(f"{label}: failed requests", side, len(errors))
            log(
                f"load {n} clients {side}: {count} requests in {elapsed:.1f} s, "
                f"server CPU {server:.1f} s, clients' CPU {client:.1f} s, {len(errors)} failed"
            )
