"""`bench/compare.py --profile KIND`: where the gateway's worker spends its CPU, per kind.

    .venv/bin/python bench/compare.py --profile ls-remote|up-to-date-fetch|
        incremental-fetch|clone|shallow-clone|push|all

A real git client runs the request against a copy of the `large` repository over the
file:// transport, with `--upload-pack` / `--receive-pack` pointing at this module run as
a script: it serves the request exactly as a worker does (gateway.git.workers.worker's
`serve`, a Job with the default settings and the client's GIT_PROTOCOL, which git passes
to local transports too) under cProfile, timed by CPU time (time.process_time), so
time spent waiting on the client is not counted. Beside it the same command with C git's
upload-pack / receive-pack (and once more through a wrapper that reads C git's CPU). No
SSH on either side: this is the worker's share only (the server process's relay and the
SSH layer are not in it). Each kind: one untimed warm-up (what the gateway keeps between
requests is then in place, as on a busy server), then 3 timed runs each side, then one
profiled run; printed: the medians (wall time, and the CPU of the serving process alone),
the top 25 functions by own time and by cumulative time.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KINDS = (
    "ls-remote",
    "up-to-date-fetch",
    "incremental-fetch",
    "clone",
    "shallow-clone",
    "push",
)
HERE = Path(__file__).resolve().parent


def serve_profiled(profile: str, cpu_file: str, service: str, repo_dir: str) -> int:
    """The worker's serving of one request (as `worker.main` does for a job), profiled
    when `profile` is not "-"; its CPU seconds written to `cpu_file`."""
    sys.path.insert(0, str(HERE.parent))
    from gateway.config import Settings
    from gateway.git import protocol
    from gateway.git.workers.job import Job
    from gateway.git.workers.worker import serve

    settings = Settings()
    job = Job(
        service=service,
        repo_dir=repo_dir,
        max_push_bytes=settings.max_push_bytes,
        max_object_bytes=settings.max_object_bytes,
        max_push_inflated_bytes=settings.max_push_inflated_bytes,
        fsck_objects=settings.fsck_objects,
        git_protocol=protocol.from_environment(os.environ),
    )
    os.chdir(repo_dir)
    stdin = io.FileIO(0, "rb", closefd=False)
    stdout = io.FileIO(1, "wb", closefd=False)
    # CPU time, not wall time: waiting for the client's reads is not the server's cost.
    profiler = cProfile.Profile(time.process_time) if profile != "-" else None
    if profiler is not None:
        profiler.enable()
    try:
        serve(job, stdin, stdout)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        Path(cpu_file).write_text(json.dumps(usage.ru_utime + usage.ru_stime))
    return 0


def c_git_timed(cpu_file: str, service: str, repo_dir: str) -> int:
    """C git's SERVICE on REPO_DIR, its CPU seconds (it and its children) to `cpu_file`."""
    code = subprocess.run([service, repo_dir]).returncode
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(cpu_file).write_text(json.dumps(usage.ru_utime + usage.ru_stime))
    return code


def shim(profile: Path | None, cpu_file: Path, service: str) -> str:
    """The --upload-pack / --receive-pack value (git appends the repository's path)."""
    return " ".join(
        [
            sys.executable,
            str(HERE / "profiles.py"),
            str(profile) if profile else "-",
            str(cpu_file),
            service,
        ]
    )


class Kind:
    """One request kind: how to prepare its client and what to run."""

    def __init__(self, root: Path, repo: Path, base: Path, pusher_factory: Callable) -> None:
        self.root, self.repo, self.base = root, repo, base
        self.url = f"file://{repo}"
        self.pusher = pusher_factory(root, repo)
        self.env = {
            **os.environ,
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "protocol.version",
            "GIT_CONFIG_VALUE_0": "2",
        }

    def client(self, name: str, fetched: bool) -> Path:
        from load import borrowing_copy

        dest = self.root / name
        shutil.rmtree(dest, ignore_errors=True)
        borrowing_copy(self.base, dest, self.url)
        if fetched:
            git(["-C", str(dest), "fetch", "-q", "origin"], self.env)
        return dest

    def argv(self, kind: str, program: str | None) -> list[str]:
        """The client's git command; `program`: the --upload-pack / --receive-pack one
        (None: C git's)."""
        up = [f"--upload-pack={program}"] if program else []
        dest = self.root / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        if kind == "ls-remote":
            return ["ls-remote", *up, self.url]
        if kind == "up-to-date-fetch":
            return ["-C", str(self.client("noop", fetched=True)), "fetch", "-q", *up, "origin"]
        if kind == "incremental-fetch":
            return ["-C", str(self.client("incr", fetched=False)), "fetch", "-q", *up, "origin"]
        if kind == "clone":
            return ["clone", "-q", "--no-checkout", *up, self.url, str(dest)]
        if kind == "shallow-clone":
            return ["clone", "-q", "--no-checkout", "--depth", "1", *up, self.url, str(dest)]
        self.pusher.commit()
        receive = (
            [f"--receive-pack={program.replace('git-upload-pack', 'git-receive-pack')}"]
            if program
            else []
        )
        return [
            "--git-dir",
            str(self.pusher.git_dir),
            "push",
            "-q",
            *receive,
            self.url,
            "main:refs/heads/main",
        ]


def git(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(["git", *argv], env=env, capture_output=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(
            f"git {' '.join(argv[:4])} failed: {result.stderr.decode(errors='replace')[-800:]}"
        )
    return time.perf_counter() - started


def top(prof: Path, order: str, count: int = 25) -> str:
    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.strip_dirs().sort_stats(order).print_stats(count)
    lines = text.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join(lines[start : start + count + 1])


def profile_kinds(
    kinds: list[str],
    root: Path,
    name: str,
    cached: Path,
    pusher_factory: Callable,
    machine: str,
    log: Callable[[str], None],
) -> None:
    """`cached`: the cached repository directory (server.git and base)."""
    repo = root / "large.git"
    shutil.copytree(cached / "server.git", repo, symlinks=True)
    setup = Kind(root, repo, cached / "base", pusher_factory)
    cpu_file = root / "cpu.json"
    for kind in kinds:
        prof = root / f"{kind}.prof"
        plain = shim(None, cpu_file, "git-upload-pack")
        setup.env["GIT_TRACE_PACKET"] = str(root / "trace")
        git(setup.argv(kind, plain), setup.env)  # warm-up, traced: the protocol spoken
        setup.env.pop("GIT_TRACE_PACKET")
        trace = (root / "trace").read_text(errors="replace")
        (root / "trace").unlink()
        spoken = "v2" if "< version 2" in trace else "v0"
        c_git, c_cpus = [], []
        timed_c_git = " ".join(
            [sys.executable, str(HERE / "profiles.py"), "--c-git", str(cpu_file), "git-upload-pack"]
        )
        for _ in range(3):
            c_git.append(git(setup.argv(kind, None), setup.env))
            git(setup.argv(kind, timed_c_git), setup.env)
            c_cpus.append(json.loads(cpu_file.read_text()))
        walls, cpus = [], []
        for _ in range(3):
            walls.append(git(setup.argv(kind, plain), setup.env))
            cpus.append(json.loads(cpu_file.read_text()))
        profiled = git(setup.argv(kind, shim(prof, cpu_file, "git-upload-pack")), setup.env)
        print(
            f"\n### --profile {kind}\n\n{kind} of the {name} repository over file:// "
            f"(protocol {spoken} for the gateway's worker), medians of 3: C git "
            f"{statistics.median(c_git):.3f} s, its CPU {statistics.median(c_cpus):.3f} s; "
            "the gateway's worker "
            f"{statistics.median(walls):.3f} s, of which its own CPU "
            f"{statistics.median(cpus):.3f} s (Python start-up and imports included: a "
            f"spare worker has them done before the request); under cProfile "
            f"{profiled:.2f} s. {machine}\n"
        )
        for order in ("tottime", "cumulative"):
            print(f"Top 25 by {order}:\n```\n{top(prof, order)}\n```\n", flush=True)
        log(f"profiled {kind}")


if __name__ == "__main__":
    # git runs: profiles.py PROFILE CPU_FILE SERVICE REPO_DIR (or --c-git CPU_FILE ...)
    if sys.argv[1] == "--c-git":
        sys.exit(c_git_timed(*sys.argv[2:5]))
    sys.exit(serve_profiled(*sys.argv[1:5]))
