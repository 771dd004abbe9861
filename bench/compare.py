"""The gateway side by side with OpenSSH + C git, on the same machine and repositories.

    make bench                                  (= .venv/bin/python bench/compare.py)
    .venv/bin/python bench/compare.py [--runs 3] [--quick] [--only GROUP,...]
    .venv/bin/python bench/compare.py --scale   100,000 keys, 10,000 repos, 1,000 idle connections
    .venv/bin/python bench/compare.py --profile the gateway's worker under cProfile, one full clone
    .venv/bin/python bench/compare.py --profile KIND   the same for one kind of request
                                                (bench/profiles.py)
    .venv/bin/python bench/compare.py --load    the load rows (bench/load.py) and the rows with
                                                issue 18's other targets
    .venv/bin/python bench/compare.py --only overtime [--pushes N]   costs after N pushes
                                                (bench/overtime.py)
    .venv/bin/python bench/compare.py --generate huge   make (or find) one cached repository,
                                                print its server.git path

What it starts (and stops, whatever happens; both servers run under bench/subreaper.py,
which counts the CPU of the processes they leave orphaned):
- OpenSSH's sshd on a free loopback port with its own sshd_config, ed25519 host key and
  AuthorizedKeysFile (`UsePAM no`, `StrictModes no`, `PermitRootLogin prohibit-password`,
  `-D -e`), logging in as the current user and running C git's git-upload-pack and
  git-receive-pack from PATH on bare repositories in a temporary directory;
- a private `gateway serve` (testkit/server.py's Gateway, default settings) with one
  account, one workspace and the same repositories, copied on disk into the repository
  paths the CLI created (gateway/git/layout.py: DATA/repos/WORKSPACE/NAME.git).

The repositories are generated deterministically (fixed seed, fixed dates) with
`git fast-import`, then `git gc` (so they have a commit-graph and, being bare, a bitmap,
as a maintained server repository would), and cached under /tmp/gateway-bench-cache keyed
by their parameters. Both servers serve byte-identical copies. small and large (REPOS)
are the original rows'; huge (a large project's size: 35,000 commits, ~300,000 objects,
a ~130 MB pack, 350 tags) and refs (~19,500 refs) are issue 16's (NEW_REPOS).
`--generate NAME` makes one of them alone and prints its path.

Every clone ends with `git fsck --full` on the client (a partial clone: `git fsck`,
which checks what is present); a failure is reported loudly and makes the exit status 1.
Both sides use the same client, the same key type (ed25519) and the same forced key
exchange, cipher and host key algorithm (SSH_OPTIONS below). The client asks for
protocol v2 as stock git does (sshd passes GIT_PROTOCOL on with `AcceptEnv`); which
protocol each side answered in is read from one traced request (GIT_TRACE_PACKET) of
each row and printed beside it, so that v0 is never silently compared with v2. C git's
side has uploadpack.allowFilter on (in sshd's environment), as hosted servers do.

`--only GROUP,...` runs some groups of rows (GROUPS below); `--quick` puts the small
repository in place of large and huge.

Items of the Performance issue measured here: 1 (the table), 3 (--scale) and the
measuring part of 6 (--profile). The database rows for --scale are written directly in
one transaction (bench/scale_rows.py: sqlite3, or asyncpg for the gateway on
PostgreSQL), not through the store functions, which would take minutes for 100,000 keys.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import hashlib
import io
import json
import os
import pstats
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script: the repo root holds testkit/
import load  # noqa: E402  (bench/load.py: the load rows)
import overtime  # noqa: E402  (bench/overtime.py: costs after many pushes)
import profiles  # noqa: E402  (bench/profiles.py: --profile KIND)
import scale_rows  # noqa: E402  (bench/scale_rows.py: the --scale rows)
from subreaper import ReapedServer, start_gateway  # noqa: E402  (bench/, beside this file)
from subreaper import command as under_subreaper  # noqa: E402

from gateway.config import Settings  # noqa: E402
from testkit import Gateway, database, free_port, pkt  # noqa: E402  (the tests' server driver)

CACHE = Path(os.environ.get("GATEWAY_BENCH_CACHE", "/tmp/gateway-bench-cache"))
GENERATOR_VERSION = 2
CIPHER = "chacha20-poly1305@openssh.com"
KEX = "curve25519-sha256"
HOSTKEY_ALG = "ssh-ed25519"
SSH_OPTIONS = [
    "-o",
    f"Ciphers={CIPHER}",
    "-o",
    f"KexAlgorithms={KEX}",
    "-o",
    f"HostKeyAlgorithms={HOSTKEY_ALG}",
]
T0 = 1_600_000_000  # commit dates: T0 + 60 s per commit

# name -> generator parameters. The large one: ~5,000 commits, ~80 MB of pack, one
# incompressible 16 KiB blob per commit plus small edits to text files (deltas).
REPOS = {
    "small": dict(commits=300, text_files=20, blob_bytes=0, seed=1, tag_every=50),
    "large": dict(commits=5000, text_files=60, blob_bytes=16 * 1024, seed=2, tag_every=100),
}
INCREMENTAL = 10  # commits the incremental fetch brings

# The issue-16 repositories, made by their own generators (the "kind"). "huge": a public
# project's size (about 300,000 objects, 35,000 commits, a pack of 100-150 MB, hundreds
# of tags) with a tree of four levels and ~2,900 files, so that a commit changes a few
# blobs and the trees above them. "refs": the small history with 18,000 pull-request
# heads (one empty commit each) and 1,500 tags, half annotated, most refs packed.
NEW_REPOS = {
    "huge": dict(kind="tree", commits=35_000, seed=3, tag_every=100, version=2),
    "refs": dict(kind="refs", pulls=18_000, tags=1_500, loose=400, seed=4, version=1),
}

FAILURES: list[str] = []
STARTED: list[subprocess.Popen] = []  # client processes started in the background


def fail(message: str) -> None:
    FAILURES.append(message)
    print(f"\n!!! FAILURE: {message}\n", file=sys.stderr, flush=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- repositories --------------------------------------------------------------------------


def fast_import_stream(
    out, commits: int, text_files: int, blob_bytes: int, seed: int, tag_every: int, start: int = 0
) -> None:
    """Write a fast-import stream of commits [start, commits) of a deterministic history.
    The state is always computed from commit 0, so a continuation (start > 0) extends a
    repository that holds commits [0, start) with exactly the commits a full run makes."""
    rng = random.Random(seed)
    texts = [
        [f"file {k} line {j}: {rng.getrandbits(64):016x}\n" for j in range(300)]
        for k in range(text_files)
    ]
    for i in range(commits):
        k = rng.randrange(text_files)
        for _ in range(3):
            texts[k][rng.randrange(len(texts[k]))] = f"edit {i}: {rng.getrandbits(64):016x}\n"
        texts[k].insert(rng.randrange(len(texts[k])), f"added in {i}\n")
        blob = rng.randbytes(blob_bytes) if blob_bytes else b""
        if i < start:
            continue
        w = out.write
        message = f"commit {i}\n\nGenerated by bench/compare.py.\n".encode()
        w(b"commit refs/heads/main\nmark :%d\n" % (i + 1))
        for who in (b"author", b"committer"):
            w(b"%s Bench <bench@example.com> %d +0000\n" % (who, T0 + 60 * i))
        w(b"data %d\n%s\n" % (len(message), message))
        if i == start and start > 0:
            w(b"from refs/heads/main^0\n")
        changed = range(text_files) if i == 0 else [k]
        for f in changed:
            data = "".join(texts[f]).encode()
            w(
                b"M 100644 inline src/mod%02d/file%03d.txt\ndata %d\n%s\n"
                % (f % 8, f, len(data), data)
            )
        if blob:
            w(
                b"M 100644 inline assets/%02d/blob%05d.bin\ndata %d\n%s\n"
                % (i % 64, i, len(blob), blob)
            )
        if tag_every and (i + 1) % tag_every == 0:
            w(b"reset refs/tags/v%d\nfrom :%d\n\n" % ((i + 1) // tag_every, i + 1))


TREE_TOPS = ("src", "lib", "include", "drivers", "net", "fs", "arch", "docs", "tests", "tools")


def tree_stream(out, params: dict, start: int, stop: int) -> None:
    """The "huge" history, commits [start, stop): a tree of TOP/modM/partK/NAME.txt
    (four levels, ~2,900 files of 40-160 lines of hex), each commit replacing a run of
    lines in one to three files, often in the same directory, by one of 20 authors; a
    tag every `tag_every` commits, annotated and lightweight in turn. As fast_import_stream,
    the state always starts at commit 0, so a continuation makes the same commits."""
    rng = random.Random(params["seed"])
    dirs: list[list[str]] = []
    for top in TREE_TOPS:
        for m in range(6):
            for k in range(6):
                count = rng.randint(4, 12)
                # Names unique in their last 16 characters, which git's delta search
                # sorts by: "fileF.txt" in every directory would hide each file's
                # versions from one another.
                stem = f"{top}/mod{m}/part{k}/{top[:3]}{m}{k}"
                dirs.append([f"{stem}_{f:02d}.txt" for f in range(count)])
    paths = [path for files in dirs for path in files]
    where = {path: d for d, files in enumerate(dirs) for path in files}

    def lines(n: int) -> list[bytes]:
        return [b"%060x\n" % rng.getrandbits(240) for _ in range(n)]

    texts = {path: lines(rng.randint(40, 160)) for path in paths}
    w = out.write
    for i in range(stop):
        if i == 0:
            changed = paths
        else:
            first = rng.choice(paths)
            changed = [first]
            for _ in range(rng.choice((0, 1, 1, 2, 2))):
                pool = dirs[where[first]] if rng.random() < 0.6 else paths
                if (other := rng.choice(pool)) not in changed:
                    changed.append(other)
            for path in changed:
                text = texts[path]
                at = rng.randrange(len(text))
                removed = min(rng.randint(8, 60), len(text) - at)
                size = max(40, min(200, len(text) + rng.randint(-6, 6)))
                text[at : at + removed] = lines(size - len(text) + removed)
        author = rng.randrange(20)
        subject = rng.getrandbits(32)
        if i < start:
            continue
        message = (
            b"%s: change %08x\n\nCommit %d of the huge history, generated by bench/compare.py.\n"
            % (changed[0].rsplit("/", 1)[0].encode(), subject, i)
        )
        w(b"commit refs/heads/main\nmark :%d\n" % (i + 1))
        who = b"Dev%02d <dev%02d@example.com> %d +0000\n" % (author, author, T0 + 300 * i)
        w(b"author " + who + b"committer " + who)
        w(b"data %d\n%s\n" % (len(message), message))
        if i == start and start > 0:
            w(b"from refs/heads/main^0\n")
        for path in changed:
            data = b"".join(texts[path])
            w(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
        if (i + 1) % params["tag_every"] == 0:
            t = (i + 1) // params["tag_every"]
            name = b"v%d.%d.%d" % (t // 100, t // 10 % 10, t % 10)
            if t % 2:
                note = b"Release %s\n" % name
                w(b"tag %s\nfrom :%d\ntagger %s" % (name, i + 1, who))
                w(b"data %d\n%s\n" % (len(note), note))
            else:
                w(b"reset refs/tags/%s\nfrom :%d\n\n" % (name, i + 1))


def refs_stream(out, params: dict, shas: list[str], first: int, last: int) -> None:
    """Pull-request heads [first, last) of the "refs" repository (one empty commit each,
    on a commit of the small history) and the tags whose numbers fall in the same share
    of params["tags"], annotated and lightweight in turn."""
    w = out.write
    for n in range(first, last):
        message = b"Pull request %d\n" % n
        w(b"commit refs/pull/%d/head\n" % n)
        w(b"committer Bench <bench@example.com> %d +0000\n" % (T0 + 10_000_000 + n))
        w(b"data %d\n%s\nfrom %s\n\n" % (len(message), message, shas[n % len(shas)].encode()))
    share = params["tags"] / params["pulls"]
    for t in range(int(first * share), int(last * share)):
        name, target = b"r%d.%d" % (t // 100, t % 100), shas[(7 * t) % len(shas)].encode()
        if t % 2:
            note = b"Tag %s\n" % name
            w(b"tag %s\nfrom %s\n" % (name, target))
            w(b"tagger Bench <bench@example.com> %d +0000\n" % (T0 + 20_000_000 + t))
            w(b"data %d\n%s\n" % (len(note), note))
        else:
            w(b"reset refs/tags/%s\nfrom %s\n\n" % (name, target))


def git_local(*args: str, cwd: Path | None = None, input: bytes | None = None) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def fast_import(repo: Path, params: dict, start: int, commits: int, write=None) -> None:
    """Commits [start, commits) of a REPOS history into `repo`, or what `write(out)`
    writes (the other generators)."""
    proc = subprocess.Popen(
        ["git", "--git-dir", str(repo), "fast-import", "--quiet"],
        stdin=subprocess.PIPE,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"},
    )
    buf = io.BufferedWriter(proc.stdin, 1 << 20)
    if write is not None:
        write(buf)
    else:
        fast_import_stream(
            buf,
            commits,
            params["text_files"],
            params["blob_bytes"],
            params["seed"],
            params["tag_every"],
            start,
        )
    buf.flush()
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")


def build_tree_repo(build: Path, params: dict) -> None:
    """The huge repository. The costly `repack -f` runs once, before the last INCREMENTAL
    commits: base is a --local clone of that (hard links, no second index-pack), and the
    last commits are added with a plain repack that keeps the deltas found."""
    server, commits = build / "server.git", params["commits"]
    fast_import(
        server, params, 0, 0, lambda out: tree_stream(out, params, 0, commits - INCREMENTAL)
    )
    git_local("--git-dir", str(server), "repack", "-a", "-d", "-f", "-q")
    git_local("clone", "-q", "--local", "--no-checkout", str(server), str(build / "base"))
    fast_import(
        server, params, 0, 0, lambda out: tree_stream(out, params, commits - INCREMENTAL, commits)
    )
    git_local("--git-dir", str(server), "repack", "-a", "-d", "-q")
    git_local("--git-dir", str(server), "gc", "--quiet")


def build_refs_repo(build: Path, params: dict) -> None:
    """The refs repository: the small history, then most pull-request heads and tags,
    gc'ed (packed refs), then the last `loose` of them as loose refs and a second pack."""
    server = build / "server.git"
    fast_import(server, REPOS["small"], 0, REPOS["small"]["commits"])
    shas = git_local("--git-dir", str(server), "rev-list", "main").split()
    packed = params["pulls"] - params["loose"]
    fast_import(server, params, 0, 0, lambda out: refs_stream(out, params, shas, 1, packed))
    git_local("--git-dir", str(server), "repack", "-a", "-d", "-f", "-q")
    git_local("--git-dir", str(server), "gc", "--quiet")
    fast_import(
        server,
        params,
        0,
        0,
        lambda out: refs_stream(out, params, shas, packed, params["pulls"] + 1),
    )


# kind -> the function that makes such a repository in a build directory (bench/receive.py
# adds its own).
BUILDERS = {"tree": build_tree_repo, "refs": build_refs_repo}


def cached_repo(name: str) -> Path:
    """CACHE/NAME-HASH with server.git (the full history, gc'ed) and base (a clone
    without the last INCREMENTAL commits: the client of the incremental fetch)."""
    params = REPOS.get(name) or NEW_REPOS[name]
    key = hashlib.sha256(
        json.dumps([GENERATOR_VERSION, params, INCREMENTAL], sort_keys=True).encode()
    ).hexdigest()[:12]
    final = CACHE / f"{name}-{key}"
    if (final / "complete").exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    log(f"generating the {name} repository ({params}) into {final}")
    started = time.monotonic()
    build = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    try:
        server = build / "server.git"
        git_local("init", "-q", "--bare", "-b", "main", str(server))
        if params.get("kind") in BUILDERS:
            BUILDERS[params["kind"]](build, params)
        else:
            fast_import(server, params, 0, params["commits"] - INCREMENTAL)
            git_local(
                "clone", "-q", "--no-local", "--no-checkout", str(server), str(build / "base")
            )
            fast_import(server, params, params["commits"] - INCREMENTAL, params["commits"])
            # fast-import's own deltas are few: find them as `git repack -f` does, then gc
            # (packed refs, a commit-graph; a bare repository also gets a bitmap).
            git_local("--git-dir", str(server), "repack", "-a", "-d", "-f", "-q")
            git_local("--git-dir", str(server), "gc", "--quiet")
        git_local("--git-dir", str(server), "fsck", "--full", "--no-progress")
        (build / "complete").write_text(json.dumps(params))
        shutil.rmtree(final, ignore_errors=True)
        os.rename(build, final)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    log(f"generated {name} in {time.monotonic() - started:.0f} s")
    return final


def repo_facts(server: Path) -> dict:
    packs = sum(p.stat().st_size for p in (server / "objects" / "pack").glob("*.pack"))
    count = git_local("--git-dir", str(server), "count-objects", "-v")
    objects = dict(line.split(": ") for line in count.splitlines())
    refs = len(git_local("--git-dir", str(server), "for-each-ref").splitlines())
    commits = int(git_local("--git-dir", str(server), "rev-list", "--count", "main").strip())
    return {
        "pack_mb": packs / 1e6,
        "objects": int(objects["in-pack"]) + int(objects["count"]),
        "refs": refs,
        "commits": commits,
    }


# --- processes and memory ------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for c in children:
            out.append(int(c))
            stack.append(int(c))
    return out


def proc_kb(pid: int, field: str) -> int:
    """VmRSS from status, or Pss from smaps_rollup (shared pages divided among sharers)."""
    path = f"/proc/{pid}/smaps_rollup" if field == "Pss:" else f"/proc/{pid}/status"
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def tree_cpu(pid: int) -> float:
    """CPU seconds used by a process tree so far: each live process's own and its reaped
    children's (a worker or sshd session that ended is counted in its parent)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / tick


def tree_kb(pid: int, field: str = "VmRSS:") -> tuple[int, int]:
    """Total of `field` over a process and its descendants, and how many processes."""
    pids = [pid, *descendants(pid)]
    return sum(proc_kb(p, field) for p in pids), len(pids)


class Sampler:
    """Peak RSS and PSS of a process tree, sampled every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            pids = [self.pid, *descendants(self.pid)]
            self.peak_rss = max(self.peak_rss, sum(proc_kb(p, "VmRSS:") for p in pids))
            self.peak_pss = max(self.peak_pss, sum(proc_kb(p, "Pss:") for p in pids))
            if self._done.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def kill_tree(proc: subprocess.Popen | None) -> None:
    """Stop a process we started, its process group and every descendant left."""
    if proc is None:
        return
    rest = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM) if os.getpgid(
            proc.pid
        ) == proc.pid else proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
    for pid in rest + descendants(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# --- the two servers -----------------------------------------------------------------------


class OpenSSH:
    """sshd on a loopback high port serving C git for bare repositories in `repos`."""

    def __init__(self, root: Path, user_pub: Path, skip_bashrc: bool = True) -> None:
        self.root = root
        self.skip_bashrc = skip_bashrc
        self.repos = root / "repos"
        self.repos.mkdir(parents=True)
        self.port = free_port()
        self.login = getpass.getuser()
        self.host_key = root / "ssh_host_ed25519_key"
        self.authorized = root / "authorized_keys"
        self.user_pub = user_pub
        self.proc: subprocess.Popen | None = None
        self.reaper: ReapedServer | None = None

    def start(self) -> None:
        sshd = "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            log("installing openssh-server")
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "openssh-server"],
                check=True,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        os.makedirs("/run/sshd", exist_ok=True)  # the privilege separation directory
        if not self.host_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
                check=True,
            )
        self.write_authorized_keys(0)
        config = self.root / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.authorized}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "UseDNS no",
                    "LogLevel ERROR",
                    # The default (10:30:100) drops logins at random beyond 10 at once; the
                    # load rows open 32 (the gateway's max_startups is 1,000).
                    "MaxStartups 1000",
                    # sshd runs the command with the user's shell; bash then reads ~/.bashrc (it
                    # detects sshd by SSH_CLIENT and SHLVL < 2). A developer's .bashrc (pyenv init
                    # here) would be charged to OpenSSH, so bash is told it is nested. A Git server
                    # account would have a plain shell or git-shell.
                    # And C git serves partial clones only with uploadpack.allowFilter (hosted
                    # servers set it): given in the environment, so the repositories stay
                    # byte-identical to the gateway's. (One SetEnv line for all of them.)
                    "SetEnv GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=uploadpack.allowFilter"
                    " GIT_CONFIG_VALUE_0=true" + (" SHLVL=1" if self.skip_bashrc else ""),
                    # git sends GIT_PROTOCOL=version=2 (ssh -o SendEnv); without this sshd
                    # drops it and C git answers in v0.
                    "AcceptEnv GIT_PROTOCOL",
                    "",
                ]
            )
        )
        subprocess.run([sshd, "-t", "-f", str(config)], check=True)
        # sshd keeps its own copy of the log's descriptor; ours closes once it has started.
        with open(self.root / "sshd.log", "ab") as sshd_log:
            # Under the subreaper, which counts the git processes sshd leaves orphaned.
            report = self.root / "subreaper.json"
            self.proc = subprocess.Popen(
                [*under_subreaper(report), sshd, "-D", "-e", "-f", str(config)],
                stdout=sshd_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.reaper = ReapedServer(self.proc.pid, report)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start")

    def write_authorized_keys(self, extra: int) -> None:
        """The benchmark user's key last, after `extra` other (random) ed25519 keys."""
        lines = [
            f"ssh-ed25519 {base64.b64encode(blob).decode()} other{i}@bench"
            for i, blob in enumerate(scale_rows.random_ed25519_blobs(extra, seed=7))
        ]
        lines.append(self.user_pub.read_text().strip())
        tmp = self.authorized.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.rename(tmp, self.authorized)

    def url(self, name: str) -> str:
        return f"ssh://{self.login}@127.0.0.1:{self.port}{self.repos / name}.git"

    def repo_dir(self, name: str) -> Path:
        return self.repos / f"{name}.git"

    def stop(self) -> None:
        kill_tree(self.proc)
        self.proc = None


class Sides:
    """Both servers, the client's key and environment, and a URL for each repository."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.root = root
        self.gw = Gateway(root / "gateway")
        self.gw.cli("init")
        self.ossh: OpenSSH | None = None
        # Under the subreaper, as sshd; from here on the caller's try/finally calls stop().
        self.gw_reaper = start_gateway(self.gw, root / "gateway-subreaper.json")
        self.user = self.gw.user("bench")
        self.ws = self.gw.workspace((self.user, "write"))
        self.ossh = OpenSSH(root / "openssh", self.user.pub)
        self.ossh.start()
        ssh = [*self.gw.ssh_command(self.user.key), *SSH_OPTIONS]
        # testkit's HOME/.gitconfig pins protocol.version = 0 for the tests; the bench's
        # client asks as stock git 2.39 does (v2), overriding it from the environment.
        self.env = {
            **self.gw.env,
            "GIT_SSH_COMMAND": " ".join(ssh),
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "protocol.version",
            "GIT_CONFIG_VALUE_0": "2",
        }
        self.paths: dict[str, str] = {}
        for name in names:
            self.add_repo(name)

    def add_repo(self, name: str, source: str | None = None) -> None:
        """Copy a cached server repository (REPOS[source or name]) into both servers."""
        server = cached_repo(source or name) / "server.git"
        path = self.gw.repo(self.ws, name)
        target = self.gw.repo_dir(path)
        shutil.rmtree(target)  # created empty by `gateway repo add`; same layout, same place
        shutil.copytree(server, target, symlinks=True)
        shutil.copytree(server, self.ossh.repo_dir(name), symlinks=True)
        self.paths[name] = path

    def url(self, side: str, name: str) -> str:
        return self.gw.url(self.paths[name]) if side == "gateway" else self.ossh.url(name)

    def server_dir(self, side: str, name: str) -> Path:
        return self.gw.repo_dir(self.paths[name]) if side == "gateway" else self.ossh.repo_dir(name)

    def reaper(self, side: str) -> ReapedServer:
        reaper = self.gw_reaper if side == "gateway" else self.ossh.reaper
        assert reaper is not None
        return reaper

    def server_pid(self, side: str) -> int:
        """The server process (memory is sampled on its tree), below the subreaper."""
        return self.reaper(side).server_pid()

    def server_cpu(self, side: str) -> float:
        """CPU seconds the side's server has caused so far, orphans included
        (subreaper.py); measurements take differences."""
        return self.reaper(side).cpu(tree_cpu)

    def git(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 900,
        trace: Path | None = None,
    ) -> subprocess.CompletedProcess:
        """`trace`: a file for GIT_TRACE_PACKET (git stops tracing where the pack starts)."""
        env = self.env if trace is None else {**self.env, "GIT_TRACE_PACKET": str(trace)}
        result = subprocess.run(
            ["git", *args], cwd=cwd or self.root, env=env, capture_output=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"git {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result

    def timed_git(self, *args: str, cwd: Path | None = None, trace: Path | None = None) -> float:
        started = time.perf_counter()
        self.git(*args, cwd=cwd, trace=trace)
        return time.perf_counter() - started

    def trace_file(self) -> Path:
        return Path(tempfile.mktemp(prefix="trace-", dir=self.root))

    def fsck(self, clone: Path, what: str, partial: bool = False) -> None:
        """`git fsck --full`; for a partial clone plain `git fsck` (it knows the promisor
        remote's objects may be missing and checks what is present)."""
        flags = () if partial else ("--full",)
        result = self.git("fsck", *flags, "--no-progress", cwd=clone, check=False)
        if result.returncode != 0:
            fail(
                f"git fsck {' '.join(flags)} failed after {what}: "
                f"{(result.stdout + result.stderr).decode(errors='replace')[-1500:]}"
            )

    def stop(self) -> None:
        try:
            gw = getattr(self, "gw", None)
            if gw is None:
                return
            gw_rest = descendants(gw.proc.pid) if gw.proc else []
            gw.stop()
            for pid in gw_rest:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            if getattr(self, "ossh", None) is not None:
                self.ossh.stop()


SIDES = ("openssh", "gateway")


def alternate(run: int) -> tuple[str, str]:
    """Which side goes first alternates from run to run (load from others evens out)."""
    return SIDES if run % 2 == 0 else SIDES[::-1]


# --- the measurements ----------------------------------------------------------------------


def spoken(trace: Path) -> str:
    """The protocol a server answered in, from the client's GIT_TRACE_PACKET file: v2 and
    v1 servers say so in their first pkt-line, v0 ones start with a ref."""
    try:
        text = trace.read_text(errors="replace")
    finally:
        trace.unlink(missing_ok=True)
    for version in ("2", "1"):
        if f"< version {version}\n" in text:
            return f"v{version}"
    return "v0" if "< " in text else "?"


class Results:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = {}
        self.order: list[str] = []
        # (row, side) -> what the table says beside the row: the protocol spoken, and for
        # partial clones whether the server filtered.
        self.notes: dict[tuple[str, str], list[str]] = {}

    def note(self, row: str, side: str, text: str) -> None:
        if text not in (notes := self.notes.setdefault((row, side), [])):
            notes.append(text)

    def protocol(self, row: str, side: str, trace: Path) -> None:
        self.note(row, side, spoken(trace))

    def add(self, row: str, side: str, value: float) -> None:
        if row not in self.order:
            self.order.append(row)
        self.values.setdefault((row, side), []).append(value)

    def median(self, row: str, side: str) -> float | None:
        values = self.values.get((row, side))
        return statistics.median(values) if values else None


def scratch(sides: Sides, label: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{label}-", dir=sides.root / "clients"))


def bench_clone(
    sides: Sides,
    res: Results,
    name: str,
    runs: int,
    label: str,
    memory: bool,
    when: str = "",
    forget: tuple[str, ...] = (),
) -> dict[str, Path]:
    """Full clones (--no-checkout: the transfer and index-pack, not writing a work tree),
    sampling the server's memory; returns one clone per side for the fetches after.
    `forget`: files of the gateway's repository removed before each of its clones, as
    glob patterns (`gateway-clone-objects`: as after any push; `gateway-*`, everything
    the gateway keeps: as for the first clone of a repository it never served); `when`
    says which."""
    last: dict[str, Path] = {}
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"clone-{side}") / "c"
            if side == "gateway":
                forget_kept(sides.server_dir(side, name), forget)
            trace = sides.trace_file() if run == 0 else None
            cpu = sides.server_cpu(side)
            with Sampler(sides.server_pid(side)) as sampler:
                elapsed = sides.timed_git(
                    "clone", "-q", "--no-checkout", sides.url(side, name), str(dest), trace=trace
                )
            time.sleep(0.3)  # the session's processes are reaped
            res.add(label, side, elapsed)
            if trace is not None:
                res.protocol(label, side, trace)
            res.add(
                f"server CPU per {name} clone{when} (subreaper-counted, s)",
                side,
                sides.server_cpu(side) - cpu,
            )
            if memory:
                res.add(
                    f"server peak memory during the {name} clone{when} (process tree RSS, MB)",
                    side,
                    sampler.peak_rss / 1024,
                )
                res.add(
                    f"the same as PSS{when} (shared pages divided among processes, MB)",
                    side,
                    sampler.peak_pss / 1024,
                )
            sides.fsck(dest, f"{side} clone of {name}")
            if side in last:
                shutil.rmtree(last[side].parent, ignore_errors=True)
            last[side] = dest
            log(f"{label} {side} run {run + 1}: {elapsed:.2f} s")
    return last


def bench_ls_remote(sides: Sides, res: Results, name: str, count: int = 20, what: str = "") -> None:
    """`count` ls-remotes a side, after one untimed traced one (the protocol spoken)."""
    cpu = {side: 0.0 for side in SIDES}
    row = f"ls-remote ({name}{what}, median of {count}, s)"
    for side in SIDES:
        trace = sides.trace_file()
        sides.git("ls-remote", sides.url(side, name), trace=trace)
        res.protocol(row, side, trace)
    for run in range(count):
        for side in alternate(run):
            before = sides.server_cpu(side)
            res.add(
                row,
                side,
                sides.timed_git("ls-remote", sides.url(side, name)),
            )
            time.sleep(0.05)
            cpu[side] += sides.server_cpu(side) - before
    for side in SIDES:  # includes starting the spare worker that replaces the one used
        res.add(
            f"server CPU per ls-remote{what} (subreaper-counted, mean of {count}, s)",
            side,
            cpu[side] / count,
        )
    log(f"ls-remote ({name}) done")


def bench_push(sides: Sides, res: Results, runs: int, megabytes: int) -> None:
    """Pushes of one new commit holding `megabytes` of incompressible blobs onto the
    small repository's main, to a new branch; the same commits go to both servers."""
    work = scratch(sides, "push") / "w"
    git_local("clone", "-q", "--no-checkout", str(cached_repo("small") / "server.git"), str(work))
    rng = random.Random(99)
    for run in range(runs):
        tree_dir = work / f"push{run}"
        tree_dir.mkdir()
        for i in range(max(1, megabytes // 5)):
            (tree_dir / f"blob{i}.bin").write_bytes(rng.randbytes(min(megabytes, 5) * 1024 * 1024))
        git_local("add", f"push{run}", cwd=work)
        env_date = f"{T0 + 10_000_000 + run} +0000"
        subprocess.run(
            [
                "git",
                "-c",
                "user.name=Bench",
                "-c",
                "user.email=bench@example.com",
                "commit",
                "-qm",
                f"push {run}",
            ],
            cwd=work,
            check=True,
            env={**os.environ, "GIT_AUTHOR_DATE": env_date, "GIT_COMMITTER_DATE": env_date},
        )
        sha = git_local("rev-parse", "HEAD", cwd=work).strip()
        for side in alternate(run):
            elapsed = sides.timed_git(
                "push", "-q", sides.url(side, "push"), f"{sha}:refs/heads/bench-{run}", cwd=work
            )
            got = git_local(
                "--git-dir",
                str(sides.server_dir(side, "push")),
                "rev-parse",
                f"refs/heads/bench-{run}",
            ).strip()
            if got != sha:
                fail(f"push to {side}: bench-{run} is {got}, expected {sha}")
            res.add(f"push of {megabytes} MB (incompressible, new branch, s)", side, elapsed)
            log(f"push {side} run {run + 1}: {elapsed:.2f} s")
    shutil.rmtree(work.parent, ignore_errors=True)


def bench_parallel_clones(sides: Sides, res: Results, name: str, runs: int, n: int = 4) -> None:
    for run in range(runs):
        for side in alternate(run):
            base = scratch(sides, f"par-{side}")
            dests = [base / f"c{i}" for i in range(n)]
            started = time.perf_counter()
            procs = [
                subprocess.Popen(
                    ["git", "clone", "-q", "--no-checkout", sides.url(side, name), str(d)],
                    env=sides.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                )
                for d in dests
            ]
            STARTED.extend(procs)
            errors = [p.communicate(timeout=1800)[1] if p.wait(1800) != 0 else None for p in procs]
            elapsed = time.perf_counter() - started
            for err in errors:
                if err is not None:
                    fail(
                        f"one of {n} parallel clones from {side} failed: "
                        f"{err.decode(errors='replace')[-800:]}"
                    )
            for d in dests:
                if d.exists():
                    sides.fsck(d, f"parallel clone of {name} from {side}")
            shutil.rmtree(base, ignore_errors=True)
            res.add(
                f"{n} clones of {name} at once (wall time until all are done, s)", side, elapsed
            )
            log(f"{n} clones {side} run {run + 1}: {elapsed:.2f} s")


def pack_arriving(pack_dir: Path) -> int:
    """Bytes of the pack a clone is receiving so far (git's temporary pack file)."""
    size = 0
    for path in pack_dir.glob("tmp_pack_*"):
        with contextlib.suppress(FileNotFoundError):  # renamed once complete
            size = max(size, path.stat().st_size)
    return size


def bench_ls_remote_during_clone(sides: Sides, res: Results, name: str, runs: int) -> None:
    """An ls-remote of the small repository started once the large clone's pack is
    arriving (its temporary pack holds 5 MB), so that both requests are served at once."""
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"busy-{side}") / "c"
            clone = subprocess.Popen(
                ["git", "clone", "-q", "--no-checkout", sides.url(side, name), str(dest)],
                env=sides.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            STARTED.append(clone)
            deadline = time.monotonic() + 60
            while clone.poll() is None and time.monotonic() < deadline:
                if pack_arriving(dest / ".git" / "objects" / "pack") > 5_000_000:
                    break
                time.sleep(0.005)
            elapsed = sides.timed_git("ls-remote", sides.url(side, "small"))
            still_running = clone.poll() is None
            if clone.wait(1800) != 0:
                fail(
                    f"clone from {side} (with an ls-remote beside it) failed: "
                    f"{clone.stderr.read().decode(errors='replace')[-800:]}"
                )
            sides.fsck(dest, f"{side} clone of {name} with an ls-remote beside it")
            shutil.rmtree(dest.parent, ignore_errors=True)
            if not still_running:
                log(f"warning: the {side} clone ended before the ls-remote did")
            res.add(f"ls-remote while a {name} clone runs (latency, s)", side, elapsed)
            log(f"ls-remote during clone {side} run {run + 1}: {elapsed:.3f} s")


# --- the issue-16 rows: shallow, partial, many refs, the huge repository --------------------


def measured(
    sides: Sides,
    res: Results,
    side: str,
    row: str,
    what: str,
    args: list[str],
    cwd: Path | None = None,
    trace: bool = False,
) -> float:
    """One timed git command against `side`, with the server tree's CPU and peak memory
    in the rows "server CPU, WHAT" and "server peak memory, WHAT"; `trace`: the protocol
    spoken is noted beside the rows."""
    pid = sides.server_pid(side)
    trace_file = sides.trace_file() if trace else None
    cpu = sides.server_cpu(side)
    with Sampler(pid) as sampler:
        elapsed = sides.timed_git(*args, cwd=cwd, trace=trace_file)
    time.sleep(0.3)  # the session's processes are reaped
    res.add(row, side, elapsed)
    res.add(f"server CPU, {what} (subreaper-counted, s)", side, sides.server_cpu(side) - cpu)
    res.add(f"server peak memory, {what} (process tree RSS, MB)", side, sampler.peak_rss / 1024)
    if trace_file is not None:
        res.protocol(row, side, trace_file)
    log(f"{row} {side}: {elapsed:.2f} s")
    return elapsed


def pack_mb(clone: Path) -> float:
    return sum(p.stat().st_size for p in (clone / ".git" / "objects" / "pack").glob("*.pack")) / 1e6


def bench_depth_clone(sides: Sides, res: Results, name: str, runs: int) -> dict[str, Path]:
    """`git clone --depth 1`; returns one shallow clone per side for the fetch after."""
    last: dict[str, Path] = {}
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"depth-{side}") / "c"
            argv = [
                "clone",
                "-q",
                "--no-checkout",
                "--depth",
                "1",
                sides.url(side, name),
                str(dest),
            ]
            measured(
                sides,
                res,
                side,
                f"clone --depth 1 ({name}, s)",
                "clone --depth 1",
                argv,
                trace=run == 0,
            )
            shallow_file = dest / ".git" / "shallow"
            if not shallow_file.exists() or shallow_file.read_text().count("\n") != 1:
                fail(f"clone --depth 1 from {side}: not a one-commit shallow clone")
            sides.fsck(dest, f"{side} clone --depth 1 of {name}")
            if side in last:
                shutil.rmtree(last[side].parent, ignore_errors=True)
            last[side] = dest
    return last


CLIENT_GC_PACKS = 50  # git's gc.autoPackLimit: the pusher repacks its own packs this often


class Pusher:
    """Makes one new commit at a time on top of a repository's main (a bare repository
    borrowing its objects through objects/info/alternates), to push to both servers."""

    def __init__(self, root: Path, source: Path) -> None:
        self.git_dir = root / "pusher.git"
        git_local("init", "-q", "--bare", "-b", "main", str(self.git_dir))
        (self.git_dir / "objects" / "info" / "alternates").write_text(f"{source / 'objects'}\n")
        tip = git_local("--git-dir", str(source), "rev-parse", "main").strip()
        git_local("--git-dir", str(self.git_dir), "update-ref", "refs/heads/main", tip)
        self.count = 0

    def commit(self) -> str:
        self.count += 1
        data = b"pushed line %d\n" % self.count * 40
        message = b"One pushed commit, %d\n" % self.count
        stream = (
            b"commit refs/heads/main\ncommitter Bench <bench@example.com> %d +0000\n"
            b"data %d\n%s\nfrom refs/heads/main^0\nM 100644 inline src/mod0/part0/src00_00.txt\n"
            b"data %d\n%s\n"
            % (T0 + 30_000_000 + self.count, len(message), message, len(data), data)
        )
        git_local("--git-dir", str(self.git_dir), "fast-import", "--quiet", input=stream)
        if self.count % CLIENT_GC_PACKS == 0:
            # Each fast-import writes a pack; a developer's git would have run gc --auto
            # long before 2,000 of them slowed every push of this client (on both sides).
            # gc --auto past gc.autoPackLimit repacks all its own packs into one (-A -d
            # -l); without -a, repack packs loose objects only and the packs pile up.
            git_local("--git-dir", str(self.git_dir), "repack", "-a", "-d", "-l", "-q")
        return git_local("--git-dir", str(self.git_dir), "rev-parse", "main").strip()


def bench_shallow_fetch(
    sides: Sides, res: Results, name: str, runs: int, shallow: dict[str, Path]
) -> None:
    """In each run a one-commit push to main of NAME-push (a copy of NAME), then a copy
    of the side's --depth 1 clone of NAME runs `git fetch --depth 1` from it."""
    pusher = Pusher(sides.root, cached_repo(name) / "server.git")
    target = f"{name}-push"
    for run in range(runs):
        sha = pusher.commit()
        for side in alternate(run):
            sides.git(
                "--git-dir",
                str(pusher.git_dir),
                "push",
                "-q",
                sides.url(side, target),
                "main:refs/heads/main",
            )
            dest = scratch(sides, f"shallow-{side}") / "c"
            shutil.copytree(shallow[side], dest, symlinks=True)
            sides.git("remote", "set-url", "origin", sides.url(side, target), cwd=dest)
            measured(
                sides,
                res,
                side,
                f"fetch --depth 1 into a shallow clone after a one-commit push ({name}, s)",
                "fetch --depth 1",
                ["fetch", "-q", "--depth", "1", "origin"],
                cwd=dest,
                trace=run == 0,
            )
            got = sides.git("rev-parse", "origin/main", cwd=dest).stdout.decode().strip()
            if got != sha:
                fail(f"fetch --depth 1 from {side}: origin/main is {got}, expected {sha}")
            sides.fsck(dest, f"{side} fetch --depth 1 of {target}")
            shutil.rmtree(dest.parent, ignore_errors=True)


def missing_objects(clone: Path, sides: Sides) -> int:
    """Objects the clone's refs reach that it does not have (a partial clone's absent
    blobs or trees), without fetching them."""
    out = sides.git("rev-list", "--objects", "--all", "--missing=print", cwd=clone).stdout
    return out.count(b"\n?") + out.startswith(b"?")


def bench_filter_clone(sides: Sides, res: Results, name: str, runs: int, spec: str) -> None:
    """`git clone --filter=SPEC` with the pack each side sent; beside the row, whether the
    server filtered (objects left out) or sent everything (a server without `filter`)."""
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"filter-{side}") / "c"
            row = f"clone --filter={spec} ({name}, s)"
            argv = [
                "clone",
                "-q",
                "--no-checkout",
                f"--filter={spec}",
                sides.url(side, name),
                str(dest),
            ]
            measured(sides, res, side, row, f"clone --filter={spec}", argv, trace=run == 0)
            res.add(f"pack received by clone --filter={spec} ({name}, MB)", side, pack_mb(dest))
            if run == 0:
                missing = missing_objects(dest, sides)
                res.note(row, side, f"partial, {missing:,} ids missing" if missing else "full pack")
            sides.fsck(dest, f"{side} clone --filter={spec} of {name}", partial=True)
            shutil.rmtree(dest.parent, ignore_errors=True)


def bench_incremental(sides: Sides, res: Results, name: str, runs: int) -> None:
    """A fetch of the last INCREMENTAL commits into a copy of the cached base clone."""
    base = cached_repo(name) / "base"
    tip = git_local("--git-dir", str(cached_repo(name) / "server.git"), "rev-parse", "main").strip()
    row = f"incremental fetch, {INCREMENTAL} new commits ({name}, s)"
    for run in range(runs):
        for side in alternate(run):
            dest = scratch(sides, f"fetch-{side}") / "c"
            shutil.copytree(base, dest, symlinks=True)
            sides.git("remote", "set-url", "origin", sides.url(side, name), cwd=dest)
            trace = sides.trace_file() if run == 0 else None
            cpu = sides.server_cpu(side)
            elapsed = sides.timed_git("fetch", "-q", "origin", cwd=dest, trace=trace)
            time.sleep(0.2)  # the session's processes are reaped
            res.add(
                f"server CPU per incremental fetch ({name}, subreaper-counted, s)",
                side,
                sides.server_cpu(side) - cpu,
            )
            if trace is not None:
                res.protocol(row, side, trace)
            got = sides.git("rev-parse", "origin/main", cwd=dest).stdout.decode().strip()
            if got != tip:
                fail(f"incremental fetch from {side}: origin/main is {got}, expected {tip}")
            res.add(row, side, elapsed)
            shutil.rmtree(dest.parent, ignore_errors=True)
            log(f"incremental fetch ({name}) {side} run {run + 1}: {elapsed:.2f} s")


def bench_noop_fetch(
    sides: Sides, res: Results, name: str, runs: int, clones: dict[str, Path] | None = None
) -> None:
    """Up-to-date `git fetch`es (3 per run) into a clone from the same side (made here,
    untimed, when none is given); one traced untimed fetch first says the protocol."""
    if clones is None:
        clones = {}
        for side in SIDES:
            clones[side] = scratch(sides, f"noop-{side}") / "c"
            sides.git("clone", "-q", "--no-checkout", sides.url(side, name), str(clones[side]))
    row = f"no-op fetch ({name}, s)"
    for side in SIDES:
        trace = sides.trace_file()
        sides.git("fetch", "-q", "origin", cwd=clones[side], trace=trace)
        res.protocol(row, side, trace)
    for run in range(runs * 3):
        for side in alternate(run):
            cpu = sides.server_cpu(side)
            res.add(row, side, sides.timed_git("fetch", "-q", "origin", cwd=clones[side]))
            time.sleep(0.2)  # the session's processes are reaped
            res.add(
                f"server CPU per no-op fetch ({name}, subreaper-counted, s)",
                side,
                sides.server_cpu(side) - cpu,
            )
    log(f"no-op fetches ({name}) done")


# --- the table -----------------------------------------------------------------------------

TARGETS = [  # (row prefix, target ratio, or absolute gateway seconds with "abs")
    # issue 18's: server cost ("min": the ratio must be at least the target; "MB": an
    # absolute gateway figure in MB)
    ("server CPU per ls-remote", 2.0, "ratio"),
    ("server CPU per no-op fetch", 2.0, "ratio"),
    ("server CPU per incremental fetch", 2.0, "ratio"),
    ("server CPU per large clone", 1.5, "ratio"),
    ("server CPU per huge clone", 1.5, "ratio"),
    ("server idle memory", 40, "MB"),
    ("server peak memory during the large clone", 1.3, "ratio"),
    ("load, 32 clients: requests per second", 0.5, "min"),
    ("load, 32 clients: p99 latency", 2.0, "ratio"),
    ("load, ", None, None),  # the other load rows: for the reader
    ("full clone", 1.2, "ratio"),
    ("server peak memory, ", None, None),  # the issue-16 rows' memory: no target
    # issue 16's
    ("clone --depth 1", 1.2, "ratio"),
    ("fetch --depth 1", 1.2, "ratio"),
    ("clone --filter=blob:none", 1.2, "ratio"),
    ("pack received by clone --filter=blob:none", 1.1, "ratio"),
    ("clone --filter=tree:0", 1.5, "ratio"),
    ("ls-remote (refs", 1.2, "ratio"),
    ("incremental fetch", 1.2, "ratio"),
    ("no-op fetch", 1.2, "ratio"),
    ("ls-remote while", 0.3, "abs"),
    ("ls-remote", 1.0, "ratio"),
    ("push", 1.2, "ratio"),
    ("4 clones", 1.3, "ratio"),
    ("server peak memory", 1.5, "ratio"),
]


def target_for(row: str):
    for prefix, value, kind in TARGETS:
        if row.startswith(prefix):
            return value, kind
    return None, None


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_table(res: Results, caption: str, targets: bool = True) -> None:
    print()
    print(caption)
    print()
    print("| measure | OpenSSH + C git | gateway | gateway / OpenSSH | target | met |")
    print("|---|---|---|---|---|---|")
    for row in res.order:
        o, g = res.median(row, "openssh"), res.median(row, "gateway")
        ratio = g / o if o and g is not None else None
        target, kind = target_for(row) if targets else (None, None)
        if target is None:
            t, met = "-", ""
        elif kind == "abs":
            t, met = f"< {target} s", ("yes" if g is not None and g < target else "**no**")
        elif kind == "MB":
            t, met = f"≤ {target} MB", ("yes" if g is not None and g <= target else "**no**")
        elif kind == "min":
            t, met = f"≥ {target}", ("yes" if ratio is not None and ratio >= target else "**no**")
        else:
            t, met = f"≤ {target}", ("yes" if ratio is not None and ratio <= target else "**no**")
        label = row
        if any((row, side) in res.notes for side in SIDES):
            said = [", ".join(res.notes.get((row, side), ["?"])) for side in SIDES]
            label = f"{row} [{' / '.join(said)}]"
        print(
            f"| {label} | {fmt(o)} | {fmt(g)} | {fmt(ratio)}{'x' if ratio else ''} | {t} | {met} |"
        )
    print(flush=True)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.1f} GB RAM, load average "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end (the machine is shared)"
    )


def versions() -> str:
    import asyncssh
    import dulwich

    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[-1]
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.split(",")[0]
    return (
        f"git {git}, {ssh}, Python {sys.version.split()[0]}, asyncssh {asyncssh.__version__}, "
        f"dulwich {'.'.join(map(str, dulwich.__version__))}"
    )


# --- the modes -----------------------------------------------------------------------------


# --only: the groups of rows, in the order they run.
GROUPS = {
    "clone": "full clones of small and large (first ever, first after a push, unchanged)",
    "fetch": "incremental and no-op fetch (large)",
    "ls-remote": "ls-remote (large)",
    "push": "push of 20 MB",
    "parallel": "4 clones of large at once",
    "busy": "ls-remote while a large clone runs",
    "first": "first clone ever (huge)",
    "depth": "clone --depth 1, fetch --depth 1 into a shallow clone after a push (huge)",
    "filter": "clone --filter=blob:none and --filter=tree:0 (huge)",
    "increment": "incremental fetch, 10 new commits (huge)",
    "refs": "no-op fetch and ls-remote with 20,000 refs",
    "load": "8, then 32 clients at once, a mixed loop for 60 s a side (large; bench/load.py)",
    "overtime": "2,000 one-commit pushes: costs at 0, 500, 2,000 (large; bench/overtime.py)",
    "receive": "pushes: huge into an empty repository, --mirror of 2,000 refs, 1,000 new refs",
}
HUGE_GROUPS = {"first", "depth", "filter", "increment"}
LARGE_GROUPS = {"clone", "fetch", "ls-remote", "parallel", "busy", "load", "overtime"}
# --load: the load rows with the rows holding issue 18's other targets (CPU per request,
# memory idle and during a clone).
LOAD_GROUPS = ["clone", "fetch", "ls-remote", "load"]
# Everything the gateway keeps in a repository (the gateway-* lists beside the refs, the
# packs' order files under objects/info/gateway), so that its next clone is its first ever.
FIRST_EVER = ("gateway-*", "objects/info/gateway")


def forget_kept(repo_dir: Path, patterns: tuple[str, ...]) -> None:
    """Remove what the gateway keeps in a repository (glob patterns, FIRST_EVER)."""
    for pattern in patterns:
        for kept in repo_dir.glob(pattern):
            if kept.is_dir():
                shutil.rmtree(kept)
            else:
                kept.unlink()


def facts_text(name: str, facts: dict, what: str = "") -> str:
    return (
        f"{name} = {facts['commits']:,} commits, {facts['objects']:,} objects, "
        f"{facts['pack_mb']:.1f} MB pack{what}, {facts['refs']:,} refs"
    )


def main_compare(args, root: Path) -> None:
    """The table; --quick: the small repository stands in for large and huge."""
    groups = args.only or list(GROUPS)
    big = "small" if args.quick else "large"
    huge = "small" if args.quick else "huge"
    names = ["small"]
    if LARGE_GROUPS & set(groups) and big not in names:
        names.append(big)
    if HUGE_GROUPS & set(groups) and huge not in names:
        names.append(huge)
    if "refs" in groups:
        names.append("refs")
    facts = {n: repo_facts(cached_repo(n) / "server.git") for n in names}
    push_mb = 2 if args.quick else 20
    started = time.monotonic()
    sides = Sides.__new__(Sides)
    extra_tables: list[str] = []  # tables of their own (overtime), printed after the main one
    try:
        sides.__init__(root, names)
        if "push" in groups:
            sides.add_repo("push", source="small")
        if "depth" in groups:
            sides.add_repo(f"{huge}-push", source=huge)
        if "overtime" in groups:
            sides.add_repo("overtime", source=big)
            sides.add_repo("overtime-unpushed", source=big)
        (root / "clients").mkdir()
        res = Results()
        idle = {side: tree_kb(sides.server_pid(side))[0] / 1024 for side in SIDES}
        clones: dict[str, Path] | None = None

        def clone_rows() -> None:
            nonlocal clones
            if not args.quick:
                bench_clone(sides, res, "small", args.runs, "full clone (small, s)", memory=False)
            bench_clone(
                sides,
                res,
                big,
                args.runs,
                f"full clone ({big}, first ever, s)",
                memory=True,
                when=", first ever",
                forget=FIRST_EVER,
            )
            bench_clone(
                sides,
                res,
                big,
                args.runs,
                f"full clone ({big}, first after a push, s)",
                memory=True,
                when=", first after a push",
                forget=("gateway-clone-objects",),
            )
            clones = bench_clone(sides, res, big, args.runs, f"full clone ({big}, s)", memory=True)

        def fetch_rows() -> None:
            bench_incremental(sides, res, big, args.runs)
            bench_noop_fetch(sides, res, big, args.runs, clones)

        def first_rows() -> None:
            bench_clone(
                sides,
                res,
                huge,
                args.runs,
                f"full clone ({huge}, first ever, s)",
                memory=True,
                when=", first ever",
                forget=FIRST_EVER,
            )

        def warm_huge() -> None:
            # What the gateway keeps from a repository's first clone, as the rows after
            # would find it in a full run (a gateway that keeps nothing loses 1 clone).
            warm = scratch(sides, "warm") / "c"
            sides.git("clone", "-q", "--no-checkout", sides.url("gateway", huge), str(warm))
            shutil.rmtree(warm.parent, ignore_errors=True)

        def depth_rows() -> None:
            shallow = bench_depth_clone(sides, res, huge, args.runs)
            bench_shallow_fetch(sides, res, huge, args.runs, shallow)

        def filter_rows() -> None:
            bench_filter_clone(sides, res, huge, args.runs, "blob:none")
            bench_filter_clone(sides, res, huge, args.runs, "tree:0")

        def overtime_rows() -> None:
            (root / "overtime").mkdir()
            pusher = Pusher(root / "overtime", cached_repo(big) / "server.git")
            (root / "overtime-unpushed").mkdir()
            unpushed = Pusher(root / "overtime-unpushed", cached_repo(big) / "server.git")
            rows = overtime.Overtime(
                sides, "overtime", pusher, alternate, fail, log, ("overtime-unpushed", unpushed)
            )
            try:
                rows.run(args.pushes, args.runs)
            finally:
                extra_tables.append(
                    rows.table(
                        args.pushes,
                        f"Costs over time (group overtime): {args.pushes:,} one-commit pushes "
                        f"to a copy of {big} on each side, the same commits to both; medians "
                        f"at each point (ls-remote of 5, the others of {args.runs}; the "
                        f"{overtime.PER_ROUND * args.runs} timed pushes count among the "
                        "pushes). C git with its default receive settings (gc --auto).",
                    )
                )

        def refs_rows() -> None:
            bench_noop_fetch(sides, res, "refs", args.runs)
            what = f": {facts['refs']['refs']:,} refs"
            bench_ls_remote(sides, res, "refs", count=3 * args.runs, what=what)

        rows = {
            "clone": clone_rows,
            "fetch": fetch_rows,
            "ls-remote": lambda: bench_ls_remote(sides, res, big),
            "push": lambda: bench_push(sides, res, args.runs, push_mb),
            "parallel": lambda: bench_parallel_clones(sides, res, big, args.runs),
            "busy": lambda: bench_ls_remote_during_clone(sides, res, big, args.runs),
            "first": first_rows,
            "depth": depth_rows,
            "filter": filter_rows,
            "increment": lambda: bench_incremental(sides, res, huge, args.runs),
            "refs": refs_rows,
            "load": lambda: load.bench_load(
                sides,
                res,
                big,
                cached_repo(big),
                args.load_seconds,
                Sampler,
                alternate,
                fail,
                log,
            ),
            "overtime": overtime_rows,
            "receive": lambda: receive.bench_receive(sides, res, args.runs, args.quick),
        }
        todo = set(groups)
        if huge == big and "clone" in todo:
            todo.discard("first")  # --quick: the same small first-ever clones again
        if HUGE_GROUPS & todo and "first" not in todo:
            rows["first"], todo = warm_huge, {*todo, "first"}
        for group in GROUPS:
            if group not in todo:
                continue
            try:
                rows[group]()
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                # A git command that failed: said loudly, the rows already measured kept.
                fail(f"the {group} rows stopped: {e}")
        for side in SIDES:
            res.add("server idle memory before the clones (process tree RSS, MB)", side, idle[side])
    finally:
        sides.stop()
    elapsed = time.monotonic() - started
    described = [facts_text("small", facts["small"])]
    if big in facts and big != "small":
        described.append(facts_text(big, facts[big], " (a 16 KiB incompressible blob per commit)"))
    if huge in facts and huge != "small":
        described.append(
            facts_text(
                huge,
                facts[huge],
                " (a tree of 4 levels and ~2,900 files, 1-3 of them changed a commit; "
                "a tag every 100 commits, annotated and lightweight in turn)",
            )
        )
    if "refs" in facts:
        described.append(
            facts_text(
                "refs",
                facts["refs"],
                " (small's history, 18,000 refs/pull/N/head of one empty commit each and "
                "1,500 tags, half annotated; packed but for the last 401 pull heads and 34 tags)",
            )
        )
    caption = (
        f"Medians of {args.runs} runs ({'ls-remote: 20; no-op fetch: ' + str(3 * args.runs)}). "
        f"Rows: {', '.join(groups)}. Repositories: {'; '.join(described)}; gc'ed by C git "
        "(commit-graph, bitmap). sshd runs commands with bash told to skip "
        "~/.bashrc (root's runs pyenv init here: +0.17 s a command). "
        f"Same client for both: `ssh -o Ciphers={CIPHER} -o KexAlgorithms={KEX} "
        f"-o HostKeyAlgorithms={HOSTKEY_ALG}`, ed25519 user key. The client asks for protocol "
        "v2 (git sends GIT_PROTOCOL=version=2, sshd has `AcceptEnv GIT_PROTOCOL`; C git has "
        "uploadpack.allowFilter, set in sshd's environment, as hosted servers do); the "
        "protocol each side answered in, read from a GIT_TRACE_PACKET of one request of the "
        "row, is in brackets after the row, OpenSSH's / the gateway's (pushes are v0 on both: "
        "git has no v2 push; the concurrent rows make the same requests as the rows above "
        "them). Clones with --no-checkout then `git fsck --full` (partial "
        "clones: `git fsck`; beside their rows, 'full pack' or the ids `git rev-list --objects "
        "--all --missing=print` says are missing: tree:0 hides all below the root trees); gateway "
        f"with default settings (spare_workers = {Settings().spare_workers}). Client and "
        f"servers on one machine over loopback: {machine()}. {versions()}. "
        + (load.describe(args.load_seconds) + " " if "load" in groups else "")
        + f"Run took {elapsed / 60:.1f} min."
    )
    print_table(res, caption)
    for table in extra_tables:
        print(table, flush=True)


async def connect(host: str, port: int, user: str, key: Path, local: str):
    import asyncssh

    return await asyncssh.connect(
        host,
        port,
        username=user,
        client_keys=[str(key)],
        known_hosts=None,
        local_addr=(local, 0),
        encryption_algs=[CIPHER],
        kex_algs=[KEX],
        server_host_key_algs=[HOSTKEY_ALG],
        agent_path=None,
        config=[],
    )


async def connect_times(port: int, user: str, key: Path, n: int = 20) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn = await connect("127.0.0.1", port, user, key, "127.0.0.1")
        times.append(time.perf_counter() - started)
        conn.close()
        await conn.wait_closed()
    return statistics.median(times)


async def hold_idle(sides: Sides, side: str, total: int, batch: int, res: Results) -> None:
    """Open `total` authenticated connections that stay idle, in batches, from four
    loopback source addresses (250 each: under the gateway's default per-address cap of
    300); print the server tree's memory as they grow, then time a new ls-remote."""
    port = sides.gw.port if side == "gateway" else sides.ossh.port
    user = "git" if side == "gateway" else sides.ossh.login
    pid = sides.server_pid(side)
    base_rss, _ = tree_kb(pid)
    base_pss, _ = tree_kb(pid, "Pss:")
    conns = []
    sources = [f"127.0.0.{i}" for i in range(2, 6)]
    started = time.monotonic()
    try:
        while len(conns) < total:
            n = min(batch, total - len(conns))
            made = await asyncio.gather(
                *(
                    connect(
                        "127.0.0.1",
                        port,
                        user,
                        sides.user.key,
                        sources[(len(conns) + i) % len(sources)],
                    )
                    for i in range(n)
                ),
                return_exceptions=True,
            )
            for m in made:
                if isinstance(m, BaseException):
                    fail(f"idle connection {len(conns)} to {side} failed: {m!r}")
                    raise m
                conns.append(m)
            if len(conns) % 250 == 0:
                rss, procs = tree_kb(pid)
                pss, _ = tree_kb(pid, "Pss:")
                log(
                    f"{side}: {len(conns)} idle connections: tree RSS {rss / 1024:.0f} MB, "
                    f"PSS {pss / 1024:.0f} MB, {procs} processes "
                    f"({time.monotonic() - started:.0f} s)"
                )
        await asyncio.sleep(2)
        rss, procs = tree_kb(pid)
        pss, _ = tree_kb(pid, "Pss:")
        alive = sum(1 for c in conns if not c.is_closed())
        if alive != total:
            fail(f"{side}: only {alive} of {total} idle connections still open")
        latencies = [sides.timed_git("ls-remote", sides.url(side, "small")) for _ in range(5)]
        res.add(f"server memory with {total} idle connections (tree RSS, MB)", side, rss / 1024)
        res.add("  per connection, RSS (KB)", side, (rss - base_rss) / total)
        res.add("  per connection, PSS (KB)", side, (pss - base_pss) / total)
        res.add("  server processes", side, procs)
        res.add(
            f"ls-remote with {total} idle connections open (median of 5, s)",
            side,
            statistics.median(latencies),
        )
        log(
            f"{side}: {total} idle: RSS {rss / 1024:.0f} MB, PSS {pss / 1024:.0f} MB, "
            f"ls-remote {statistics.median(latencies):.3f} s"
        )
    finally:
        for c in conns:
            c.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
        await asyncio.sleep(2)


def start_postgres_gateway(sides: Sides, root: Path) -> tuple[Gateway | None, str | None]:
    """A second `gateway serve` of the same installation on PostgreSQL, moved there the
    way an operator would (`gateway db copy --to`), serving the same repositories
    directory (shared storage, as several gateways do); (None, None) if no PostgreSQL
    server answers (testkit/database.py: GATEWAY_TEST_DATABASE_URL or the local one)."""
    if not database.reachable():
        log("no PostgreSQL server answers: the PostgreSQL rows are left out")
        return None, None
    url = database.new_postgres_database(durable=True)  # the server's own defaults
    sides.gw.cli("db", "copy", "--to", url)
    pg_gw = Gateway(root / "gateway-postgresql", sqlite=True)
    pg_gw.env["GATEWAY_DATABASE_URL"] = url
    pg_gw.data.mkdir(mode=0o700)
    (pg_gw.data / "repos").symlink_to(sides.gw.data / "repos")
    pg_gw.start()
    return pg_gw, url


def main_scale(args, root: Path) -> None:
    """Two rounds of: 10 keys, then 100,000 keys and 10,000 repositories (rows inserted,
    then deleted again), on sshd, the gateway on SQLite and, when a PostgreSQL server
    answers, the gateway on PostgreSQL; interleaved, so that load from others falls on
    every figure alike. Then the idle connections, with the large SQLite database."""
    started = time.monotonic()
    sides = Sides.__new__(Sides)
    pg_gw, pg_url = None, None
    try:
        sides.__init__(root, ["small"])
        db_path = sides.gw.data / "gateway.db"
        res = Results()
        # The 10-key figure: the benchmark user's key and 9 others.
        scale_rows.insert(db_path, keys=9, repos=9, accounts=9, workspaces=1, prefix="ten", seed=12)
        pg_gw, pg_url = start_postgres_gateway(sides, root)
        stores: list[Path | str] = [db_path, *([pg_url] if pg_url else [])]
        ports = {"openssh": sides.ossh.port, "gateway": sides.gw.port}
        if pg_gw is not None:
            ports[POSTGRESQL] = pg_gw.port
        for round_ in range(2):
            for label, big in (("10 keys", False), ("100,000 keys, 10,000 repos", True)):
                if big:
                    # ours is the last line: the worst case
                    sides.ossh.write_authorized_keys(100_000 - 1)
                    for where in stores:
                        counts = scale_rows.insert(where, keys=100_000 - 10, repos=10_000 - 10)
                        log(f"inserted scale rows into {where}: {counts}")
                order = list(ports) if round_ % 2 == 0 else list(ports)[::-1]
                for side in order:
                    user = sides.ossh.login if side == "openssh" else "git"
                    url = (
                        sides.url(side, "small")
                        if side != POSTGRESQL
                        else f"ssh://git@127.0.0.1:{ports[side]}/{sides.paths['small']}.git"
                    )
                    res.add(
                        f"connection + auth, {label} (asyncssh client, median of 10, s)",
                        side,
                        asyncio.run(connect_times(ports[side], user, sides.user.key, 10)),
                    )
                    for _ in range(10):
                        res.add(
                            f"connection + auth + ls-remote, {label} (median of 20, s)",
                            side,
                            sides.timed_git("ls-remote", url),
                        )
                    log(f"round {round_ + 1}: {label} {side} done")
                if big:
                    sides.ossh.write_authorized_keys(9)
                    for where in stores:
                        scale_rows.delete(where)
        if pg_gw is not None:
            pg_gw.stop()
        scale_rows.insert(db_path, keys=100_000 - 10, repos=10_000 - 10)
        for side in SIDES:
            asyncio.run(hold_idle(sides, side, args.idle, 8, res))
    finally:
        if pg_gw is not None:
            pg_gw.stop()
        sides.stop()
        database.drop(pg_url)
    caption = (
        f"Scale (--scale). OpenSSH: an AuthorizedKeysFile of 10 lines, then of 100,000 lines with "
        f"the benchmark key last (OpenSSH reads it on every login). Gateway: its SQLite database "
        f"with 10 keys, then with 100,000 keys (10,000 accounts, 10 keys each) and 10,000 "
        f"repository rows (1,000 workspaces), written directly in one transaction "
        f"(bench/scale_rows.py); two rounds of both, interleaved. Then {args.idle} idle "
        f"authenticated connections (the gateway with the 100,000 keys, sshd with the 10-line "
        f"file) held by the benchmark's asyncssh client from 127.0.0.2-5, opened 8 at a time; "
        f"memory is the server process tree (sshd: the listener and every session's processes; "
        f"gateway: the server and its spare workers), per connection = (with - without) / "
        f"{args.idle}. Same ssh options as above. {machine()}. {versions()}. "
        f"Run took {(time.monotonic() - started) / 60:.1f} min."
    )
    print_table(res, caption, targets=False)
    if pg_url is not None:
        print_backends(res)


POSTGRESQL = "gateway on PostgreSQL"
BACKEND_TARGET = 1.1  # issue 19: PostgreSQL's figure within 10% of SQLite's


def print_backends(res: Results) -> None:
    """The gateway on PostgreSQL beside itself on SQLite, for the --scale rows."""
    print(
        "Scale on PostgreSQL (--scale): the same gateway and installation, its database moved "
        "with `gateway db copy --to` into a new database on the local PostgreSQL server (a "
        "second `gateway serve`, default pool of database_pool_size connections, serving the "
        "same repositories directory), the same rows inserted there (asyncpg, then "
        "ANALYZE); measured in the same rounds as the table above.\n"
    )
    print(
        "| measure | gateway on SQLite | gateway on PostgreSQL | PostgreSQL / SQLite"
        " | target | met |"
    )
    print("|---|---|---|---|---|---|")
    for row in res.order:
        sq, pg = res.median(row, "gateway"), res.median(row, POSTGRESQL)
        if sq is None or pg is None:
            continue
        ratio = pg / sq if sq else None
        target = "100,000 keys" in row and "ls-remote" in row
        met = (
            ("yes" if ratio is not None and ratio <= BACKEND_TARGET else "**no**") if target else ""
        )
        print(
            f"| {row} | {fmt(sq)} | {fmt(pg)} | {fmt(ratio)}{'x' if ratio else ''} "
            f"| {f'≤ {BACKEND_TARGET}' if target else '-'} | {met} |"
        )
    print(flush=True)


def upload_pack_request(server: Path) -> bytes:
    """What `git clone` (non-interactive, so no-progress) sends to upload-pack v0."""
    shas = []
    for line in git_local(
        "--git-dir", str(server), "for-each-ref", "--format=%(objectname)"
    ).split():
        if line not in shas:
            shas.append(line)
    caps = (
        b" multi_ack_detailed side-band-64k thin-pack no-progress include-tag ofs-delta"
        b" agent=git/2.39.5"
    )
    lines = [pkt(b"want " + shas[0].encode() + caps + b"\n")]
    lines += [pkt(b"want " + s.encode() + b"\n") for s in shas[1:]]
    return b"".join(lines) + b"0000" + pkt(b"done\n")


def main_profile(args, root: Path) -> None:
    name = "small" if args.quick else "large"
    server = root / f"{name}.git"
    shutil.copytree(cached_repo(name) / "server.git", server, symlinks=True)
    request = root / "request"
    request.write_bytes(upload_pack_request(server))
    python = sys.executable
    env = {**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.pop("GATEWAY_LOG_FD", None)

    def run(label: str, argv: list[str]) -> float:
        out = root / f"out-{label}"
        started = time.perf_counter()
        with open(request, "rb") as stdin, open(out, "wb") as stdout:
            result = subprocess.run(
                argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=root
            )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            fail(
                f"{label} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace')[-800:]}"
            )
        log(f"{label}: {elapsed:.2f} s, {out.stat().st_size / 1e6:.1f} MB out")
        out.unlink()
        return elapsed

    def forgetting(files: tuple[str, ...], label: str, argv: list[str]) -> float:
        forget_kept(server, files)
        return run(label, argv)

    first_ever = FIRST_EVER
    after_push = ("gateway-clone-objects",)
    worker = [python, "-m", "gateway.git.workers.worker", "git-upload-pack", str(server)]
    c_git = [run("C git upload-pack", ["git-upload-pack", str(server)]) for _ in range(3)]
    firsts = [forgetting(first_ever, "gateway worker, first ever", worker) for _ in range(3)]
    afters = [
        forgetting(after_push, "gateway worker, first after a push", worker) for _ in range(3)
    ]
    agains = [run("gateway worker, unchanged", worker) for _ in range(3)]
    prof = root / "worker.prof"
    profiled = forgetting(
        first_ever,
        "gateway worker under cProfile, first ever",
        [python, "-m", "cProfile", "-o", str(prof), *worker[1:]],
    )
    print(
        f"\nProfile of one full clone of the {name} repository in the gateway's worker "
        f"(`python -m gateway.git.workers.worker git-upload-pack REPO` with a captured request "
        f"on stdin, output to a file).\n"
        f"C git upload-pack: median {statistics.median(c_git):.2f} s. "
        f"Gateway worker, medians: {statistics.median(firsts):.2f} s for the first clone ever "
        f"(every commit's trees diffed), {statistics.median(afters):.2f} s for the first after a "
        f"push (the commits walked, their kept lists read), {statistics.median(agains):.2f} s for "
        f"a clone of an unchanged repository (the last clone's list read); the first clone ever "
        f"under cProfile: "
        f"{profiled:.1f} s. {machine()}.\n"
    )
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(str(prof), stream=text)
        stats.strip_dirs().sort_stats(order).print_stats(25)
        lines = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        print(f"Top 25 by {order}:\n```")
        print("\n".join(lines[start : start + 26]))
        print("```\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each measure (median)")
    parser.add_argument(
        "--quick", action="store_true", help="the small repository only (a smoke test)"
    )
    parser.add_argument(
        "--scale", action="store_true", help="100,000 keys, 10,000 repos, idle connections"
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle connections for --scale")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="",
        choices=["", *profiles.KINDS, "all"],
        metavar="KIND",
        help="profile the worker for one full clone (a captured request); with KIND, for "
        "one kind of request made by a real client: " + ", ".join(profiles.KINDS) + " or all",
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="only the load rows and those with issue 18's other targets: --only "
        + ",".join(LOAD_GROUPS),
    )
    parser.add_argument(
        "--load-seconds", type=float, default=60, help="how long each load run lasts"
    )
    parser.add_argument(
        "--pushes", type=int, default=2000, help="one-commit pushes of the overtime rows"
    )
    parser.add_argument(
        "--only",
        type=lambda text: [g.strip() for g in text.split(",") if g.strip()],
        help="comma-separated groups of rows to run: " + ", ".join(GROUPS),
    )
    parser.add_argument(
        "--generate",
        metavar="NAME",
        choices=[*REPOS, *NEW_REPOS],
        help="only make (or find) the cached repository NAME and print its server.git path",
    )
    args = parser.parse_args()
    if args.load:
        args.only = [*(args.only or []), *(g for g in LOAD_GROUPS if g not in (args.only or []))]
    if args.pushes < 1:
        parser.error("--pushes: at least 1")
    if args.only and (unknown := set(args.only) - set(GROUPS)):
        parser.error(
            f"--only: unknown group(s) {', '.join(sorted(unknown))}; groups: "
            + "; ".join(f"{g}: {what}" for g, what in GROUPS.items())
        )
    if args.generate:
        server = cached_repo(args.generate) / "server.git"
        log(f"{args.generate}: {repo_facts(server)}")
        print(server)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:  # 1,000 connections on each end; the servers inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    # SIGTERM (and SIGINT, which a shell leaves ignored in a background job) end the run
    # through the finally blocks below, which stop the servers and clients it started.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    log(f"working in {root}")
    try:
        if args.profile == "":
            main_profile(args, root)
        elif args.profile:
            kinds = list(profiles.KINDS) if args.profile == "all" else [args.profile]
            name = "small" if args.quick else "large"
            profiles.profile_kinds(kinds, root, name, cached_repo(name), Pusher, machine(), log)
        elif args.scale:
            main_scale(args, root)
        else:
            main_compare(args, root)
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                kill_tree(proc)
        shutil.rmtree(root, ignore_errors=True)
    if FAILURES:
        print(f"\n!!! {len(FAILURES)} FAILURE(S):", *FAILURES, sep="\n- ", file=sys.stderr)
        sys.exit(1)


# The receive rows (bench/receive.py) use this module's helpers as `compare`, which is
# this module only if a script run registers itself under that name first.
sys.modules.setdefault("compare", sys.modules[__name__])
import receive  # noqa: E402

if __name__ == "__main__":
    main()
