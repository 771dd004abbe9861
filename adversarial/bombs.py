"""Class "bombs": packs that are small on the wire and huge inflated (review finding 3).

Each is pushed raw to git-receive-pack of the suite's server (default limits), and the
worker's peak resident memory is read from its git.done log line; then a 256 MiB blob
made by one delta is planted in a repository on the server's side and archived. Handled
correctly means: the refusal names the limit, the worker's peak stays under BOUND,
nothing is stored and no quarantine is left.
"""

from __future__ import annotations

import subprocess

from testkit import packbombs as pb
from testkit import wait_for

from .suite import Result, World

MiB = pb.MiB
BOUND = 300 * MiB


def bombs(w: World) -> Result:
    result = Result("delta and zlib bombs (pushes, archive)")
    g = w.g
    notes = []
    cases = [
        (
            "delta bomb (4 deltas declaring 300 MiB)",
            pb.delta_bomb(4, 300 * MiB)[0],
            "(max_object_bytes)",
        ),
        ("chain bomb (128 x 16 MiB)", pb.chain_bomb(128), "(max_push_inflated_bytes)"),
        (
            "zlib bomb (1000 B declared, 1 GiB inflated)",
            pb.zlib_bomb(1000, 1024 * MiB),
            "inflates past its declared size",
        ),
        ("huge declared size (64 GiB)", pb.huge_declared(64 * 1024**3), "(max_object_bytes)"),
    ]
    for what, pack_bytes, expected in cases:
        path = g.repo(w.ws)
        repo_dir = g.repo_dir(path)
        before = set((repo_dir / "objects" / "pack").glob("*.pack"))
        offset = len(g.server_log())
        done = pb.ssh_receive_pack(
            g.ssh_command(w.alice.key), g.port, path, pb.push_body(pack_bytes, b"1" * 40), g.env
        )
        peak = pb.worker_peak(g.server_log, offset, path)
        status = pb.unpack_status(done.stdout)
        clean = wait_for(
            lambda repo_dir=repo_dir: not list((repo_dir / "objects").glob("incoming-*")), 5
        )
        stored = set((repo_dir / "objects" / "pack").glob("*.pack")) != before
        ok = expected in status and peak < BOUND and clean and not stored
        result.check(
            ok,
            f"{what}: unpack {status!r}, peak {pb.mb(peak)}, "
            f"quarantine removed {clean}, stored {stored}",
        )
        notes.append(f"{what.split(' (')[0]} {pb.mb(peak)}")
    # A repository that already holds a 256 MiB blob (16 KB on disk), archived.
    path = g.repo(w.ws)
    repo_dir = g.repo_dir(path)
    pb.plant_huge_blob(repo_dir, 256 * MiB, "refs/heads/main")
    env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(w.alice.key))}
    offset = len(g.server_log())
    done = subprocess.run(
        ["git", "archive", f"--remote={g.url(path)}", "HEAD"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    peak = pb.worker_peak(g.server_log, offset, path)
    err = done.stderr.decode(errors="replace")
    ok = (
        done.returncode != 0
        and "ERROR: a file of 256 MiB exceeds the limit" in err
        and peak < BOUND
    )
    result.check(
        ok,
        f"archive of a stored 256 MiB blob: status {done.returncode}, "
        f"peak {pb.mb(peak)}, {err[-200:]!r}",
    )
    notes.append(f"archive {pb.mb(peak)}")
    result.notes = "worker peak: " + ", ".join(notes) + "; each refused naming its limit"
    return result
