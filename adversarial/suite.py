"""Each class of attack: generate inputs, send them to a real gateway, count how many were
handled correctly. A class returns (tried, handled, notes); `failures` keeps the inputs
that were not handled, to print and to keep as regression cases.

Loopback only, bounded in count and time, and every process started is stopped.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pyotp

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))
from conftest import Gateway, git_workers, local_git, make_key  # noqa: E402

ZERO = "0" * 40


@dataclass
class Result:
    name: str
    tried: int = 0
    handled: int = 0
    notes: str = ""
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        self.tried += 1
        if ok:
            self.handled += 1
        elif len(self.failures) < 20:
            self.failures.append(what)


def connect(g: Gateway, key: Path, **kw):
    return asyncssh.connect("127.0.0.1", g.port, username="git", client_keys=[str(key)],
                            known_hosts=None, agent_path=None, config=None, **kw)


async def run(conn, command, data: bytes = b"", **kw):
    """Run a command with `data` on its stdin, then end of file (asyncssh's own `run`
    sends no end of file for empty input, which leaves a server waiting, rightly)."""
    proc = await conn.create_process(command, encoding=None, **kw)
    if data:
        proc.stdin.write(data)
    proc.stdin.write_eof()
    return await proc.wait()


def server_children(g: Gateway) -> set[int]:
    try:
        text = Path(f"/proc/{g.proc.pid}/task/{g.proc.pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def open_fds(g: Gateway) -> int:
    return len(os.listdir(f"/proc/{g.proc.pid}/fd"))


def threads(g: Gateway) -> int:
    return len(os.listdir(f"/proc/{g.proc.pid}/task"))


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


class World:
    """Accounts, a repository with history, and an outside repository to protect."""

    def __init__(self, g: Gateway, work: Path) -> None:
        self.g, self.work = g, work
        self.alice = g.user()
        self.ws = g.workspace((self.alice, "admin"))
        self.path = g.repo(self.ws)
        self.clone = work / "clone"
        g.git(self.alice, "clone", "-q", g.url(self.path), str(self.clone))
        for n in range(3):
            (self.clone / f"f{n}.txt").write_text(f"{n}\n" * 100)
            local_git("add", ".", cwd=self.clone, env=g.env)
            local_git("commit", "-qm", f"c{n}", cwd=self.clone, env=g.env)
        g.git(self.alice, "push", "-q", "origin", "HEAD:main", cwd=self.clone)
        self.tip = local_git("rev-parse", "HEAD", cwd=self.clone).strip()
        # A repository outside the repositories root, and links to it planted inside.
        self.outside = work / "outside.git"
        subprocess.run(["git", "init", "-q", "--bare", str(self.outside)], check=True)
        secret = work / "secret"
        subprocess.run(["git", "clone", "-q", str(self.outside), str(secret)], check=True,
                       capture_output=True)
        (secret / "secret.txt").write_text("secret\n")
        local_git("add", ".", cwd=secret, env=g.env)
        local_git("commit", "-qm", "secret", cwd=secret, env=g.env)
        local_git("push", "-q", "origin", "HEAD:main", cwd=secret, env=g.env)
        self.secret_tip = local_git("rev-parse", "HEAD", cwd=secret).strip()
        ws_dir = g.data / "repos" / self.ws.lower()
        os.symlink(self.outside, ws_dir / "linked.git")
        os.symlink(work, g.data / "repos" / "evil")
        self.canary = work / "canary"

    def refs(self) -> str:
        return local_git("for-each-ref", cwd=self.g.repo_dir(self.path))


# --- 2. command lines -------------------------------------------------------------------

VERBS = ["git-upload-pack", "git-receive-pack", "git-upload-archive", "git upload-pack",
         "git receive-pack", "help", "whoami", "2sv", "2sv verify", "recovery-codes",
         "security-key", "workspace", "workspace show", "scp", "sh", "bash", "/bin/sh", "ls",
         "git", "git-shell", "rsync", "sftp-server", "env", "exec", "cd", "GIT-UPLOAD-PACK"]


def payloads(canary: Path) -> list[str]:
    touch = f"touch {canary}"
    return [
        f"; {touch}", f"| {touch}", f"$({touch})", f"`{touch}`", f"&& {touch}", f"|| {touch}",
        f"\n{touch}", f"\r\n{touch}", f"\x00{touch}", "'", '"', "\\", f"' ; {touch} ; '",
        f"--upload-pack={touch}", f"'--upload-pack={touch}'", "-h", "--help", "--",
        f"-c core.sshCommand={touch}", f"--exec={touch}", "../../../../etc/passwd",
        "/etc/passwd", "%2e%2e/%2e%2e/etc", "..%2f..%2fetc", "ｗｓ/ｒｅｐｏ.git", "wѕ/repo.git",
        "w\u200bs/repo.git", "\u202erepo", "A" * 5000, "\t", "$IFS", "${HOME}", "*", "~root",
        "{a,b}", "ws/repo.git extra", "'ws/repo.git' 'more'", "\x1b[31mred", "\x7f",
        "-oProxyCommand=x", "--template=/tmp", "ws/.git", ".git", "..", ".", "/", "//",
        "ws//repo", "ws/repo.git/..", "CON", "NUL.git", "ws/repo.git\x00", "\udcff",
    ]


def exec_strings(canary: Path, count: int, seed: int = 8386) -> list[str]:
    """Deterministic hostile command lines: each verb with hostile arguments, quoted and
    not, combined, including git-shell's CVE-2017-8386 shape (`git-upload-pack '--help'`)."""
    rng = random.Random(seed)
    hostile = payloads(canary)
    out: list[str] = [f"git-upload-pack '--help'", "git-upload-pack --help",
                      f"git-receive-pack '--upload-pack={canary}'"]
    quotes = ["{}", "'{}'", '"{}"', "'{}", "{}'", "\\'{}\\'"]
    seen = set(out)
    while len(out) < count:
        verb = rng.choice(VERBS)
        parts = [verb] + [rng.choice(quotes).format(rng.choice(hostile))
                          for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            rng.shuffle(parts)
        line = rng.choice([" ", "  ", "\t"]).join(parts)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def refused(status, stdout: bytes, stderr: bytes) -> bool:
    """The gateway's answer to bad input: a non-zero status, an `ERROR:` line, no output."""
    return (status not in (0, None) and stdout == b""
            and any(line.startswith(b"ERROR: ") for line in stderr.splitlines()))


def command_lines(w: World, count: int, through_ssh: int) -> Result:
    result = Result("command lines (exec strings)")
    lines = exec_strings(w.canary, count)
    g = w.g
    children = server_children(g)  # the spare Git workers

    async def run_all() -> None:
        done = 0
        while done < len(lines):
            async with connect(g, w.alice.key) as conn:
                for line in lines[done:done + 250]:
                    try:
                        proc = await asyncio.wait_for(
                            run(conn, line.encode("utf-8", "surrogateescape")), 20)
                        ok = refused(proc.exit_status, proc.stdout, proc.stderr)
                    except (asyncssh.Error, asyncio.TimeoutError, UnicodeError) as exc:
                        ok, proc = False, exc
                    result.check(ok and not w.canary.exists(), repr(line)[:200])
                done += 250

    asyncio.run(run_all())
    for line in lines[:through_ssh]:  # the real ssh client too (it cannot send NUL)
        if "\x00" in line or "\udcff" in line:
            continue
        proc = subprocess.run([*g.ssh_command(w.alice.key), "-p", str(g.port), "git@127.0.0.1",
                               line], capture_output=True, env=g.env, timeout=30)
        result.check(refused(proc.returncode, proc.stdout, proc.stderr) and not w.canary.exists(),
                     "ssh: " + repr(line)[:200])
    # No process was started for any of them: the server's children are the same spares.
    result.check(wait_until(lambda: server_children(g) == children, 10),
                 f"server children {server_children(g)} (were {children})")
    stray = [p for p in w.work.iterdir() if p.name not in
             {"clone", "outside.git", "secret", "canary"}]
    result.notes = (f"{count} via one asyncssh connection per 250, {through_ssh} via ssh; "
                    f"canary {'CREATED' if w.canary.exists() else 'never created'}; "
                    f"{'unexpected files: ' + str(stray) if stray else 'no stray files'}")
    return result


# --- 3. paths ------------------------------------------------------------------------------

def paths(w: World) -> Result:
    result = Result("paths (traversal, symlinks, case, .git)")
    ws, name = w.path.split("/")
    hostile = [
        "../outside", "../../outside", f"{ws}/../../outside", f"{ws}/../{ws}/{name}",
        "/../outside.git", f"{ws}/linked", f"{ws}/linked.git", "evil/outside", "evil/outside.git",
        "evil/../evil/outside", f"{ws}/%2e%2e/x", "%2e%2e/%2e%2e/outside", f"{ws}/..%2f..",
        str(w.outside), str(w.outside)[1:], f"//{w.outside}", f"{ws}/.git", f"{ws}/{name}/.git",
        f"{ws}/{name}.git/.git", ".git/config", f"{ws}/.", f"{ws}/..", "./.", "..", f"{ws}/CON",
        f"{ws}/NUL", f"{ws}/aux.git", f"{ws}\\..\\outside", f"{ws}/{name}.git/objects",
        f"{ws}/{name}/../../../outside", "~/outside", f"{ws.upper()}/LINKED",
        f"{ws}/{name}\x00.git", f"{ws}/{name}.git.git", f"{ws}/{name}.lock",
    ]

    async def run_all() -> None:
        async with connect(w.g, w.alice.key) as conn:
            for path in hostile:
                for verb in ("git-upload-pack", "git-upload-archive", "git-receive-pack"):
                    line = f"{verb} '{path}'"
                    try:
                        proc = await asyncio.wait_for(run(conn, line), 20)
                        leaked = w.secret_tip.encode() in proc.stdout
                        ok = not leaked and refused(proc.exit_status, proc.stdout, proc.stderr)
                    except (asyncssh.Error, asyncio.TimeoutError) as exc:
                        ok = False
                    result.check(ok, repr(line))
            # Case tricks on the real repository reach only that repository.
            for variant in (w.path.upper(), w.path.swapcase(), f"/{w.path}.git"):
                proc = await run(conn, f"git-upload-pack '{variant}'", b"0000")
                result.check(w.secret_tip.encode() not in proc.stdout
                             and (proc.exit_status != 0 or w.tip.encode() in proc.stdout),
                             f"case variant {variant!r}")

    asyncio.run(run_all())
    result.notes = "symlinked repo and workspace pointing outside planted; outside tip never sent"
    return result


# --- 4. SSH level --------------------------------------------------------------------------

ENV_ATTACKS = {
    "LD_PRELOAD": "/tmp/evil.so", "LD_LIBRARY_PATH": "/tmp", "GIT_DIR": "/etc",
    "GIT_CONFIG_PARAMETERS": "'core.sshCommand'='touch {canary}'", "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "core.hooksPath", "GIT_CONFIG_VALUE_0": "/tmp",
    "GIT_EXEC_PATH": "/tmp", "GIT_TEMPLATE_DIR": "/tmp", "GIT_OBJECT_DIRECTORY": "/tmp",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES": "/tmp", "BASH_ENV": "/tmp/x", "ENV": "/tmp/x",
    "PATH": "/tmp", "PYTHONPATH": "/tmp", "PYTHONSTARTUP": "/tmp/x", "HOME": "/tmp",
    "GIT_PROTOCOL": "version=2:object-format=sha256:\n--upload-pack=touch {canary}",
    "GIT_SSH_COMMAND": "touch {canary}", "SSH_ORIGINAL_COMMAND": "touch {canary}",
    "GATEWAY_DATA_DIR": "/tmp", "GATEWAY_HOOKS_DIR": "/tmp",
}


def ssh_level(w: World, slow_gateway: Gateway) -> Result:
    result = Result("SSH level (env, forwarding, auth, identity)")
    g = w.g
    canary = str(w.canary)

    async def env_and_forwarding() -> None:
        for name, value in ENV_ATTACKS.items():
            env = {name: value.format(canary=canary)}
            try:
                async with connect(g, w.alice.key) as conn:
                    who = await conn.run("whoami", env=env)
                    ls = await run(conn, f"git-upload-pack '{w.path}'", b"0000", env=env)
                ok = (who.stdout == w.alice.name + "\n" and w.tip.encode() in ls.stdout
                      and not w.canary.exists())
            except asyncssh.Error:
                ok = False
            result.check(ok, f"env {name}")
        async with connect(g, w.alice.key) as conn:
            for attempt in ("local forward", "remote forward", "sftp"):
                try:
                    if attempt == "local forward":
                        await conn.open_connection("127.0.0.1", g.port)
                    elif attempt == "remote forward":
                        await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
                    else:
                        await conn.start_sftp_client()
                    ok = False
                except Exception:  # refused: ChannelOpenError, ChannelListenError, SFTPError
                    ok = True
                result.check(ok, attempt)

    asyncio.run(env_and_forwarding())
    scp = subprocess.run(["scp", "-P", str(g.port), "-i", str(w.alice.key), "-o", "BatchMode=yes",
                          "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                          f"git@127.0.0.1:{w.path}.git/config", str(w.work / "stolen")],
                         capture_output=True, timeout=30)
    result.check(scp.returncode != 0 and not (w.work / "stolen").exists(), "scp")
    # More than six authentication attempts: disconnected before the real key is tried.
    strangers = [make_key(w.work, f"stranger{i}") for i in range(7)]
    argv = [*g.ssh_command(strangers[0])]
    for key in strangers[1:] + [w.alice.key]:
        argv += ["-i", str(key)]
    tries = subprocess.run([*argv, "-p", str(g.port), "git@127.0.0.1", "whoami"],
                           capture_output=True, text=True, env=g.env, timeout=30)
    result.check(tries.returncode == 255 and w.alice.name not in tries.stdout, "7 wrong keys first")
    # Offer the victim's key, sign with one's own: one's own account, never the victim's.
    result.check(_probe_then_sign(w), "offer victim's key, sign with own (CVE-2023-43809)")
    # A client that stalls after its version string is cut at the login timeout.
    with socket.create_connection(("127.0.0.1", slow_gateway.port), timeout=30) as s:
        s.sendall(b"SSH-2.0-OpenSSH_9.6 slow\r\n")
        started = time.monotonic()
        try:
            while s.recv(65536):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        took = time.monotonic() - started
    result.check(took < 10, f"slow client held {took:.1f} s")
    result.notes = f"{len(ENV_ATTACKS)} environment variables, forwarding, sftp, scp, auth limit"
    return result


def _probe_then_sign(w: World) -> bool:
    from test_ssh import _probe_then_sign as method_for

    victim = w.g.user()
    attacker = w.g.user()
    victim_public = asyncssh.read_public_key(str(victim.pub))
    handlers = asyncssh.auth._client_auth_handlers
    original = handlers[b"publickey"]
    handlers[b"publickey"] = method_for(victim_public, claim_victim_when_signing=False)
    try:
        async def attack():
            async with connect(w.g, attacker.key, preferred_auth="publickey") as conn:
                return (await conn.run("whoami")).stdout
        who = asyncio.run(attack())
    finally:
        handlers[b"publickey"] = original
    return who == attacker.name + "\n"


# --- 5. protocol ---------------------------------------------------------------------------

def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def protocol(w: World, count: int) -> Result:
    result = Result("protocol (pkt-lines, packs, wants)")
    rng = random.Random(5)
    blob = local_git("rev-parse", "HEAD:f0.txt", cwd=w.clone).strip()
    fixed = {
        "upload-pack": [
            pkt(f"want {'1' * 40} side-band-64k\n".encode()) + b"0000" + pkt(b"done\n"),
            pkt(f"want {blob} side-band-64k\n".encode()) + b"0000" + pkt(b"done\n"),
            pkt(f"want {w.tip}\n".encode()) + b"0000" + pkt(b"have zzzz\n") + pkt(b"done\n"),
            b"ffff" + b"x" * 10, b"0004", b"000", pkt(b"want") + b"0000", b"\x00" * 100,
            pkt(f"want {w.tip} multi_ack\n".encode()) + pkt(b"deepen -1\n") + b"0000",
        ],
        "receive-pack": [
            pkt(f"{w.tip} {'2' * 40} refs/heads/main\x00report-status\n".encode()) + b"0000"
            + b"PACK\x00\x00\x00\x02\x00\x00\x00\x01garbage",
            pkt(f"{ZERO} {w.tip} refs/heads/../x\x00report-status\n".encode()) + b"0000",
            pkt(f"{w.tip} {ZERO} refs/heads/nope\x00report-status\n".encode()) + b"0000",
            pkt(b"not a command\n") + b"0000", b"PACK" + os.urandom(64), b"0010short",
        ],
    }
    inputs = [(service, data) for service, items in fixed.items() for data in items]
    while len(inputs) < count:  # random bytes and truncations of the fixed ones
        service, data = rng.choice(inputs[:len(fixed["upload-pack"]) + len(fixed["receive-pack"])])
        mutated = bytearray(data[:rng.randint(0, len(data))])
        for _ in range(rng.randint(0, 4)):
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs.append((service, bytes(mutated) + (os.urandom(rng.randint(0, 40)))))
    before = w.refs()
    repo_dir = w.g.repo_dir(w.path)

    async def run_all() -> None:
        async with connect(w.g, w.alice.key) as conn:
            for service, data in inputs:
                try:
                    proc = await asyncio.wait_for(
                        run(conn, f"git-{service} '{w.path}'", data), 30)
                    ok = b"Traceback" not in proc.stderr and w.secret_tip.encode() not in proc.stdout
                except (asyncssh.Error, asyncio.TimeoutError):
                    ok = False
                result.check(ok, f"{service} {data[:60]!r}")

    asyncio.run(run_all())
    clean = wait_until(lambda: not list((repo_dir / "objects").glob("incoming-*"))
                       and not list((repo_dir / "objects").glob("tmp_pack_*")), 15)
    result.check(clean, "no quarantine or temporary pack left")
    result.check(w.refs() == before, "no ref changed")
    fsck = subprocess.run(["git", "fsck", "--full"], cwd=repo_dir, capture_output=True)
    result.check(fsck.returncode == 0, "git fsck --full")
    result.notes = "then: no temporary files, refs unchanged, fsck clean"
    return result


# --- 6. 2SV --------------------------------------------------------------------------------

def two_step(g: Gateway, parallel: int) -> Result:
    from test_twosv import enable, fresh_code

    result = Result("2SV (brute force, replay, recovery race)")
    brute = g.user()
    secret, codes, _ = enable(g, brute)
    guesses = [f"{n:06d}" for n in random.Random(1).sample(range(10**6), parallel)]
    real = {pyotp.TOTP(secret).at(time.time() + 30 * k) for k in (-1, 0, 1)}
    guesses = [x for x in guesses if x not in real]

    def guess(code: str) -> str:
        return g.ssh(brute, "2sv", "verify", input=code + "\n").stderr

    with ThreadPoolExecutor(max_workers=min(parallel, 20)) as pool:
        answers = list(pool.map(guess, guesses))
    judged = sum("Wrong verification code." in a for a in answers)
    throttled = sum("Too many failed codes" in a for a in answers)
    result.check(judged <= 5, f"{judged} codes judged before the back-off (at most 5)")
    result.check(judged + throttled == len(guesses), "every guess refused")
    correct = g.ssh(brute, "2sv", "verify", input=fresh_code(secret) + "\n")
    result.check("Too many failed codes" in correct.stderr, "a correct code waits out the back-off")
    audit = g.cli("audit", "--account", brute.name, "--limit", "1000").stdout
    result.check(audit.count("2sv.code_refused") >= len(guesses), "every refused code audited")
    # Replay: a code accepted once is refused the second time.
    other = g.user()
    secret2, codes2, _ = enable(g, other)
    code = fresh_code(secret2)
    first = g.ssh(other, "2sv", "verify", input=code + "\n")
    again = g.ssh(other, "2sv", "verify", input=code + "\n")
    result.check(first.returncode == 0 and again.returncode != 0, "replayed TOTP code")
    # One recovery code used twice at once: exactly one wins.
    for attempt in range(3):
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda _: g.ssh(other, "2sv", "verify",
                                                 input=codes2[attempt] + "\n"), range(2)))
        result.check(sum(r.returncode == 0 for r in runs) == 1,
                     f"recovery code {attempt} raced twice")
    result.notes = f"{len(guesses)} parallel wrong codes across connections"
    return result


# --- 7. faults -----------------------------------------------------------------------------

def faults(g: Gateway, w: World, rounds: int) -> Result:
    result = Result("faults (SIGKILL mid-push, cut clients)")
    repo_dir = g.repo_dir(w.path)
    for n in range(rounds):
        before = local_git("rev-parse", "main", cwd=repo_dir).strip()
        (w.clone / f"big{n}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        local_git("add", ".", cwd=w.clone, env=g.env)
        local_git("commit", "-qm", f"big {n}", cwd=w.clone, env=g.env)
        new = local_git("rev-parse", "HEAD", cwd=w.clone).strip()
        env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(w.alice.key))}
        push = subprocess.Popen(["git", "push", "-q", "origin", "HEAD:main"], cwd=w.clone,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2 + 0.15 * (n % 5))
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()
        push.wait(60)
        g.start()
        after = local_git("rev-parse", "main", cwd=repo_dir).strip()
        fsck = subprocess.run(["git", "fsck", "--full"], cwd=repo_dir, capture_output=True)
        with sqlite3.connect(g.data / "gateway.db") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        leftovers = list((repo_dir / "objects").glob("incoming-*"))
        result.check(after in (before, new) and fsck.returncode == 0 and integrity == "ok"
                     and not leftovers, f"round {n}: ref {after[:8]} fsck {fsck.returncode} "
                     f"db {integrity} leftovers {leftovers}")
        if after != new:  # bring the clone back in line with the server
            local_git("reset", "-q", "--hard", after, cwd=w.clone)
    # Clients cut mid-clone and mid-push leave no process or descriptor behind. Counted
    # in the same state both times: just after a normal request, spare workers refilled.
    def steady() -> tuple[int, int, int]:
        g.git(w.alice, "ls-remote", g.url(w.path))
        time.sleep(2)
        return open_fds(g), len(server_children(g)), threads(g)

    fds, children, tasks = steady()
    for n in range(4):
        target = w.work / f"cut{n}"
        env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(w.alice.key))}
        argv = (["git", "clone", "-q", g.url(w.path), str(target)] if n % 2 == 0
                else ["git", "push", "-q", "-f", "origin", "HEAD:refs/heads/cut"])
        proc = subprocess.Popen(argv, cwd=w.clone, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: git_workers(repo_dir) or proc.poll() is not None, 10, 0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_until(lambda: not git_workers(repo_dir), 15)
    steady()
    settled = wait_until(lambda: not git_workers(repo_dir) and open_fds(g) <= fds
                         and len(server_children(g)) <= children and threads(g) <= tasks, 15)
    result.check(settled, f"after cut clients: fds {open_fds(g)} (was {fds}), children "
                          f"{len(server_children(g))} (was {children}), threads {threads(g)} "
                          f"(was {tasks}), workers {git_workers(repo_dir)}")
    result.notes = f"{rounds} SIGKILL rounds; 4 clients cut; fds, processes, threads counted"
    return result


# --- 8. load -------------------------------------------------------------------------------

def load(g: Gateway, w: World, clones: int, sockets: int) -> Result:
    result = Result("load (concurrent clones, socket flood)")

    def clone(n: int) -> bool:
        target = w.work / f"load{n}"
        r = g.git(w.alice, "clone", "-q", g.url(w.path), str(target), check=False)
        ok = r.returncode == 0 and local_git("rev-parse", "HEAD", cwd=target).strip() == w.tip
        subprocess.run(["rm", "-rf", str(target)])
        return ok

    with ThreadPoolExecutor(max_workers=clones) as pool:
        for n, ok in enumerate(pool.map(clone, range(clones))):
            result.check(ok, f"concurrent clone {n}")
    flood = []
    try:
        for _ in range(sockets):
            flood.append(socket.create_connection(("127.0.0.1", g.port), timeout=10))
        started = time.monotonic()
        r = g.git(w.alice, "ls-remote", g.url(w.path), check=False)
        took = time.monotonic() - started
        result.check(r.returncode == 0 and w.tip in r.stdout and took < 2,
                     f"ls-remote during {sockets} open sockets took {took:.2f} s")
    finally:
        for s in flood:
            s.close()
    result.notes = f"{clones} clones at once; ls-remote with {sockets} silent sockets open"
    return result
