"""Copy stdin to stdout, stalling after the first MiB until a file appears:
`python stall.py STREAMING GO` touches STREAMING when it stalls, and goes on once GO
exists (a client that stops reading mid-pack, for as long as a test needs)."""

from __future__ import annotations

import os
import sys
import time

STALL_AFTER = 1 << 20


def main(streaming: str, go: str) -> None:
    copied, stalled = 0, False
    while chunk := os.read(0, 65536):
        os.write(1, chunk)  # a pipe: whole writes
        copied += len(chunk)
        if copied >= STALL_AFTER and not stalled:
            stalled = True
            open(streaming, "w").close()
            while not os.path.exists(go):
                time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
