"""Run the adversarial suite against a private `gateway serve` and print one table.

    python -m adversarial            the full suite (10,000 command lines, 20 kill rounds,
                                     200 clones)
    python -m adversarial --quick    a bounded run for CI (the test suite runs this)
    python -m adversarial --only ssh a single class (repeatable; the names are in CLASSES)

Exit status 1 if any input was mishandled; the inputs are printed below the table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import bombs, refs, stolen_key, suite, trees, workers

CLASSES = [
    "exec",
    "paths",
    "ssh",
    "protocol",
    "refs",
    "trees",
    "2sv",
    "stolen-key",
    "load",
    "faults",
    "workers",
    "bombs",
]

SIZES = {  # quick, full
    "exec": (1500, 10000),
    "through_ssh": (20, 100),
    "protocol": (60, 400),
    "guesses": (20, 40),
    "ref_names": (100, 400),
    "kill_rounds": (5, 20),
    "cuts": (4, 10),
    "clones": (50, 200),
    "sockets": (500, 500),
    "flood": (12, 40),
    "trickle": (3, 3),
    "trees": (60, 300),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bounded run (CI)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="CLASS",
        choices=CLASSES,
        help="run only this class (repeatable)",
    )
    args = parser.parse_args(argv)
    size = {k: v[0] if args.quick else v[1] for k, v in SIZES.items()}
    root = Path(tempfile.mkdtemp(prefix="gateway-adversarial-"))
    started = time.monotonic()
    g = suite.Gateway(root / "main")
    slow = suite.Gateway(root / "slow")
    results: list[suite.Result] = []
    try:
        g.cli("init")
        suite.write_hooks(root / "hooks")
        (g.data / "gateway.toml").write_text(
            f'twosv_backoff_seconds = 60\nmax_sessions = 10\nhooks_dir = "{root / "hooks"}"\n'
        )
        g.start()
        slow.cli("init")
        (slow.data / "gateway.toml").write_text("login_timeout = 3\n")
        slow.start()
        work = root / "work"
        work.mkdir()
        w = suite.World(g, work)
        steps = {
            "exec": lambda: suite.command_lines(w, size["exec"], size["through_ssh"]),
            "paths": lambda: suite.paths(w),
            "ssh": lambda: suite.ssh_level(w, slow),
            "protocol": lambda: suite.protocol(w, size["protocol"]),
            "refs": lambda: refs.refs_class(w, size["ref_names"]),
            "trees": lambda: trees.trees(w, size["trees"]),
            "2sv": lambda: suite.twosv(g, size["guesses"]),
            "stolen-key": lambda: stolen_key.stolen_key(g),
            "load": lambda: suite.load(g, w, size["clones"], size["sockets"]),
            "faults": lambda: suite.faults(g, w, size["kill_rounds"], size["cuts"]),
            "workers": lambda: workers.workers(root / "workers", size["flood"], size["trickle"]),
            "bombs": lambda: bombs.bombs(w),
        }
        for name, step in steps.items():
            if args.only and name not in args.only:
                continue
            t = time.monotonic()
            try:
                result = step()
            except Exception:  # a class that breaks is a class with a mishandled input
                result = suite.Result(name)
                result.check(False, "the class stopped with:\n" + traceback.format_exc())
                result.notes = "stopped early"
                if g.proc.poll() is not None:
                    g.start()
            result.notes += f" ({time.monotonic() - t:.0f} s)"
            results.append(result)
            print(f"  {result.name}: {result.handled}/{result.tried}", file=sys.stderr, flush=True)
        alive = g.proc.poll() is None
        log = g.server_log()
    finally:
        g.stop()
        slow.stop()
    print("\n| class of attack | inputs tried | handled correctly | notes |\n|---|---|---|---|")
    for r in results:
        print(f"| {r.name} | {r.tried} | {r.handled} | {r.notes} |")
    tracebacks = log.count("Traceback")
    print(
        f"\nserver alive at the end: {alive}; tracebacks in its log: {tracebacks}; "
        f"mode: {'quick' if args.quick else 'full'}; {time.monotonic() - started:.0f} s"
    )
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
