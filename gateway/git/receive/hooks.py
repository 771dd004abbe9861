"""Running server-side Git hooks: `HOOKS_DIR/NAME`, then `HOOKS_DIR/NAME.d/*` in name order.

Each hook is executed directly (never through a shell) with Git's arguments, its stdin
lines and the environment given; its output reaches the client as `remote:` lines. A hook
that runs past the time limit is killed with its whole process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

MAX_OUTPUT = 64 * 1024


def executables(hooks_dir: str | None, name: str) -> list[Path]:
    if not hooks_dir:
        return []
    root = Path(hooks_dir)
    found = []
    single = root / name
    if single.is_file() and os.access(single, os.X_OK):
        found.append(single)
    directory = root / f"{name}.d"
    if directory.is_dir():
        found.extend(
            p
            for p in sorted(directory.iterdir())
            if p.is_file() and os.access(p, os.X_OK) and not p.name.startswith(".")
        )
    return found


def run(
    hooks_dir: str | None,
    name: str,
    args: list[str],
    stdin: bytes,
    env: dict,
    timeout: float,
    say: Callable[[bytes], None],
) -> bool:
    """Run every hook called `name`; True when all of them exit 0 (or there are none)."""
    ok = True
    for path in executables(hooks_dir, name):
        proc = subprocess.Popen(
            [str(path.resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=env.get("GIT_DIR"),
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output = _rest_of_output(proc)
            say(output[:MAX_OUTPUT])
            say(
                f"hook {name} ({path.name}) took longer than {timeout:g} s "
                f"and was stopped\n".encode()
            )
            ok = False
            continue
        except BrokenPipeError:
            output, _ = proc.communicate()
        say(output[:MAX_OUTPUT])
        if proc.returncode != 0:
            ok = False
    return ok


def _rest_of_output(proc: subprocess.Popen) -> bytes:
    """Output after the hook was killed; a child that left the process group may still
    hold the pipe open, so wait only briefly for it."""
    try:
        output, _ = proc.communicate(timeout=2)
    except subprocess.TimeoutExpired:
        proc.stdout.close()
        proc.wait()
        output = b""
    return output
