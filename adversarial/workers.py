"""Worker floods (finding 4): many stalled upload-pack sessions from one access key and
from one account, from many accounts at once, and clients that trickle their request.

Handled: every session beyond a cap refused with its one line (or, within the caps,
held), every trickling client cut at `request_timeout` with its line, a session
advertised before its member was removed refused at the first command, the server tree's
memory bounded by the caps, a normal clone served during the flood, and no worker left
once the flood is gone. A server of its own, with small caps, so the class stays short.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from testkit import Gateway, git_workers, local_git, make_key, pkt, wait_for
from testkit.sshclient import connect

from .suite import Result

# REQUEST leaves room for CLI starts (a member removal) while sessions are held on a
# loaded 2-core machine (the test suite runs in parallel).
TOTAL, PER_ACCOUNT, QUEUE, REQUEST = 10, 3, 2, 8
SETTINGS = (
    f"max_git_workers = {TOTAL}\nmax_git_workers_per_account = {PER_ACCOUNT}\n"
    f"git_queue_timeout = {QUEUE}\nrequest_timeout = {REQUEST}\n"
)
WORKER_MB = 40  # a stalled worker is about 25 MB resident; room for a clone's working set
PER_KEY_LINE = (
    f"ERROR: Too many Git requests at once from this access key ({PER_ACCOUNT} "
    "running); try again in a minute"
)
PER_ACCOUNT_LINE = (
    f"ERROR: Too many Git requests at once from this account ({PER_ACCOUNT} "
    "running); try again in a minute"
)
BUSY_LINE = f"ERROR: The server is busy: all {TOTAL} Git workers are in use; try again in a minute"
TRICKLE_LINE = f"ERROR: The Git request did not arrive in full within {REQUEST} seconds; closing"


async def _advertisement(proc) -> bool:
    while True:
        head = await proc.stdout.readexactly(4)
        if head == b"0000":
            return True
        await proc.stdout.readexactly(int(head, 16) - 4)


async def _session(conn, path: str):
    """An upload-pack session: ("held", proc) once advertised, or ("refused", stderr)."""
    proc = await conn.create_process(f"git-upload-pack '{path}.git'", encoding=None)
    try:
        await asyncio.wait_for(_advertisement(proc), QUEUE + 10)
        return "held", proc
    except asyncio.IncompleteReadError:
        err = await proc.stderr.read()
        await proc.wait_closed()
        return ("refused" if proc.exit_status not in (0, None) else "odd"), err.decode()


def _tree_rss_mb(pid: int) -> float:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def workers(root: Path, sessions: int, trickling: int) -> Result:
    result = Result("workers (floods of stalled and trickling Git sessions)")
    g = Gateway(root)
    g.cli("init")
    (g.data / "gateway.toml").write_text(SETTINGS)
    g.start()
    try:
        _attack(g, root, result, sessions, trickling)
    finally:
        g.stop()
    return result


def _attack(g: Gateway, root: Path, result: Result, sessions: int, trickling: int) -> None:
    owner, flooder, bystander = g.user(), g.user(), g.user()
    ws = g.workspace((owner, "admin"), (flooder, "read"), (bystander, "read"))
    path = g.repo(ws)
    seed = root / "seed"
    g.git(owner, "clone", "-q", g.url(path), str(seed))
    (seed / "a.txt").write_text("a\n" * 1000)
    local_git("add", ".", cwd=seed, env=g.env)
    local_git("commit", "-qm", "a", cwd=seed, env=g.env)
    g.git(owner, "push", "-q", "origin", "HEAD:main", cwd=seed)
    tip = local_git("rev-parse", "HEAD", cwd=seed).strip()
    deploy = make_key(g.keys_dir, "flood-deploy")
    g.cli("access-key", "add", path, f"{deploy}.pub", "--title", "flood")
    repo_dir = g.repo_dir(path)
    time.sleep(1)
    idle_mb = _tree_rss_mb(g.proc.pid)
    peak = {"mb": idle_mb}

    def sample() -> None:
        peak["mb"] = max(peak["mb"], _tree_rss_mb(g.proc.pid))

    async def flood(key: Path, line: str, label: str) -> list:
        """`sessions` stalled sessions from one key, 8 to a connection."""
        conns = [await connect(g, key) for _ in range(-(-sessions // 8))]
        outcomes = await asyncio.gather(*(_session(conns[n // 8], path) for n in range(sessions)))
        held = [o[1] for o in outcomes if o[0] == "held"]
        for n, (kind, what) in enumerate(outcomes):
            ok = kind == "held" or (kind == "refused" and what.strip() == line)
            result.check(ok, f"{label} session {n}: {kind} {what if kind != 'held' else ''}")
        result.check(
            len(held) == PER_ACCOUNT, f"{label}: {len(held)} sessions held, cap {PER_ACCOUNT}"
        )
        return conns, held

    async def go() -> None:
        key_conns, key_held = await flood(deploy, PER_KEY_LINE, "access key")
        acct_conns, acct_held = await flood(flooder.key, PER_ACCOUNT_LINE, "account")
        sample()
        # The floods hold 2 x PER_ACCOUNT workers of TOTAL: a normal clone still gets one,
        # and the trickling clients below theirs.
        target = root / "bystander"
        clone = await asyncio.to_thread(
            g.git, bystander, "clone", "-q", g.url(path), str(target), check=False
        )
        result.check(
            clone.returncode == 0 and (target / "a.txt").exists(),
            f"a normal clone during the flood: {clone.stderr.strip()[:200]}",
        )
        sample()
        # Trickling clients: a byte a second, never idle, never done; cut at REQUEST s.
        trick_conn = await connect(g, owner.key)
        trick = [await _session(trick_conn, path) for _ in range(trickling)]
        started = time.monotonic()
        request = pkt(f"want {tip} side-band-64k\n".encode()) + b"0000" + pkt(b"done\n")
        for byte in request:
            live = [p for kind, p in trick if kind == "held" and p.exit_status is None]
            if not live or time.monotonic() - started > REQUEST + 15:
                break
            for p in live:
                try:
                    p.stdin.write(bytes([byte]))
                except Exception:
                    pass
            sample()
            await asyncio.sleep(1)
        for n, (kind, p) in enumerate(trick):
            if kind != "held":
                result.check(False, f"trickling client {n} not served at all: {p}")
                continue
            err = (await asyncio.wait_for(p.stderr.read(), 20)).decode()
            await p.wait_closed()
            took = time.monotonic() - started
            result.check(
                err.strip() == TRICKLE_LINE and took < REQUEST + 10,
                f"trickling client {n}: after {took:.1f} s said {err.strip()[:200]!r}",
            )
        trick_conn.close()
        # Many accounts at once: TOTAL run, the rest wait QUEUE seconds and are told.
        for p in key_held + acct_held:
            p.close()
        for c in key_conns + acct_conns:
            c.close()
        wait_for(lambda: not git_workers(repo_dir), 15)
        many = await asyncio.to_thread(lambda: [g.user() for _ in range(TOTAL + 3)])
        for u in many:
            await asyncio.to_thread(g.cli, "member", "add", ws, u.name)
        conns = [await connect(g, u.key) for u in many]
        outcomes = await asyncio.gather(*(_session(c, path) for c in conns))
        sample()
        held = [o[1] for o in outcomes if o[0] == "held"]
        first = next((n for n, o in enumerate(outcomes) if o[0] == "held"), 0)
        for n, (kind, what) in enumerate(outcomes):
            ok = kind == "held" or (kind == "refused" and what.strip() == BUSY_LINE)
            result.check(ok, f"many accounts, session {n}: {kind} {what if kind != 'held' else ''}")
        result.check(len(held) == TOTAL, f"many accounts: {len(held)} held, cap {TOTAL}")
        # A session advertised before its member was removed gets no pack.
        victim = outcomes[first][1]
        await asyncio.to_thread(g.cli, "member", "remove", ws, many[first].name)
        victim.stdin.write(request)
        victim.stdin.write_eof()
        out, err = await asyncio.gather(victim.stdout.read(), victim.stderr.read())
        result.check(
            b"PACK" not in out and err.decode().startswith(f"ERROR: Repository not found: {path}"),
            f"removed member's advertised session: {err[:200]!r}, {len(out)} bytes out",
        )
        for p in held:
            p.close()
        for c in conns:
            c.close()

    asyncio.run(go())
    gone = wait_for(lambda: not git_workers(repo_dir), 15)
    result.check(gone, f"workers left after the flood: {git_workers(repo_dir)}")
    bound = idle_mb + (TOTAL + 2) * WORKER_MB
    result.check(
        peak["mb"] <= bound, f"server tree RSS peaked at {peak['mb']:.0f} MB, bound {bound:.0f} MB"
    )
    result.check(g.proc.poll() is None, "server still up")
    result.notes = (
        f"{sessions} stalled sessions from one access key and from one account "
        f"(cap {PER_ACCOUNT}), {TOTAL + 3} accounts at once (cap {TOTAL}), "
        f"{trickling} trickling clients cut at {REQUEST} s, a removed member's "
        f"session refused; tree RSS {idle_mb:.0f} -> {peak['mb']:.0f} MB"
    )
