"""Git workers (finding 4 and the Git half of 8): caps on workers serving requests,
server-wide (with a queue) and per account or access key; `request_timeout` against
clients that trickle their request; access checked again at the client's first command.

Each against a real `gateway serve` of its own with small settings; stalled sessions are
asyncssh clients that read the advertisement and then send nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import asyncssh
import pytest

from gateway.commands.git import RequestWatch
from gateway.errors import Refusal
from gateway.git.workers.slots import WorkerSlots
from testkit import (
    Gateway,
    User,
    fingerprint,
    free_port,
    git_workers,
    local_git,
    make_key,
    pkt,
    unique,
    wait_for,
)
from testkit.sshclient import connect

CAPS = "max_git_workers = 3\nmax_git_workers_per_account = 2\ngit_queue_timeout = 2\n"


@pytest.fixture(scope="module")
def caps(tmp_path_factory):
    """A server with at most 3 workers, 2 per account or key, and a 2 s queue."""
    g = Gateway(tmp_path_factory.mktemp("caps"))
    g.cli("init")
    g.metrics_port = free_port()
    (g.data / "gateway.toml").write_text(CAPS + f'metrics_listen = "127.0.0.1:{g.metrics_port}"\n')
    g.start()
    yield g
    g.stop()


def seeded(g: Gateway, tmp: Path, *members: tuple[User, str]):
    """(admin, repo path, tip) with one commit pushed; `members` join the workspace."""
    admin = g.user()
    ws = g.workspace((admin, "admin"), *members)
    path = g.repo(ws)
    clone = tmp / unique("seed")
    g.git(admin, "clone", "-q", g.url(path), str(clone))
    (clone / "a.txt").write_text("a\n")
    local_git("add", "a.txt", cwd=clone, env=g.env)
    local_git("commit", "-qm", "a", cwd=clone, env=g.env)
    g.git(admin, "push", "-q", "origin", "HEAD:main", cwd=clone)
    return admin, path, local_git("rev-parse", "HEAD", cwd=clone).strip()


async def read_pkt(stream) -> bytes | None:
    """One pkt-line's payload; None for a flush-pkt."""
    length = int(await stream.readexactly(4), 16)
    return None if length == 0 else await stream.readexactly(length - 4)


async def advertised(proc) -> list[bytes]:
    lines = []
    while (line := await read_pkt(proc.stdout)) is not None:
        lines.append(line)
    return lines


async def open_stalled(conn, path: str):
    """An upload-pack session that has had its advertisement and sends nothing more."""
    proc = await conn.create_process(f"git-upload-pack '{path}.git'", encoding=None)
    await asyncio.wait_for(advertised(proc), 20)
    return proc


def want_and_done(tip: str) -> bytes:
    return pkt(f"want {tip} side-band-64k ofs-delta\n".encode()) + b"0000" + pkt(b"done\n")


async def finish(proc, timeout: float = 20) -> tuple[int | None, bytes, bytes]:
    """The rest of a session: (exit status, stdout, stderr)."""
    proc.stdin.write_eof()
    out, err = await asyncio.wait_for(
        asyncio.gather(proc.stdout.read(), proc.stderr.read()), timeout
    )
    await asyncio.wait_for(proc.wait_closed(), timeout)
    return proc.exit_status, out, err


def scrape(g: Gateway) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{g.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def audit(g: Gateway, account: str) -> list[dict]:
    return json.loads(g.cli("audit", "--account", account, "--json", "--limit", "500").stdout)


# --- caps ----------------------------------------------------------------------------------


def test_an_access_key_over_its_cap_is_refused_and_others_still_get_through(caps, tmp_path):
    admin, path, tip = seeded(caps, tmp_path)
    deploy = User("deploy", make_key(caps.keys_dir, unique("deploy")))
    caps.cli("access-key", "add", path, f"{deploy.key}.pub", "--title", "ci")
    before = metric(scrape(caps), "gateway_git_requests_refused_total", reason="per_account")

    async def go():
        async with connect(caps, deploy.key) as conn:
            held = [await open_stalled(conn, path) for _ in range(2)]
            assert len(git_workers(caps.repo_dir(path))) >= 2
            started = time.monotonic()
            third = await conn.create_process(f"git-upload-pack '{path}.git'", encoding=None)
            status, out, err = await finish(third)
            waited = time.monotonic() - started
            # The account's own requests are not held up by the key's.
            other = await asyncio.to_thread(caps.git, admin, "ls-remote", caps.url(path))
            for proc in held:
                proc.close()
            return status, out, err, waited, other

    status, out, err, waited, other = asyncio.run(go())
    assert status != 0 and out == b""
    assert err.decode() == (
        "ERROR: Too many Git requests at once from this access key "
        "(2 running); try again in a minute\n"
    )
    assert 1.5 < waited < 10, waited  # waited git_queue_timeout for one of its own
    assert tip in other.stdout
    assert (
        metric(scrape(caps), "gateway_git_requests_refused_total", reason="per_account")
        == before + 1
    )
    refused = [line for line in caps.server_log().splitlines() if "event=git.refused" in line]
    assert refused and "reason=per_account" in refused[-1] and "access-key:ci" in refused[-1]
    # Once its sessions are gone the key clones again.
    caps.git(deploy, "clone", "-q", caps.url(path), str(tmp_path / "after"))


def test_an_account_over_its_cap_is_refused(caps, tmp_path):
    admin, path, tip = seeded(caps, tmp_path)

    async def go():
        async with connect(caps, admin.key) as conn:
            held = [await open_stalled(conn, path) for _ in range(2)]
            refused = await asyncio.to_thread(
                caps.git, admin, "ls-remote", caps.url(path), check=False
            )
            held[0].close()
            await held[0].wait_closed()
            allowed = await asyncio.to_thread(caps.git, admin, "ls-remote", caps.url(path))
            held[1].close()
            return refused, allowed

    refused, allowed = asyncio.run(go())
    assert refused.returncode != 0
    assert (
        "ERROR: Too many Git requests at once from this account (2 running); try again in a minute"
    ) in refused.stderr
    assert tip in allowed.stdout


def test_over_the_server_cap_a_request_queues_costs_no_worker_and_gets_a_freed_slot(caps, tmp_path):
    holders = [caps.user() for _ in range(3)]
    admin, path, tip = seeded(caps, tmp_path, *((u, "read") for u in holders))
    repo_dir = caps.repo_dir(path)

    async def go():
        conns = [await connect(caps, u.key) for u in holders]
        try:
            held = [await open_stalled(c, path) for c in conns]
            # A fourth account's ls-remote waits: no worker for it, and the gauge says so.
            result: dict = {}
            thread = threading.Thread(
                target=lambda: result.update(
                    r=caps.git(admin, "ls-remote", caps.url(path), check=False)
                )
            )
            started = time.monotonic()
            thread.start()
            await asyncio.sleep(1.0)
            queued = metric(scrape(caps), "gateway_git_requests_queued")
            running = metric(scrape(caps), "gateway_git_workers_running")
            workers = len(git_workers(repo_dir))
            held[0].close()  # a slot frees: the waiting request takes it
            await asyncio.to_thread(thread.join, 30)
            took = time.monotonic() - started
            # Full again: a request waits git_queue_timeout, then is refused.
            held[0] = await open_stalled(conns[0], path)
            t = time.monotonic()
            busy = await asyncio.to_thread(
                caps.git, admin, "ls-remote", caps.url(path), check=False
            )
            busy_took = time.monotonic() - t
            for proc in held:
                proc.close()
            return result["r"], took, queued, running, workers, busy, busy_took
        finally:
            for c in conns:
                c.close()

    first, took, queued, running, workers, busy, busy_took = asyncio.run(go())
    assert first.returncode == 0 and tip in first.stdout, first.stderr
    assert 1.0 <= took < 2.5, took  # it got through when the slot freed, before the timeout
    assert queued == 1 and running == 3, (queued, running)
    assert workers == 3  # the waiting request had no worker
    assert busy.returncode != 0 and busy_took >= 1.5
    assert (
        "ERROR: The server is busy: all 3 Git workers are in use; try again in a minute"
        in busy.stderr
    ), busy.stderr
    assert metric(scrape(caps), "gateway_git_requests_refused_total", reason="busy") >= 1
    assert metric(scrape(caps), "gateway_git_workers_running") == 0 or wait_gauge_zero(caps)


def wait_gauge_zero(g: Gateway) -> bool:
    return wait_for(lambda: metric(scrape(g), "gateway_git_workers_running") == 0, 10, 0.1)


# --- the first command ---------------------------------------------------------------------


@pytest.mark.parametrize("change", ["none", "member removed", "key removed", "policy on"])
def test_access_is_checked_again_when_the_first_command_arrives(caps, tmp_path, change):
    member = caps.user()
    admin, path, tip = seeded(caps, tmp_path, (member, "read"))
    ws = path.split("/")[0]

    async def go():
        async with connect(caps, member.key) as conn:
            proc = await open_stalled(conn, path)
            if change == "member removed":
                await asyncio.to_thread(caps.cli, "member", "remove", ws, member.name)
            elif change == "key removed":
                await asyncio.to_thread(caps.cli, "key", "remove", fingerprint(member.key))
            elif change == "policy on":
                await asyncio.to_thread(caps.cli, "workspace", "require-2sv", ws, "on")
            proc.stdin.write(want_and_done(tip))
            return await finish(proc)

    status, out, err = asyncio.run(go())
    if change == "none":  # the same bytes get a pack when nothing changed
        assert status == 0 and b"PACK" in out, err
        return
    assert status != 0 and b"PACK" not in out and out == b"", (out[:200], err)
    expected = {
        "member removed": f"ERROR: Repository not found: {path}\n",
        "key removed": "ERROR: This key is no longer accepted\n",
        "policy on": f'ERROR: Workspace "{ws}" requires two-step verification.\n',
    }[change]
    assert err.decode().startswith(expected), err
    assert not git_workers(caps.repo_dir(path))
    denied = [e for e in audit(caps, member.name) if e["outcome"] == "denied"]
    assert denied and denied[-1]["target"] == path
    assert "(at the first command)" in denied[-1]["detail"]


# --- request_timeout -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    g = Gateway(tmp_path_factory.mktemp("timed"))
    g.cli("init")
    (g.data / "gateway.toml").write_text("request_timeout = 3\n")
    g.start()
    yield g
    g.stop()


def test_a_trickling_client_is_cut_at_request_timeout_and_its_worker_freed(timed, tmp_path):
    admin, path, tip = seeded(timed, tmp_path)
    request = want_and_done(tip)

    async def go():
        async with connect(timed, admin.key) as conn:
            proc = await open_stalled(conn, path)
            started = time.monotonic()
            for byte in request:  # a byte every 0.3 s: never idle, never done
                if proc.stdout.at_eof() or time.monotonic() - started > 20:
                    break
                try:
                    proc.stdin.write(bytes([byte]))
                except (BrokenPipeError, asyncssh.ChannelClosedError, OSError):
                    break
                await asyncio.sleep(0.3)
                if proc.exit_status is not None:
                    break
            err = await asyncio.wait_for(proc.stderr.read(), 20)
            out = await proc.stdout.read()
            await proc.wait_closed()
            return time.monotonic() - started, proc.exit_status, out, err

    took, status, out, err = asyncio.run(go())
    assert 2.5 < took < 8, took
    assert status != 0 and b"PACK" not in out
    assert err.decode() == (
        "ERROR: The Git request did not arrive in full within 3 seconds; closing\n"
    )
    assert not git_workers(timed.repo_dir(path))
    cut = [line for line in timed.server_log().splitlines() if "event=git.cut" in line]
    assert cut and f"account={admin.name}" in cut[-1] and "reason=request_timeout" in cut[-1]


def test_clones_fetches_and_pushes_still_work_under_a_short_request_timeout(timed, tmp_path):
    admin, path, tip = seeded(timed, tmp_path)
    clone = tmp_path / "c"
    timed.git(admin, "clone", "-q", timed.url(path), str(clone))
    (clone / "b.txt").write_text("b\n")
    local_git("add", "b.txt", cwd=clone, env=timed.env)
    local_git("commit", "-qm", "b", cwd=clone, env=timed.env)
    timed.git(admin, "push", "-q", "origin", "HEAD:main", cwd=clone)
    timed.git(admin, "fetch", "-q", cwd=clone)
    assert (
        timed.git(admin, "ls-remote", timed.url(path)).stdout.split()[0]
        == local_git("rev-parse", "HEAD", cwd=clone).strip()
    )


def test_a_push_whose_pack_is_slower_than_request_timeout_is_not_cut(timed, tmp_path):
    """The limit covers the commands; the pack after them may take long on a slow link."""
    admin, path, tip = seeded(timed, tmp_path)
    work = tmp_path / "w"
    timed.git(admin, "clone", "-q", timed.url(path), str(work))
    (work / "big.txt").write_bytes(bytes(range(256)) * 400)
    local_git("add", "big.txt", cwd=work, env=timed.env)
    local_git("commit", "-qm", "big", cwd=work, env=timed.env)
    new = local_git("rev-parse", "HEAD", cwd=work).strip()
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "-q"],
        cwd=work,
        input=f"{new}\n^{tip}\n".encode(),
        capture_output=True,
        check=True,
    ).stdout

    async def go():
        async with connect(timed, admin.key) as conn:
            proc = await conn.create_process(f"git-receive-pack '{path}.git'", encoding=None)
            await asyncio.wait_for(advertised(proc), 20)
            proc.stdin.write(
                pkt(f"{'0' * 40} {new} refs/heads/slow\0report-status\n".encode()) + b"0000"
            )
            step = max(1, len(pack) // 10)
            for i in range(0, len(pack), step):  # 10 pieces over 5 s, beyond the 3 s limit
                proc.stdin.write(pack[i : i + step])
                await asyncio.sleep(0.5)
            return await finish(proc)

    status, out, err = asyncio.run(go())
    assert status == 0, err
    assert b"unpack ok" in out and b"ok refs/heads/slow" in out, (out, err)
    assert timed.git(admin, "ls-remote", timed.url(path), "refs/heads/slow").stdout.startswith(new)


# --- units ---------------------------------------------------------------------------------

WANT = pkt(b"want " + b"a" * 40 + b" side-band-64k\n")
HAVE = pkt(b"have " + b"b" * 40 + b"\n")


@pytest.mark.parametrize(
    "service, stream, done_at",
    [
        ("git-upload-pack", WANT + b"0000" + HAVE + b"0000" + HAVE + pkt(b"done\n"), "end"),
        ("git-upload-pack", WANT + b"0000" + HAVE + b"0000", None),
        ("git-upload-pack", b"0000", "end"),  # ls-remote: nothing wanted
        ("git-upload-pack", WANT + pkt(b"deepen 1\n") + b"0000", None),
        ("git-upload-pack", WANT + b"0000" + pkt(b"done"), "end"),
        ("git-upload-pack", WANT + b"0000" + pkt(b"dome\n"), None),
        (
            "git-receive-pack",
            pkt(b"0" * 40 + b" " + b"c" * 40 + b" refs/heads/x\0report-status\n") + b"0000",
            "end",
        ),
        ("git-receive-pack", pkt(b"0" * 40 + b" " + b"c" * 40 + b" refs/heads/x\n"), None),
        ("git-upload-archive", pkt(b"argument HEAD\n") + b"0000", "end"),
        ("git-upload-pack", b"zz1!garbage", "end"),  # not pkt-lines: the worker refuses them
        ("git-upload-pack", b"0+1f", "end"),
    ],
)
def test_request_watch_finds_the_end_of_a_request(service, stream, done_at):
    whole = RequestWatch(service)
    assert whole.feed(stream) is (done_at is not None)
    byte_by_byte = RequestWatch(service)
    ends = [i for i in range(len(stream)) if byte_by_byte.feed(stream[i : i + 1])]
    if done_at == "end" and not stream.startswith((b"zz", b"0+")):
        assert ends and ends[0] == len(stream) - 1  # not a byte early
    elif done_at is None:
        assert not ends


def test_slots_are_shared_by_every_process_on_the_data_dir(tmp_path):
    async def go():
        one, other = WorkerSlots(tmp_path / "w.lock"), WorkerSlots(tmp_path / "w.lock")
        a = await one.acquire("account 1", False, total=2, per_owner=1, timeout=0)
        with pytest.raises(Refusal, match="from this account"):
            await other.acquire("account 1", False, total=2, per_owner=1, timeout=0.3)
        b = await other.acquire("key x", True, total=2, per_owner=1, timeout=0)
        with pytest.raises(Refusal, match="server is busy: all 2"):
            await one.acquire("key y", True, total=2, per_owner=1, timeout=0.3)
        waiting = asyncio.ensure_future(one.acquire("key y", True, 2, 1, timeout=5))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        b.release()
        c = await asyncio.wait_for(waiting, 2)
        for held in (a, c):
            held.release()
        d = await one.acquire("account 1", False, total=0, per_owner=0, timeout=0)  # caps off
        d.release()
        d.release()  # once only

    asyncio.run(go())


# --- where workers come from: the zygote ---------------------------------------------------


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def zygotes(g: Gateway) -> list[int]:
    """The server's zygote processes (gateway/git/workers/zygote.py)."""
    children = Path(f"/proc/{g.proc.pid}/task/{g.proc.pid}/children").read_text().split()
    found = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--zygote" in cmdline:
            found.append(int(pid))
    return found


def descriptors(pid: int) -> dict[int, str]:
    fd_dir = Path(f"/proc/{pid}/fd")
    return {int(fd.name): os.readlink(fd) for fd in fd_dir.iterdir()}


@pytest.fixture(scope="module")
def forking(tmp_path_factory):
    """A server of its own, with default worker settings: workers forked by a zygote."""
    g = Gateway(tmp_path_factory.mktemp("forking"))
    g.cli("init")
    g.start()
    yield g
    g.stop()


def test_a_forked_worker_serves_a_job_holding_only_its_own_descriptors(forking, tmp_path):
    admin, path, tip = seeded(forking, tmp_path)
    repo_dir = forking.repo_dir(path)
    assert wait_for(lambda: len(zygotes(forking)) == 1, 10)
    (zygote,) = zygotes(forking)

    async def go():
        async with connect(forking, admin.key) as conn:
            proc = await open_stalled(conn, path)
            (pid,) = git_workers(repo_dir)
            parent, fds = parent_of(pid), descriptors(pid)
            proc.stdin.write(want_and_done(tip))
            return parent, fds, await finish(proc)

    parent, fds, (status, out, err) = asyncio.run(go())
    assert parent == zygote  # forked, not a fresh Python
    assert status == 0 and b"PACK" in out, err
    # stdin, stdout, stderr, the log, the status and exit pipes; then only what the
    # worker opened itself in its repository: no socket (the client's, the zygote's), no
    # descriptor of another request or of the server.
    assert {0, 1, 2, 3, 4, 5} <= set(fds), fds
    for fd, target in fds.items():
        if fd > 5:
            assert target.startswith(str(repo_dir.resolve())), (fd, target)
    assert not [t for t in fds.values() if t.startswith("socket:")], fds
    assert all(fds[fd].startswith("pipe:") for fd in (0, 1, 2, 4, 5)), fds
    assert not git_workers(repo_dir)


def test_a_killed_worker_does_not_affect_the_next_request(forking, tmp_path):
    admin, path, tip = seeded(forking, tmp_path)
    repo_dir = forking.repo_dir(path)

    async def go():
        async with connect(forking, admin.key) as conn:
            proc = await open_stalled(conn, path)
            (pid,) = git_workers(repo_dir)
            os.kill(pid, signal.SIGKILL)
            return await finish(proc)

    status, out, err = asyncio.run(go())
    assert status != 0 and b"PACK" not in out
    assert wait_for(lambda: not git_workers(repo_dir), 10)
    assert forking.git(admin, "ls-remote", forking.url(path)).stdout.startswith(tip)
    clone = tmp_path / "after"
    forking.git(admin, "clone", "-q", forking.url(path), str(clone))
    assert local_git("rev-parse", "HEAD", cwd=clone).strip() == tip
    assert "Traceback" not in forking.server_log()


def test_a_killed_zygote_is_replaced_and_requests_in_flight_finish(forking, tmp_path):
    admin, path, tip = seeded(forking, tmp_path)
    repo_dir = forking.repo_dir(path)
    assert wait_for(lambda: len(zygotes(forking)) == 1, 10)
    (old,) = zygotes(forking)

    async def go():
        async with connect(forking, admin.key) as conn:
            proc = await open_stalled(conn, path)  # its worker is the old zygote's child
            os.kill(old, signal.SIGKILL)
            await asyncio.to_thread(wait_for, lambda: not Path(f"/proc/{old}").exists(), 10)
            await asyncio.sleep(0.5)  # the server has noticed
            proc.stdin.write(want_and_done(tip))
            return await finish(proc)

    status, out, err = asyncio.run(go())
    assert status == 0 and b"PACK" in out, err  # the request in flight was not touched
    assert forking.git(admin, "ls-remote", forking.url(path)).stdout.startswith(tip)
    (new,) = zygotes(forking)
    assert new != old
    lost = [line for line in forking.server_log().splitlines() if "event=git.zygote_lost" in line]
    assert len(lost) == 1 and f"pid={old}" in lost[0], lost
    assert not git_workers(repo_dir)


@pytest.mark.database
def test_with_no_spare_workers_each_request_starts_a_fresh_python(tmp_path):
    g = Gateway(tmp_path / "fresh")
    g.cli("init")
    (g.data / "gateway.toml").write_text("spare_workers = 0\n")
    g.start()
    try:
        admin, path, tip = seeded(g, tmp_path)

        async def go():
            async with connect(g, admin.key) as conn:
                proc = await open_stalled(conn, path)
                (pid,) = git_workers(g.repo_dir(path))
                parent = parent_of(pid)
                proc.stdin.write(want_and_done(tip))
                return parent, await finish(proc)

        parent, (status, out, err) = asyncio.run(go())
        assert parent == g.proc.pid and not zygotes(g)
        assert status == 0 and b"PACK" in out, err
    finally:
        g.stop()


def test_a_worker_imports_no_ssh_or_database_library():
    """What the zygote imports is in every worker it forks: the SSH and database
    libraries (tens of MB) stay in the server, imported by a worker only if a push
    checks a signature."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, gateway.git.workers.worker; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "dulwich" in loaded
    for heavy in ("asyncssh", "cryptography", "aiosqlite", "asyncpg", "prometheus_client"):
        assert heavy not in loaded, heavy
