"""Peak memory of the gateway's process tree while it receives a large push.

    .venv/bin/python bench/push_memory.py [--megabytes 500]

Starts a private `gateway serve` on a free loopback port, pushes a repository holding
MEGABYTES of incompressible blobs, samples the resident memory of the server and its
worker processes every 50 ms, and prints a table: idle size, peak size, the difference,
the push's duration. The Push pipeline issue's target: the peak stays within 150 MB of
the idle size (the pack streams to disk).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root holds testkit/
from testkit import Gateway

BLOB_MB = 10


def rss_kb(pid: int, field: str = "VmRSS:") -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith(field)), 0)


def tree_rss_kb(pid: int, field: str = "VmRSS:") -> int:
    """Resident memory of a process and all its descendants, in KiB. `RssAnon:` counts
    only memory of its own, without file pages mapped from the page cache (packs)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(field):
                total += int(line.split()[1])
        stack.extend(int(c) for c in children)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=500)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    gw = Gateway(root)
    gw.cli("init")
    gw.start()
    try:
        user = gw.user("bench")
        ws = gw.workspace((user, "write"))
        path = gw.repo(ws, "big")
        work = root / "work"
        subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True, env=gw.env)
        for i in range(max(1, args.megabytes // BLOB_MB)):
            with open(work / f"blob{i:04d}.bin", "wb") as f:
                f.write(os.urandom(BLOB_MB * 1024 * 1024))
        subprocess.run(["git", "add", "."], cwd=work, check=True, env=gw.env)
        subprocess.run(["git", "commit", "-qm", "big"], cwd=work, check=True, env=gw.env)
        time.sleep(1)
        idle = tree_rss_kb(gw.proc.pid)
        idle_anon = tree_rss_kb(gw.proc.pid, "RssAnon:")
        peak, server_peak, peak_anon = idle, rss_kb(gw.proc.pid), idle_anon
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, server_peak, peak_anon
            while not done.is_set():
                peak = max(peak, tree_rss_kb(gw.proc.pid))
                peak_anon = max(peak_anon, tree_rss_kb(gw.proc.pid, "RssAnon:"))
                server_peak = max(server_peak, rss_kb(gw.proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.monotonic()
        gw.git(user, "push", gw.url(path), "main", cwd=work)
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
        print(f"| push of {args.megabytes} MB (incompressible) | value |")
        print("|---|---|")
        print(f"| server tree idle RSS | {idle / 1024:.0f} MB |")
        print(f"| server tree peak RSS during push | {peak / 1024:.0f} MB |")
        print(f"| of which the server process alone | {server_peak / 1024:.0f} MB |")
        print(f"| peak - idle | {(peak - idle) / 1024:.0f} MB (target: within 150 MB) |")
        print(
            f"| the same, anonymous memory only (no mapped pack pages) | "
            f"{(peak_anon - idle_anon) / 1024:.0f} MB |"
        )
        print(f"| push duration | {elapsed:.1f} s |")
    finally:
        gw.stop()
        subprocess.run(["rm", "-rf", str(root)])


if __name__ == "__main__":
    main()
