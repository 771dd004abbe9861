"""The `overtime` rows of bench/compare.py: what years of small pushes do to the costs.

One repository on each side (a copy of `large`) gets PUSHES one-commit pushes (2,000 by
default, `--pushes N`), each a real one-file change made by one client (compare.py's
Pusher: fast-import on a bare repository borrowing the cached objects). The same commit
goes to both sides at once (two pushes in parallel: the loop takes half the time, and
what is timed is measured apart, below). At 0, 500 and PUSHES pushes (CHECKPOINTS) the
loop stops and, side after side:

- ls-remote, median of 5;
- a full clone (--no-checkout), median of `runs`;
- `runs` rounds of PER_ROUND timed one-commit pushes (counted among the pushes), then an
  incremental fetch of those commits into the side's last clone: medians;
- the repository's pack files and loose objects, as they are.

Before a point is measured, the background work the pushes set off on either side is
waited for (the gateway's housekeeping run, C git's detached `gc --auto`), and the wait
is printed: a point measures what the repository's state costs, as at 0, not how the
requests share the two cores with a repack still running.

On the gateway, a second copy of the repository that the loop never pushes to (its own
pusher gives it only the timed pushes) is measured too, interleaved with the pushed one,
at 0 and at PUSHES: on a shared machine the figures drift by 10-20% over a run, and the
copy's column shows how much of a change is the machine's.

C git's side has its default receive settings, so its `gc --auto` runs after a push as
a real server's would (detached: the subreaper reaps it). The target: the gateway's time
at PUSHES pushes within 10% of its own at 0 (issue 17, item 3).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

CHECKPOINTS_OF = (0, 500)
PER_ROUND = 5
TARGET = 1.10
MEASURES = ("push", "ls-remote", "incremental fetch", "full clone")
SIDES = ("openssh", "gateway")
UNPUSHED = "-unpushed"  # the copy's tag (in its clients' names too)


def checkpoints(pushes: int) -> list[int]:
    return sorted({*(p for p in CHECKPOINTS_OF if p < pushes), pushes})


QUIET_TIMEOUT = 600  # seconds to wait for background housekeeping before measuring


def housekeeping_running(root: Path) -> bool:
    """Whether a housekeeping process works on a repository under `root`: the gateway's
    (`python -m gateway.git.housekeeping REPO`) or C git's (`git gc`, `git repack` and the
    `git pack-objects` it runs, in the repository as working directory)."""
    prefix = str(root)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"gateway.git.housekeeping" in argv:
                if any(arg.decode(errors="replace").startswith(prefix) for arg in argv):
                    return True
                continue
            words = {a.decode(errors="replace") for a in argv[:3]}
            if words & {"gc", "repack", "pack-objects", "git-pack-objects"} and str(
                (entry / "cwd").resolve()
            ).startswith(prefix):
                return True
        except OSError:
            continue  # gone, or not ours to read
    return False


def wait_quiet(root: Path) -> float:
    """Wait until no housekeeping runs under `root`; the seconds waited."""
    started = time.monotonic()
    while housekeeping_running(root) and time.monotonic() - started < QUIET_TIMEOUT:
        time.sleep(0.2)
    return time.monotonic() - started


def repository_files(server: Path) -> tuple[int, int]:
    """Pack files, loose objects."""
    objects = server / "objects"
    packs = len(list((objects / "pack").glob("*.pack")))
    loose = sum(1 for d in objects.glob("[0-9a-f][0-9a-f]") for _ in d.iterdir())
    return packs, loose


class Overtime:
    def __init__(
        self,
        sides,
        name: str,
        pusher,
        alternate: Callable[[int], tuple[str, str]],
        fail: Callable[[str], None],
        log: Callable[[str], None],
        unpushed: tuple[str, object] | None = None,
    ) -> None:
        self.sides, self.name, self.pusher = sides, name, pusher
        self.alternate, self.fail, self.log = alternate, fail, log
        # Another copy of the repository and its own pusher: measured beside the pushed
        # one at 0 and at the last point, so that the shared machine's drift between
        # the two points shows (the copy only gets the timed pushes).
        self.unpushed = unpushed
        self.pushed = 0
        # (measure, side, checkpoint, copy) -> seconds; copy "" is the pushed one
        self.values: dict[tuple[str, str, int, str], list[float]] = {}
        self.files: dict[tuple[str, int], tuple[int, int]] = {}
        self.clones: dict[tuple[str, str], Path] = {}
        self.waits: dict[int, float] = {}  # checkpoint -> seconds waited for housekeeping

    def push_argv(self, side: str, copy: str = "") -> list[str]:
        name, pusher = (self.name, self.pusher) if not copy else self.unpushed
        url = self.sides.url(side, name)
        return ["--git-dir", str(pusher.git_dir), "push", "-q", url, "main:refs/heads/main"]

    def copies(self, at: int, last: int) -> list[str]:
        """The repositories measured at `at`: the pushed one, and the unpushed copy at
        0 and at the last point."""
        return ["", UNPUSHED] if self.unpushed and at in (0, last) else [""]

    def push_both(self, count: int) -> None:
        """`count` commits, each pushed to both sides at once."""
        for _ in range(count):
            self.pusher.commit()
            procs = [
                subprocess.Popen(
                    ["git", *self.push_argv(side)],
                    env=self.sides.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                for side in SIDES
            ]
            for side, proc in zip(SIDES, procs, strict=True):
                _, err = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(f"push to {side}: {err.decode(errors='replace')[-600:]}")
            self.pushed += 1

    def add(self, measure: str, side: str, at: int, seconds: float, copy: str = "") -> None:
        self.values.setdefault((measure, side, at, copy), []).append(seconds)

    def measure(self, at: int, runs: int, last: int) -> None:
        sides = self.sides
        self.waits[at] = wait_quiet(Path(sides.root))
        for side in SIDES:
            self.files[(side, at)] = repository_files(sides.server_dir(side, self.name))
        copies = self.copies(at, last)

        def order(run: int) -> list[tuple[str, str]]:  # (side, copy), interleaved
            turns = copies if run % 2 == 0 else copies[::-1]
            return [
                (side, copy)
                for side in self.alternate(run)
                for copy in turns
                if side == "gateway" or not copy  # the copy is the gateway's baseline
            ]

        def url(side: str, copy: str) -> str:
            return sides.url(side, self.unpushed[0] if copy else self.name)

        for run in range(5):
            for side, copy in order(run):
                elapsed = sides.timed_git("ls-remote", url(side, copy))
                self.add("ls-remote", side, at, elapsed, copy)
        for run in range(runs):
            for side, copy in order(run):
                dest = Path(sides.root) / "clients" / f"overtime-{side}{copy}-{at}-{run}"
                elapsed = sides.timed_git(
                    "clone", "-q", "--no-checkout", url(side, copy), str(dest)
                )
                self.add("full clone", side, at, elapsed, copy)
                if (side, copy) in self.clones:
                    shutil.rmtree(self.clones[(side, copy)], ignore_errors=True)
                self.clones[(side, copy)] = dest
        for run in range(runs):
            for _ in range(PER_ROUND):
                self.pusher.commit()
                if UNPUSHED in copies:
                    self.unpushed[1].commit()
                for side, copy in order(run):
                    self.add("push", side, at, sides.timed_git(*self.push_argv(side, copy)), copy)
                self.pushed += 1
            for side, copy in order(run):
                elapsed = sides.timed_git("fetch", "-q", "origin", cwd=self.clones[(side, copy)])
                self.add("incremental fetch", side, at, elapsed, copy)
        self.log(f"overtime: measured at {at} pushes")

    def check(self) -> None:
        """Both sides hold the pusher's main, and the last clones are complete."""
        tip = subprocess.run(
            ["git", "--git-dir", str(self.pusher.git_dir), "rev-parse", "main"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        for side in SIDES:
            got = (
                self.sides.git("rev-parse", "origin/main", cwd=self.clones[(side, "")])
                .stdout.decode()
                .strip()
            )
            if got != tip:
                self.fail(f"overtime: {side}'s main is {got} after the fetch, expected {tip}")
            self.sides.fsck(self.clones[(side, "")], f"overtime clone from {side}")

    def run(self, pushes: int, runs: int) -> None:
        last = checkpoints(pushes)[-1]
        for at in checkpoints(pushes):
            started = time.monotonic()
            self.push_both(max(0, at - self.pushed))
            if at:
                self.log(
                    f"overtime: {self.pushed} pushes to each side "
                    f"({time.monotonic() - started:.0f} s for this stretch, both sides at once)"
                )
            self.measure(at, runs, last)
        self.check()

    def table(self, pushes: int, caption: str) -> str:
        marks = checkpoints(pushes)
        last = marks[-1]
        head = [f"C git at {m:,}" for m in marks] + [f"gateway at {m:,}" for m in marks]
        lines = [
            "",
            caption,
            "",
            f"| measure (median, s) | {' | '.join(head)} | gateway at {last:,} / at 0 "
            f"| target | met |",
            "|---|" + "---|" * (len(head) + 3),
        ]

        def cell(measure: str, side: str, at: int, copy: str = "") -> float | None:
            values = self.values.get((measure, side, at, copy))
            return statistics.median(values) if values else None

        for measure in MEASURES:
            cells = [cell(measure, side, m) for side in SIDES for m in marks]
            start, end = cell(measure, "gateway", 0), cell(measure, "gateway", last)
            ratio = end / start if start and end is not None else None
            met = "yes" if ratio is not None and ratio <= TARGET else "**no**"
            shown = " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
            lines.append(
                f"| {measure} | {shown} | {'-' if ratio is None else f'{ratio:.2f}x'} "
                f"| ≤ {TARGET:.2f} | {met} |"
            )
        for index, what in enumerate(("pack files", "loose objects")):
            shown = " | ".join(  # "-": not reached (a failed run still prints its table)
                str(self.files.get((side, m), ("-", "-"))[index]) for side in SIDES for m in marks
            )
            lines.append(f"| {what} (before the measures) | {shown} | - | - | |")
        waited = ", ".join(f"{self.waits[m]:.1f} s at {m:,}" for m in marks if m in self.waits)
        lines.append(f"\nWaited for background housekeeping before measuring: {waited}.")
        if self.unpushed:
            lines += [
                "",
                f"The same measures of the gateway on an unpushed copy of the repository, "
                f"interleaved with the pushed one's at 0 and at {last:,} (the machine's "
                "drift between the two points shows in the copy's column):",
                "",
                f"| measure (median, s) | copy at 0 | copy at {last:,} | pushed at {last:,} "
                f"| pushed at {last:,} / copy at {last:,} |",
                "|---|---|---|---|---|",
            ]
            for measure in MEASURES:
                first = cell(measure, "gateway", 0, UNPUSHED)
                copy, pushed = (
                    cell(measure, "gateway", last, UNPUSHED),
                    cell(measure, "gateway", last),
                )
                shown = " | ".join("-" if c is None else f"{c:.3f}" for c in (first, copy, pushed))
                ratio = f"{pushed / copy:.2f}x" if copy and pushed is not None else "-"
                lines.append(f"| {measure} | {shown} | {ratio} |")
        return "\n".join(lines) + "\n"
