"""Run the adversarial suite against a private `gateway serve` and print one table.

    python -m adversarial            the full suite (10,000 command lines, 20 kill rounds, 200 clones)
    python -m adversarial --quick    a bounded run for CI (the test suite runs this)

Exit status 1 if any input was mishandled; the inputs are printed below the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import suite

SIZES = {  # quick, full
    "exec": (1500, 10000), "through_ssh": (20, 100), "protocol": (60, 400),
    "guesses": (20, 40), "kill_rounds": (5, 20), "clones": (40, 200), "sockets": (500, 500),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bounded run (CI)")
    args = parser.parse_args(argv)
    size = {k: v[0] if args.quick else v[1] for k, v in SIZES.items()}
    root = Path(tempfile.mkdtemp(prefix="gateway-adversarial-"))
    started = time.monotonic()
    g = suite.Gateway(root / "main")
    slow = suite.Gateway(root / "slow")
    results: list[suite.Result] = []
    try:
        g.cli("init")
        (g.data / "gateway.toml").write_text("twosv_backoff_seconds = 60\nmax_sessions = 10\n")
        g.start()
        slow.cli("init")
        (slow.data / "gateway.toml").write_text("login_timeout = 3\n")
        slow.start()
        work = root / "work"
        work.mkdir()
        w = suite.World(g, work)
        steps = [
            lambda: suite.command_lines(w, size["exec"], size["through_ssh"]),
            lambda: suite.paths(w),
            lambda: suite.ssh_level(w, slow),
            lambda: suite.protocol(w, size["protocol"]),
            lambda: suite.two_step(g, size["guesses"]),
            lambda: suite.load(g, w, size["clones"], size["sockets"]),
            lambda: suite.faults(g, w, size["kill_rounds"]),
        ]
        for step in steps:
            t = time.monotonic()
            result = step()
            result.notes += f" ({time.monotonic() - t:.0f} s)"
            results.append(result)
            print(f"  {result.name}: {result.handled}/{result.tried}", file=sys.stderr, flush=True)
        alive = g.proc.poll() is None
        log = g.server_log()
    finally:
        g.stop()
        slow.stop()
    print(f"\n| class of attack | inputs tried | handled correctly | notes |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.tried} | {r.handled} | {r.notes} |")
    tracebacks = log.count("Traceback")
    print(f"\nserver alive at the end: {alive}; tracebacks in its log: {tracebacks}; "
          f"mode: {'quick' if args.quick else 'full'}; {time.monotonic() - started:.0f} s")
    bad = [r for r in results if r.handled != r.tried]
    for r in bad:
        print(f"\nMISHANDLED in {r.name}:")
        for what in r.failures:
            print(f"  {what}")
    if not bad and alive and not tracebacks:
        shutil.rmtree(root, ignore_errors=True)
        return 0
    print(f"\n(kept {root} for inspection)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
