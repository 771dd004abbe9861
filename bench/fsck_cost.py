"""What the fsck of received objects costs a push (gateway/git/receive/fsck.py).

    .venv/bin/python bench/fsck_cost.py [--commits 6000] [--push [--runs 3]]

Generates a history with `git fast-import` (fixed seed; each commit changes three files
in a tree three levels deep, so about eight new objects a commit), repacks it into one
pack with deltas as `git push` would send it, and receives that pack as a push does
(packreader.receive_pack, the new objects seen as it is indexed) into a quarantine in
front of an empty repository, with fsck and without: every object is new, and the
difference is what fsck costs. Then the same pack in front of a repository that already
has every object: nothing is new, the cost of the lookups alone. With `--push`, also
times a real `git push` of the whole history to a private gateway with `fsck_objects` on
and off, alternately, and prints medians.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dulwich.object_store import DiskObjectStore

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repo root holds testkit/
from gateway.git.receive import fsck, packreader, quarantine  # noqa: E402
from gateway.git.receive.connectivity import Links  # noqa: E402
from gateway.git.receive.newobjects import NewObjects  # noqa: E402


def generate(repo: Path, commits: int) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    rng = random.Random(7)
    lines = []
    for n in range(commits):
        lines.append(
            f"commit refs/heads/main\nmark :{n + 1}\n"
            f"committer Bench <bench@example.com> {1700000000 + n} +0000\n"
            f"data {len(f'c{n}')}\nc{n}\n"
        )
        if n:
            lines.append(f"from :{n}\n")
        for _ in range(3):
            path = f"d{rng.randrange(20)}/e{rng.randrange(20)}/f{rng.randrange(10)}.txt"
            body = f"{n} {rng.random()}\n" * 5
            lines.append(f"M 100644 inline {path}\ndata {len(body)}\n{body}\n")
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input="".join(lines).encode(), check=True
    )
    subprocess.run(["git", "repack", "-a", "-d", "-q"], cwd=repo, check=True)


def timed(pack: Path, store: Path, fsck_on: bool = True) -> tuple[float, int]:
    """Seconds to receive `pack` in front of `store` as a push does; fsck's problems."""
    objects, data = DiskObjectStore(str(store)), pack.read_bytes()
    q = quarantine.create(str(store))
    try:
        seen = NewObjects(objects, Links([]), fsck.Checker() if fsck_on else None)
        start = time.perf_counter()
        packreader.receive_pack(q, io.BytesIO(data).read, None, None, visit=seen)
        problems = seen.finish(q)
        return time.perf_counter() - start, len(problems)
    finally:
        quarantine.remove(q)


def push_seconds(commits_repo: Path, toml: str, work: Path) -> float:
    from testkit import Gateway

    g = Gateway(work)
    g.cli("init")
    (g.data / "gateway.toml").write_text(toml)
    g.start()
    try:
        user = g.user()
        ws = g.workspace((user, "write"))
        path = g.repo(ws)
        env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(user.key))}
        start = time.perf_counter()
        subprocess.run(
            ["git", "push", "-q", g.url(path), "main"],
            cwd=commits_repo,
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start
    finally:
        g.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=6000)
    parser.add_argument("--push", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-fsck-bench-") as tmp:
        tmp = Path(tmp)
        repo = tmp / "history.git"
        t = time.perf_counter()
        generate(repo, args.commits)
        count = subprocess.run(
            ["git", "count-objects", "-v"], cwd=repo, capture_output=True, text=True
        ).stdout
        objects = int(next(ln.split()[1] for ln in count.splitlines() if ln.startswith("in-pack")))
        kinds = subprocess.run(
            "git cat-file --batch-all-objects --batch-check='%(objecttype)' | sort | uniq -c",
            shell=True,
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout.split()
        print(
            f"history: {args.commits} commits, {objects} objects ({' '.join(kinds)}), "
            f"made in {time.perf_counter() - t:.1f} s"
        )
        empty = tmp / "empty.git"
        subprocess.run(["git", "init", "-q", "--bare", str(empty)], check=True)
        pack = next((repo / "objects" / "pack").glob("*.pack"))
        seconds, problems = timed(pack, empty / "objects")
        print(f"| all {objects} objects new | {seconds:.2f} s | {problems} problems |")
        seconds, _ = timed(pack, empty / "objects", fsck_on=False)
        print(f"| all {objects} objects new, without fsck | {seconds:.2f} s | - |")
        seconds, problems = timed(pack, repo / "objects")
        print(f"| none new (every object already stored) | {seconds:.2f} s | {problems} problems |")
        if args.push:
            times: dict[str, list[float]] = {"on": [], "off": []}
            for run in range(args.runs):
                for setting in ["on", "off"] if run % 2 == 0 else ["off", "on"]:
                    toml = "" if setting == "on" else "fsck_objects = false\n"
                    times[setting].append(push_seconds(repo, toml, tmp / f"{setting}{run}"))
            for setting, values in times.items():
                print(
                    f"| git push of the history, fsck_objects {setting} (median of "
                    f"{len(values)}) | {statistics.median(values):.1f} s |"
                )


if __name__ == "__main__":
    main()
