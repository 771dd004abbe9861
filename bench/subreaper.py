"""Run a server under a child subreaper, so that every CPU second it causes is counted.

    python bench/subreaper.py REPORT -- COMMAND [ARG...]

sshd's privileged monitor exits before its session's child is reaped, so the git
processes of a session are orphaned and re-parented; their CPU then reaches no live
process's cutime in the sshd tree, and summing that tree's counters misses most of C
git's work. This wrapper makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
orphans anywhere below it are re-parented to it rather than to init. It starts COMMAND,
reaps every child it gets with wait4, adds their rusage up, and rewrites REPORT (JSON:
COMMAND's pid, processes reaped, their user+system CPU seconds) after each reap: the totals
are current whenever they are read. SIGTERM, SIGINT and SIGHUP are passed on to COMMAND;
once COMMAND is gone it kills the orphans still left and exits with COMMAND's status.

A measurement's server CPU is then the change in (this report's total + the live
processes below the wrapper: each one's utime+stime+cutime+cstime); `ReapedServer` in
this module reads both. The wrapper's own CPU (its wait loop) is not counted; nor is its
memory (the benchmarks measure memory on COMMAND's process tree).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
HERE = Path(__file__).resolve().parent


def write_report(path: Path, server: int, reaped: int, cpu: float) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"server": server, "reaped": reaped, "cpu": cpu}))
    os.replace(tmp, path)  # a reader sees the old totals or the new ones, never half


def run(report: Path, argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"subreaper: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    server = subprocess.Popen(argv)
    write_report(report, server.pid, 0, 0.0)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: server.send_signal(signum))
    reaped, cpu, status = 0, 0.0, 1
    while True:
        try:
            pid, wait_status, usage = os.wait4(-1, 0)
        except ChildProcessError:
            break  # nothing left to reap
        reaped += 1
        cpu += usage.ru_utime + usage.ru_stime
        write_report(report, server.pid, reaped, cpu)
        if pid == server.pid:
            server.returncode = status = os.waitstatus_to_exitcode(wait_status)
            # The server is gone: what it left behind is ours to end (and to count).
            for orphan in children(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(orphan, signal.SIGKILL)
    return status if status >= 0 else 128 - status


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def command(report: Path) -> list[str]:
    """The argv prefix that runs a command under this wrapper."""
    return [sys.executable, str(HERE / "subreaper.py"), str(report), "--"]


class ReapedServer:
    """CPU of everything a server started under the wrapper has run, reaped or alive."""

    def __init__(self, wrapper_pid: int, report: Path) -> None:
        self.wrapper_pid, self.report = wrapper_pid, report

    def read(self) -> dict:
        deadline = time.monotonic() + 10
        while True:
            try:
                return json.loads(self.report.read_text())
            except (OSError, ValueError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no report from the subreaper in {self.report}") from e
                time.sleep(0.05)  # not written yet: the wrapper is starting

    def server_pid(self) -> int:
        """The server itself (the process whose tree the memory rows sample)."""
        return int(self.read()["server"])

    def cpu(self, live_cpu: Callable[[int], float]) -> float:
        """The reaped children's total plus `live_cpu(pid)` (a tree's CPU) of each live
        child of the wrapper: the server's tree and any orphan still running. A process
        reaped between the two reads is counted twice; measurements read when their
        requests' processes are gone, where nothing is being reaped."""
        live = sum(live_cpu(pid) for pid in children(self.wrapper_pid))
        return live + float(self.read()["cpu"])


def start_gateway(gw, report: Path) -> ReapedServer:
    """testkit's Gateway.start with its command run under the wrapper (testkit builds the
    argv from its module's GATEWAY prefix, swapped here for the start only)."""
    from testkit import server as testkit_server

    plain = testkit_server.GATEWAY
    testkit_server.GATEWAY = [*command(report), *plain]
    try:
        gw.start()
    finally:
        testkit_server.GATEWAY = plain
    return ReapedServer(gw.proc.pid, report)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        sys.exit(__doc__.strip().splitlines()[2].strip())
    sys.exit(run(Path(args[0]), args[2:]))
