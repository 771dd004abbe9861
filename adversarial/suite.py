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
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pyotp

from testkit import Gateway, git_workers, local_git, make_key, pkt, wait_for
from testkit.sshclient import connect

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


PRE_RECEIVE = """#!/bin/sh
# The adversarial suite's server hook: refuse refs/heads/reject-*.
while read old new ref; do
  case "$ref" in refs/heads/reject-*) echo "refused by the adversarial suite"; exit 1;; esac
done
exit 0
"""


def write_hooks(hooks: Path) -> None:
    hooks.mkdir(parents=True, exist_ok=True)
    (hooks / "pre-receive").write_text(PRE_RECEIVE)
    (hooks / "pre-receive").chmod(0o755)


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
        subprocess.run(
            ["git", "clone", "-q", str(self.outside), str(secret)], check=True, capture_output=True
        )
        (secret / "secret.txt").write_text("secret\n")
        local_git("add", ".", cwd=secret, env=g.env)
        local_git("commit", "-qm", "secret", cwd=secret, env=g.env)
        local_git("push", "-q", "origin", "HEAD:main", cwd=secret, env=g.env)
        self.secret_tip = local_git("rev-parse", "HEAD", cwd=secret).strip()
        ws_dir = g.data / "repos" / self.ws.lower()
        os.symlink(self.outside, ws_dir / "linked.git")
        os.symlink(work, g.data / "repos" / "evil")
        self.canary = work / "canary"
        # A second canary outside every directory the suite made, where `touch /tmp/x`
        # payloads would land.
        self.tmp_canary = Path(f"/tmp/gateway-adversarial-canary-{uuid.uuid4().hex}")

    def canaries_intact(self) -> bool:
        return not self.canary.exists() and not self.tmp_canary.exists()

    def outside_data(self) -> set[str]:
        """Every file the server could write outside its data directory: its working
        directory (relative paths land there) and the suite's work directory."""
        found = {
            f"root/{p.relative_to(self.g.root)}"
            for p in self.g.root.rglob("*")
            if p.relative_to(self.g.root).parts[0] not in ("var", "serve.log", "home", "userkeys")
        }
        found |= {f"work/{p.name}" for p in self.work.iterdir()}
        return found

    def repositories(self) -> set[str]:
        return {str(p.relative_to(self.g.data)) for p in (self.g.data / "repos").glob("*/*")}

    def refs(self) -> str:
        return local_git("for-each-ref", cwd=self.g.repo_dir(self.path))


# --- 2. command lines -------------------------------------------------------------------

VERBS = [
    "git-upload-pack",
    "git-receive-pack",
    "git-upload-archive",
    "git upload-pack",
    "git receive-pack",
    "help",
    "whoami",
    "2sv",
    "2sv verify",
    "recovery-codes",
    "security-key",
    "workspace",
    "workspace show",
    "scp",
    "sh",
    "bash",
    "/bin/sh",
    "ls",
    "git",
    "git-shell",
    "rsync",
    "sftp-server",
    "env",
    "exec",
    "cd",
    "GIT-UPLOAD-PACK",
]


def payloads(canary: Path, tmp_canary: Path) -> list[str]:
    return [p for target in (canary, tmp_canary) for p in _payloads(f"touch {target}")] + [
        "touch pwned-relative",
        "--upload-pack=touch pwned-relative",
        "$(touch pwned-relative)",
    ]


def _payloads(touch: str) -> list[str]:
    return [
        f"; {touch}",
        f"| {touch}",
        f"$({touch})",
        f"`{touch}`",
        f"&& {touch}",
        f"|| {touch}",
        f"\n{touch}",
        f"\r\n{touch}",
        f"\x00{touch}",
        "'",
        '"',
        "\\",
        f"' ; {touch} ; '",
        f"--upload-pack={touch}",
        f"'--upload-pack={touch}'",
        "-h",
        "--help",
        "--",
        f"-c core.sshCommand={touch}",
        f"--exec={touch}",
        "../../../../etc/passwd",
        "/etc/passwd",
        "%2e%2e/%2e%2e/etc",
        "..%2f..%2fetc",
        "ｗｓ/ｒｅｐｏ.git",
        "wѕ/repo.git",
        "w\u200bs/repo.git",
        "\u202erepo",
        "A" * 5000,
        "\t",
        "$IFS",
        "${HOME}",
        "*",
        "~root",
        "{a,b}",
        "ws/repo.git extra",
        "'ws/repo.git' 'more'",
        "\x1b[31mred",
        "\x7f",
        "-oProxyCommand=x",
        "--template=/tmp",
        "ws/.git",
        ".git",
        "..",
        ".",
        "/",
        "//",
        "ws//repo",
        "ws/repo.git/..",
        "CON",
        "NUL.git",
        "ws/repo.git\x00",
        "\udcff",
    ]


def exec_strings(canary: Path, tmp_canary: Path, count: int, seed: int = 8386) -> list[str]:
    """Deterministic hostile command lines: each verb with hostile arguments, quoted and
    not, combined, including git-shell's CVE-2017-8386 shape (`git-upload-pack '--help'`)."""
    rng = random.Random(seed)
    hostile = payloads(canary, tmp_canary)
    out: list[str] = [  # fixed regression cases first: the real ssh sample runs these
        "git-upload-pack '--help'",
        "git-upload-pack --help",
        "git-upload-pack -h",
        f"git-receive-pack '--upload-pack=touch {tmp_canary}'",
        f"git-upload-pack --upload-pack='touch {tmp_canary}' x/y.git",
        f"git-upload-archive '--exec=touch {tmp_canary}'",
        "git-upload-pack '\udcff'",
        "git-upload-pack 'x\x00y'",
        "git-upload-pack " + "x" * 30000,
        "env --split-string='touch pwned-relative'",
        "git-upload-pack '\u2215etc\u2215passwd'",
    ]
    quotes = ["{}", "'{}'", '"{}"', "'{}", "{}'", "\\'{}\\'"]
    seen = set(out)
    while len(out) < count:
        verb = rng.choice(VERBS)
        parts = [verb] + [
            rng.choice(quotes).format(rng.choice(hostile)) for _ in range(rng.randint(1, 3))
        ]
        if rng.random() < 0.2:
            rng.shuffle(parts)
        line = rng.choice([" ", "  ", "\t"]).join(parts)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def refused(status, stdout: bytes, stderr: bytes) -> bool:
    """The gateway's answer to bad input: a non-zero status, an `ERROR:` line, no output."""
    return (
        status not in (0, None)
        and stdout == b""
        and any(line.startswith(b"ERROR: ") for line in stderr.splitlines())
    )


PER_CONNECTION = 50  # sessions one after another on a connection, then a new connection


def command_lines(w: World, count: int, through_ssh: int) -> Result:
    result = Result("command lines (exec strings)")
    lines = exec_strings(w.canary, w.tmp_canary, count)
    g = w.g
    children = server_children(g)  # the spare Git workers
    outside, repos = w.outside_data(), w.repositories()

    async def run_all() -> None:
        for first in range(0, len(lines), PER_CONNECTION):
            async with connect(g, w.alice.key) as conn:
                for line in lines[first : first + PER_CONNECTION]:
                    try:
                        proc = await asyncio.wait_for(
                            run(conn, line.encode("utf-8", "surrogateescape")), 20
                        )
                        ok = refused(proc.exit_status, proc.stdout, proc.stderr)
                    except (TimeoutError, asyncssh.Error, UnicodeError):
                        ok = False
                    result.check(ok and w.canaries_intact(), repr(line)[:200])

    asyncio.run(run_all())
    sent = 0
    for line in lines:  # the real ssh client too (it cannot send NUL or invalid UTF-8)
        if sent == through_ssh:
            break
        if "\x00" in line or "\udcff" in line:
            continue
        sent += 1
        proc = subprocess.run(
            [*g.ssh_command(w.alice.key), "-p", str(g.port), "git@127.0.0.1", line],
            capture_output=True,
            env=g.env,
            timeout=30,
        )
        result.check(
            refused(proc.returncode, proc.stdout, proc.stderr) and w.canaries_intact(),
            "ssh: " + repr(line)[:200],
        )
    # No process was started for any of them: the server's children are the same spares.
    result.check(
        wait_for(lambda: server_children(g) == children, 10),
        f"server children {server_children(g)} (were {children})",
    )
    stray = sorted(w.outside_data() - outside)
    result.check(not stray and w.canaries_intact(), f"files written outside the data dir: {stray}")
    made = sorted(w.repositories() ^ repos)
    result.check(not made, f"repositories made or removed: {made}")
    result.notes = (
        f"{count} via asyncssh ({PER_CONNECTION} sessions a connection), {sent} via "
        f"ssh; canaries {'never created' if w.canaries_intact() else 'CREATED'}; "
        + (
            f"files written outside the data dir: {stray}"
            if stray
            else "no file outside the data dir"
        )
    )
    return result


# --- 3. paths ------------------------------------------------------------------------------


def paths(w: World) -> Result:
    result = Result("paths (traversal, symlinks, case, .git)")
    ws, name = w.path.split("/")
    hostile = [
        "../outside",
        "../../outside",
        f"{ws}/../../outside",
        f"{ws}/../{ws}/{name}",
        "/../outside.git",
        f"{ws}/linked",
        f"{ws}/linked.git",
        "evil/outside",
        "evil/outside.git",
        "evil/../evil/outside",
        f"{ws}/%2e%2e/x",
        "%2e%2e/%2e%2e/outside",
        f"{ws}/..%2f..",
        str(w.outside),
        str(w.outside)[1:],
        f"//{w.outside}",
        f"{ws}/.git",
        f"{ws}/{name}/.git",
        f"{ws}/{name}.git/.git",
        ".git/config",
        f"{ws}/.",
        f"{ws}/..",
        "./.",
        "..",
        f"{ws}/CON",
        f"{ws}/NUL",
        f"{ws}/aux.git",
        f"{ws}\\..\\outside",
        f"{ws}/{name}.git/objects",
        f"{ws}/{name}/../../../outside",
        "~/outside",
        f"{ws.upper()}/LINKED",
        f"{ws}/{name}\x00.git",
        f"{ws}/{name}.git.git",
        f"{ws}/{name}.lock",
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
                    except (TimeoutError, asyncssh.Error):
                        ok = False
                    result.check(ok, repr(line))
            # Case tricks on the real repository reach only that repository.
            for variant in (w.path.upper(), w.path.swapcase(), f"/{w.path}.git"):
                proc = await run(conn, f"git-upload-pack '{variant}'", b"0000")
                result.check(
                    w.secret_tip.encode() not in proc.stdout
                    and (proc.exit_status != 0 or w.tip.encode() in proc.stdout),
                    f"case variant {variant!r}",
                )

    asyncio.run(run_all())
    result.notes = "symlinked repo and workspace pointing outside planted; outside tip never sent"
    return result


# --- 4. SSH level --------------------------------------------------------------------------

ENV_ATTACKS = [  # (name, value); {canary} is replaced by a path that must never appear
    ("LD_PRELOAD", "{preload}"),
    ("LD_LIBRARY_PATH", "/tmp"),
    ("GIT_DIR", "/etc"),
    ("GIT_CONFIG_PARAMETERS", "'core.sshCommand'='touch {canary}'"),
    ("GIT_CONFIG_COUNT", "1"),
    ("GIT_CONFIG_KEY_0", "core.hooksPath"),
    ("GIT_CONFIG_VALUE_0", "/tmp"),
    ("GIT_EXEC_PATH", "/tmp"),
    ("GIT_TEMPLATE_DIR", "/tmp"),
    ("GIT_OBJECT_DIRECTORY", "/tmp"),
    ("GIT_ALTERNATE_OBJECT_DIRECTORIES", "/tmp"),
    ("BASH_ENV", "/tmp/x"),
    ("ENV", "/tmp/x"),
    ("PATH", "/tmp"),
    ("PYTHONPATH", "/tmp"),
    ("PYTHONSTARTUP", "/tmp/x"),
    ("HOME", "/tmp"),
    ("PYTHONINSPECT", "1"),
    ("PYTHONWARNINGS", "error"),
    ("GIT_TRACE", "{canary}"),
    ("GIT_PROTOCOL", "version=2:object-format=sha256:\n--upload-pack=touch {canary}"),
    ("GIT_PROTOCOL", "version=2"),
    ("GIT_PROTOCOL", "version=1"),
    ("GIT_PROTOCOL", "x" * 10000),
    ("GIT_SSH_COMMAND", "touch {canary}"),
    ("SSH_ORIGINAL_COMMAND", "touch {canary}"),
    ("GATEWAY_DATA_DIR", "/tmp"),
    ("GATEWAY_HOOKS_DIR", "/tmp"),
    ("GATEWAY_ACCOUNT", "root"),
    # soft-serve CVE-2024-41956: any variable reaching git, e.g. its config by environment
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_SYSTEM", "/dev/null"),
    ("GIT_CONFIG_KEY_0", "core.fsmonitor"),
    ("GIT_CONFIG_VALUE_0", "touch {canary}"),
    # Gogs CVE-2024-39930: variables passed to `env` become its options
    ("--split-string=touch {canary}", "x"),
    ("-S", "touch {canary}"),
    ("A", "B --split-string=touch {canary}"),
    ("X=Y -i", "touch {canary}"),
]


def _library(work: Path, name: str, canary: Path) -> Path | None:
    source, library = work / f"{name}.c", work / f"{name}.so"
    source.write_text(
        "#include <fcntl.h>\n__attribute__((constructor)) static void evil(void)"
        f' {{ open("{canary}", O_CREAT | O_WRONLY, 0600); }}\n'
    )
    made = subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(library), str(source)], capture_output=True
    )
    return library if made.returncode == 0 else None


def preload_library(work: Path, canary: Path) -> tuple[str, bool]:
    """A real LD_PRELOAD library whose constructor creates the canary: loaded by any
    process the server starts with the client's environment, it would show at once.
    Returns its path and whether a control copy (another canary) works on /bin/true."""
    control = work / "control-canary"
    probe = _library(work, "control", control)
    if probe is not None:
        subprocess.run(["true"], env={**os.environ, "LD_PRELOAD": str(probe)})
    works = control.exists()
    library = _library(work, "evil", canary)
    return (str(library) if library else "/tmp/evil.so"), works


def ssh_level(w: World, slow_gateway: Gateway) -> Result:
    result = Result("SSH level (env, forwarding, auth, identity)")
    g = w.g
    canary = str(w.tmp_canary)
    preload, preload_works = preload_library(w.work, w.tmp_canary)

    async def env_and_forwarding() -> None:
        for name, value in ENV_ATTACKS:
            env = {name.format(canary=canary): value.format(canary=canary, preload=preload)}
            try:
                # A well-formed `version=2` is honoured (protocol v2): asked in v2.
                v2 = env.get("GIT_PROTOCOL") == "version=2"
                async with connect(g, w.alice.key) as conn:
                    who = await run(conn, "whoami", env=env)
                    ls = await run(
                        conn,
                        f"git-upload-pack '{w.path}'",
                        pkt(b"command=ls-refs\n") + b"00010000" if v2 else b"0000",
                        env=env,
                    )
                    # a full fetch runs every stage of the worker with the variable sent
                    want = pkt(f"want {w.tip}\n".encode())
                    fetch = await run(
                        conn,
                        f"git-upload-pack '{w.path}'",
                        pkt(b"command=fetch\n") + b"0001" + want + pkt(b"done\n") + b"0000"
                        if v2
                        else pkt(f"want {w.tip} side-band-64k thin-pack ofs-delta\n".encode())
                        + b"0000"
                        + pkt(b"done\n"),
                        env=env,
                    )
                ok = (
                    who.stdout == (w.alice.name + "\n").encode()
                    and w.tip.encode() in ls.stdout
                    and fetch.exit_status == 0
                    and b"PACK" in fetch.stdout
                    and w.canaries_intact()
                )
            except (asyncssh.Error, OSError) as exc:
                ok, who = False, exc
            result.check(ok, f"env {name!r}={value[:40]!r}: {who!r:.200}")
        async with connect(g, w.alice.key) as conn:
            for attempt in (
                "local forward",
                "local forward to a unix socket",
                "remote forward",
                "remote forward of a unix socket",
                "sftp",
            ):
                try:
                    if attempt == "local forward":
                        await conn.open_connection("127.0.0.1", g.port)
                    elif attempt == "local forward to a unix socket":
                        await conn.open_unix_connection("/run/systemd/private")
                    elif attempt == "remote forward":
                        await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
                    elif attempt == "remote forward of a unix socket":
                        await conn.forward_remote_path(f"/tmp/gw-{uuid.uuid4().hex}", "/dev/null")
                    else:
                        await conn.start_sftp_client()
                    ok = False
                except (asyncssh.ChannelOpenError, asyncssh.ChannelListenError, asyncssh.SFTPError):
                    ok = True
                result.check(ok, attempt)
            # X11 forwarding asked for with a cookie (so that asyncssh sends it): refused.
            xauth = w.work / "Xauthority"
            made = subprocess.run(
                [
                    "xauth",
                    "-f",
                    str(xauth),
                    "add",
                    "127.0.0.1:0",
                    ".",
                    "00112233445566778899aabbccddeeff",
                ],
                capture_output=True,
            )
            if made.returncode == 0:
                try:
                    await run(
                        conn,
                        "whoami",
                        x11_forwarding=True,
                        x11_display="127.0.0.1:0",
                        x11_auth_path=str(xauth),
                    )
                    ok = False
                except asyncssh.ChannelOpenError:
                    ok = True
                result.check(ok, "X11 forwarding request")
            still = await run(conn, "whoami")
            result.check(
                still.stdout == (w.alice.name + "\n").encode(),
                "the connection still works after the refusals",
            )

    asyncio.run(env_and_forwarding())
    result.check(_agent_and_x11_through_ssh(w), "ssh -A -X: no agent or X11 channel opened back")
    for mode in ([], ["-O"]):  # scp over SFTP and the legacy scp protocol
        stolen = w.work / f"stolen{len(mode)}"
        scp = subprocess.run(
            [
                "scp",
                *mode,
                "-P",
                str(g.port),
                "-i",
                str(w.alice.key),
                "-o",
                "BatchMode=yes",
                "-F",
                "/dev/null",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                f"git@127.0.0.1:{g.repo_dir(w.path)}/config",
                str(stolen),
            ],
            capture_output=True,
            timeout=30,
        )
        result.check(scp.returncode != 0 and not stolen.exists(), f"scp {mode}")
    up = subprocess.run(
        [
            "scp",
            "-O",
            "-P",
            str(g.port),
            "-i",
            str(w.alice.key),
            "-o",
            "BatchMode=yes",
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            str(w.alice.pub),
            f"git@127.0.0.1:{w.tmp_canary}",
        ],
        capture_output=True,
        timeout=30,
    )
    result.check(up.returncode != 0 and w.canaries_intact(), "scp upload")
    # More than six authentication attempts: disconnected before the real key is tried.
    strangers = [make_key(w.work, f"stranger{i}") for i in range(7)]
    argv = [*g.ssh_command(strangers[0])]
    for key in strangers[1:] + [w.alice.key]:
        argv += ["-i", str(key)]
    tries = subprocess.run(
        [*argv, "-p", str(g.port), "git@127.0.0.1", "whoami"],
        capture_output=True,
        text=True,
        env=g.env,
        timeout=30,
    )
    result.check(tries.returncode == 255 and w.alice.name not in tries.stdout, "7 wrong keys first")
    # Offer the victim's key, sign with one's own: one's own account, never the victim's.
    result.check(_probe_then_sign(w), "offer victim's key, sign with own (CVE-2023-43809)")
    # Clients that stall are cut at the login timeout (3 s on this server): one silent
    # after its version string, one that trickles its version string a byte at a time.
    for trickle in (False, True):
        took = _slow_client(slow_gateway, trickle)
        result.check(
            took < 10,
            f"slow client ({'trickling' if trickle else 'silent'}) held "
            f"{took:.1f} s with login_timeout 3",
        )
    result.check(slow_gateway.proc.poll() is None, "slow-client server still up")
    result.notes = (
        f"{len(ENV_ATTACKS)} environment variables (LD_PRELOAD of a library "
        f"{'that creates' if preload_works else 'NOT shown to create'} a file when loaded), "
        "port/unix/agent/X11 forwarding, sftp, scp, auth limit, slow clients"
    )
    return result


def _slow_client(g: Gateway, trickle: bool) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", g.port), timeout=30) as s:
        try:
            if trickle:
                for byte in b"SSH-2.0-OpenSSH_9.6 " + b"x" * 200:
                    s.sendall(bytes([byte]))
                    time.sleep(0.5)
                    if time.monotonic() - started > 30:
                        break
            else:
                s.sendall(b"SSH-2.0-OpenSSH_9.6 slow\r\n")
            while s.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return time.monotonic() - started


def _agent_and_x11_through_ssh(w: World) -> bool:
    """The real ssh asks for agent and X11 forwarding; the server never opens an agent or
    X11 channel back to the client (ssh -v names every channel the server opens)."""
    sock = w.work / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(sock.exists, 10, 0.05)
        env = {**w.g.env, "SSH_AUTH_SOCK": str(sock), "DISPLAY": ":0"}
        argv = [
            ("LogLevel=DEBUG" if a == "LogLevel=ERROR" else a)  # ssh takes the first
            for a in w.g.ssh_command(w.alice.key)
        ]
        r = subprocess.run(
            [*argv, "-A", "-X", "-p", str(w.g.port), "git@127.0.0.1", "whoami"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
    finally:
        agent.terminate()
        agent.wait(10)
    return (
        r.stdout == w.alice.name + "\n"
        and "Requesting authentication agent forwarding" in r.stderr
        and "ctype auth-agent" not in r.stderr
        and "ctype x11" not in r.stderr
    )


def _probe_then_sign(w: World) -> bool:
    from testkit.sshclient import probe_then_sign as method_for

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

CAPS = b" side-band-64k thin-pack ofs-delta"


def _deleted_branch(w: World) -> str:
    """A commit pushed to a branch that was then deleted: its objects stay on disk (the
    gateway never collects garbage), and no one may fetch them by id."""
    g = w.g
    local_git("checkout", "-q", "-b", "leaked", cwd=w.clone)
    (w.clone / "leaked.txt").write_text("pushed by mistake\n")
    local_git("add", ".", cwd=w.clone, env=g.env)
    local_git("commit", "-qm", "leaked", cwd=w.clone, env=g.env)
    sha = local_git("rev-parse", "HEAD", cwd=w.clone).strip()
    g.git(w.alice, "push", "-q", "origin", "leaked", cwd=w.clone)
    g.git(w.alice, "push", "-q", "origin", ":leaked", cwd=w.clone)
    local_git("checkout", "-q", "main", cwd=w.clone)
    local_git("branch", "-q", "-D", "leaked", cwd=w.clone)
    return sha


def _rejected_push(w: World) -> str:
    """A commit whose push the pre-receive hook rejected (SPEC 7: none of its objects may
    become reachable or visible); returns its id, which the client knows."""
    g = w.g
    local_git("checkout", "-q", "-b", "reject-me", cwd=w.clone)
    (w.clone / "rejected.txt").write_text(os.urandom(16).hex())
    local_git("add", ".", cwd=w.clone, env=g.env)
    local_git("commit", "-qm", "rejected", cwd=w.clone, env=g.env)
    sha = local_git("rev-parse", "HEAD", cwd=w.clone).strip()
    push = g.git(w.alice, "push", "origin", "reject-me", cwd=w.clone, check=False)
    assert push.returncode != 0 and "refused by the adversarial suite" in push.stderr, push.stderr
    local_git("checkout", "-q", "main", cwd=w.clone)
    local_git("branch", "-q", "-D", "reject-me", cwd=w.clone)
    return sha


def _no_pack(proc) -> bool:
    """A want that must be refused: a clean error (an ERROR line or an ERR packet, a
    non-zero status), and no pack."""
    return (
        b"PACK" not in proc.stdout
        and proc.exit_status != 0
        and (b"ERROR: " in proc.stderr or b"ERR " in proc.stdout)
    )


def protocol(w: World, count: int) -> Result:
    from testkit.receivepack import commands, make_commit, new_history, pack_of, report_of

    result = Result("protocol (pkt-lines, packs, wants)")
    rng = random.Random(5)
    repo_dir = w.g.repo_dir(w.path)
    leaked = _deleted_branch(w)
    rejected = _rejected_push(w)
    blob = local_git("rev-parse", "HEAD:f0.txt", cwd=w.clone).strip()
    parent = local_git("rev-parse", "HEAD~1", cwd=w.clone).strip()
    tip = w.tip.encode()

    def want(*shas: str, extra: bytes = b"") -> bytes:
        lines = [
            pkt(f"want {sha}".encode() + (CAPS if n == 0 else b"") + b"\n")
            for n, sha in enumerate(shas)
        ]
        return b"".join(lines) + extra + b"0000" + pkt(b"done\n")

    # Wants of objects a ref reaches but that are not tips: served, as C git does with
    # allow-reachable-sha1-in-want (a partial clone's lazy fetches need it).
    served_wants = {
        "want of an unadvertised reachable commit": want(parent),
        "want of an unadvertised blob": want(blob),
    }
    # Wants that must be refused, each with a clean error and no pack.
    refused_wants = {
        "want of a missing object": want("1" * 40),
        "want of a deleted branch's commit (unreachable)": want(leaked),
        "want of the tip and a missing object": want(w.tip, "2" * 40),
        "want of a short id": want(w.tip[:20]),
        "want of a non-hex id": want("g" * 40),
    }
    # receive-pack: packs and commands that must change nothing.
    orphan, orphan_objects = new_history("3" * 40)  # parent that does not exist
    dangling = make_commit(b"4" * 40, [tip])  # tree that does not exist
    bad_pushes = {
        "commit whose parent is missing": commands((tip, orphan.id, b"refs/heads/main"))
        + pack_of(*orphan_objects),
        "commit whose tree is missing": commands((tip, dangling.id, b"refs/heads/main"))
        + pack_of(dangling),
        "new branch pointing at a missing object": commands(
            (ZERO.encode(), b"5" * 40, b"refs/heads/ghost")
        )
        + pack_of(),
        "new branch at a commit of a push the pre-receive hook rejected, no pack": commands(
            (ZERO.encode(), rejected.encode(), b"refs/heads/revived")
        )
        + pack_of(),
        "old id that does not match": commands((b"6" * 40, ZERO.encode(), b"refs/heads/main")),
    }
    fixed = {
        "upload-pack": [
            pkt(f"want {'1' * 40} side-band-64k\n".encode()) + b"0000" + pkt(b"done\n"),
            pkt(f"want {w.tip}\n".encode()) + b"0000" + pkt(b"have zzzz\n") + pkt(b"done\n"),
            b"ffff" + b"x" * 10,
            b"0004",
            b"000",
            pkt(b"want") + b"0000",
            b"\x00" * 100,
            pkt(f"want {w.tip} multi_ack\n".encode()) + pkt(b"deepen -1\n") + b"0000",
            want(w.tip, extra=pkt(b"deepen 0\n")),
            want(w.tip, extra=pkt(b"deepen 99999999999999999999\n")),
            want(w.tip, extra=pkt(b"shallow " + b"7" * 40 + b"\n")),
            want(w.tip) * 50,
            pkt(b"want " + tip + CAPS + b" " + b"x" * 60000 + b"\n"),
        ]
        + list(refused_wants.values()),
        "receive-pack": [
            pkt(f"{w.tip} {'2' * 40} refs/heads/main\x00report-status\n".encode())
            + b"0000"
            + b"PACK\x00\x00\x00\x02\x00\x00\x00\x01garbage",
            pkt(f"{ZERO} {w.tip} refs/heads/../x\x00report-status\n".encode()) + b"0000",
            pkt(f"{w.tip} {ZERO} refs/heads/nope\x00report-status\n".encode()) + b"0000",
            pkt(b"not a command\n") + b"0000",
            b"PACK" + os.urandom(64),
            b"0010short",
            commands((tip, b"8" * 40, b"refs/heads/main"))
            + b"PACK\x00\x00\x00\x02\xff\xff\xff\xff",
        ]
        + list(bad_pushes.values()),
    }
    n_fixed = sum(len(v) for v in fixed.values())
    inputs = [(service, data) for service, items in fixed.items() for data in items]
    while len(inputs) < count:  # random bytes and truncations of the fixed ones
        service, data = rng.choice(inputs[:n_fixed])
        mutated = bytearray(data[: rng.randint(0, len(data))])
        for _ in range(rng.randint(0, 4)):
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs.append((service, bytes(mutated) + (os.urandom(rng.randint(0, 40)))))
    before = w.refs()

    async def send(conn, service: str, data: bytes):
        return await asyncio.wait_for(run(conn, f"git-{service} '{w.path}'", data), 30)

    async def run_all() -> None:
        for first in range(0, len(inputs), PER_CONNECTION):
            async with connect(w.g, w.alice.key) as conn:
                for service, data in inputs[first : first + PER_CONNECTION]:
                    try:
                        proc = await send(conn, service, data)
                        ok = (
                            b"Traceback" not in proc.stderr
                            and w.secret_tip.encode() not in proc.stdout
                        )
                    except (TimeoutError, asyncssh.Error):
                        ok = False
                    result.check(ok, f"{service} {data[:60]!r}")
        async with connect(w.g, w.alice.key) as conn:
            # The control: a proper want of the tip is served.
            proc = await send(conn, "upload-pack", want(w.tip))
            result.check(proc.exit_status == 0 and b"PACK" in proc.stdout, "want of the tip served")
            for what, data in served_wants.items():
                proc = await send(conn, "upload-pack", data)
                result.check(
                    proc.exit_status == 0 and b"PACK" in proc.stdout,
                    f"{what}: status {proc.exit_status}, {proc.stderr[-200:]!r}",
                )
            for what, data in refused_wants.items():
                proc = await send(conn, "upload-pack", data)
                result.check(
                    _no_pack(proc), f"{what}: status {proc.exit_status}, {proc.stderr[-200:]!r}"
                )
            for what, data in bad_pushes.items():
                proc = await send(conn, "receive-pack", data)
                try:
                    report = report_of(proc.stdout)
                except AssertionError:
                    report = {}
                accepted = [
                    ref for ref, status in report.items() if ref != "unpack" and status == "ok"
                ]
                result.check(
                    not accepted and b"Traceback" not in proc.stderr, f"{what}: report {report}"
                )

    asyncio.run(run_all())
    clean = wait_for(
        lambda: (
            not list((repo_dir / "objects").glob("incoming-*"))
            and not list((repo_dir / "objects").glob("tmp_pack_*"))
            and not list((repo_dir / "objects" / "pack").glob("tmp_*"))
        ),
        15,
    )
    result.check(clean, "no quarantine or temporary pack left")
    result.check(w.refs() == before, "no ref changed")
    fsck = subprocess.run(["git", "fsck", "--full"], cwd=repo_dir, capture_output=True)
    result.check(fsck.returncode == 0, "git fsck --full")
    for sha in (orphan.id.decode(), dangling.id.decode(), rejected):
        present = subprocess.run(["git", "cat-file", "-e", sha], cwd=repo_dir).returncode == 0
        result.check(not present, f"refused push's object {sha} not in the repository")
    result.notes = (
        f"{len(refused_wants)} wants of missing/unreachable objects refused, "
        f"{len(served_wants)} of reachable non-tips served, "
        f"{len(bad_pushes)} bad pushes, then: no temporary files, refs unchanged, "
        f"fsck clean"
    )
    return result


# --- 6. 2SV --------------------------------------------------------------------------------


def twosv(g: Gateway, parallel: int) -> Result:
    from testkit.twosv import enable, fresh_code

    result = Result("2SV (brute force, replay, recovery race)")
    brute = g.user()
    secret, codes, _ = enable(g, brute)
    rng = random.Random(1)
    real = {pyotp.TOTP(secret).at(time.time() + 30 * k) for k in (-1, 0, 1)}
    totp_guesses = [f"{n:06d}" for n in rng.sample(range(10**6), parallel // 2)]
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"  # that of the codes it issues (no i, l, o, u)
    recovery_guesses = [
        "".join(rng.choice(alphabet) for _ in range(5))
        + "-"
        + "".join(rng.choice(alphabet) for _ in range(5))
        for _ in range(parallel - len(totp_guesses))
    ]
    guesses = [x for x in totp_guesses if x not in real] + recovery_guesses
    rng.shuffle(guesses)

    def guess(code: str) -> str:
        return g.ssh(brute, "2sv", "verify", input=code + "\n").stderr

    with ThreadPoolExecutor(max_workers=min(parallel, 20)) as pool:
        answers = list(pool.map(guess, guesses))
    judged = throttled = 0
    for code, answer in zip(guesses, answers, strict=True):
        wrong = (
            "Wrong verification code." in answer or "Wrong or already used recovery code." in answer
        )
        judged += wrong
        throttled += "Too many failed codes" in answer
        # Each guess is refused: judged wrong while fewer than 5 have failed, else throttled.
        result.check(
            (wrong and judged <= 5) or "Too many failed codes" in answer,
            f"guess {code!r} (guess {judged + throttled}): {answer.strip()!r}",
        )
    correct = g.ssh(brute, "2sv", "verify", input=fresh_code(secret) + "\n")
    result.check(
        correct.returncode != 0 and "Too many failed codes" in correct.stderr,
        "a correct TOTP code waits out the back-off",
    )
    correct = g.ssh(brute, "2sv", "verify", input=codes[0] + "\n")
    result.check(
        correct.returncode != 0 and "Too many failed codes" in correct.stderr,
        "a correct recovery code waits out the back-off",
    )
    audit = g.cli("audit", "--account", brute.name, "--limit", "1000").stdout
    result.check(
        audit.count("2sv.code_refused") >= len(guesses) + 2,
        f"every refused code audited ({audit.count('2sv.code_refused')} of {len(guesses) + 2})",
    )
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
            runs = list(
                pool.map(
                    lambda _, attempt=attempt: g.ssh(
                        other, "2sv", "verify", input=codes2[attempt] + "\n"
                    ),
                    range(2),
                )
            )
        result.check(
            sum(r.returncode == 0 for r in runs) == 1, f"recovery code {attempt} raced twice"
        )
    result.notes = (
        f"{len(guesses)} wrong TOTP and recovery codes in parallel across "
        f"connections: {judged} judged, {throttled} throttled, all audited"
    )
    return result


# --- 7. faults -----------------------------------------------------------------------------


def _fsck_all(g: Gateway) -> list[str]:
    """`git fsck --full` in every repository under the data directory (not through the
    planted symlinks, which lead outside it); the ones that fail."""
    broken = []
    for repo in sorted((g.data / "repos").glob("*/*.git")):
        if repo.is_symlink() or repo.parent.is_symlink():
            continue
        if subprocess.run(["git", "fsck", "--full"], cwd=repo, capture_output=True).returncode:
            broken.append(str(repo.relative_to(g.data)))
    return broken


def faults(g: Gateway, w: World, rounds: int, cuts: int) -> Result:
    result = Result("faults (SIGKILL mid-push, cut clients)")
    repo_dir = g.repo_dir(w.path)
    for n in range(rounds):
        before = local_git("rev-parse", "main", cwd=repo_dir).strip()
        (w.clone / f"big{n}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        local_git("add", ".", cwd=w.clone, env=g.env)
        local_git("commit", "-qm", f"big {n}", cwd=w.clone, env=g.env)
        new = local_git("rev-parse", "HEAD", cwd=w.clone).strip()
        env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(w.alice.key))}
        push = subprocess.Popen(
            ["git", "push", "-q", "origin", "HEAD:main"],
            cwd=w.clone,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.2 + 0.15 * (n % 5))
        g.proc.send_signal(signal.SIGKILL)
        g.proc.wait()
        push.wait(60)
        g.start()
        after = local_git("rev-parse", "main", cwd=repo_dir).strip()
        broken = _fsck_all(g)
        with sqlite3.connect(g.data / "gateway.db") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
        leftovers = list((repo_dir / "objects").glob("incoming-*"))
        result.check(
            after in (before, new) and not broken and integrity == "ok" and not leftovers,
            f"round {n}: ref {after[:8]} (old {before[:8]}, new "
            f"{new[:8]}) fsck failed in {broken} db {integrity} leftovers {leftovers}",
        )
        if after != new:  # bring the clone back in line with the server
            local_git("reset", "-q", "--hard", after, cwd=w.clone)

    # Clients cut mid-clone and mid-push leave no process or descriptor behind. Counted
    # in the same state both times: just after a normal request, spare workers refilled.
    def steady() -> tuple[int, int, int]:
        g.git(w.alice, "ls-remote", g.url(w.path))
        time.sleep(2)
        return open_fds(g), len(server_children(g)), threads(g)

    fds, children, tasks = steady()
    for n in range(cuts):
        target = w.work / f"cut{n}"
        env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(w.alice.key))}
        argv = (
            ["git", "clone", "-q", g.url(w.path), str(target)]
            if n % 2 == 0
            else ["git", "push", "-q", "-f", "origin", "HEAD:refs/heads/cut"]
        )
        proc = subprocess.Popen(
            argv,
            cwd=w.clone,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda proc=proc: git_workers(repo_dir) or proc.poll() is not None, 10, 0.01)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the client finished before it could be cut
        proc.wait()
    wait_for(lambda: not git_workers(repo_dir), 15)
    steady()
    settled = wait_for(
        lambda: (
            not git_workers(repo_dir)
            and open_fds(g) <= fds
            and len(server_children(g)) <= children
            and threads(g) <= tasks
        ),
        30,  # under a loaded parallel test run, 15 s was once not enough (fds 17 vs 16)
    )
    result.check(
        settled,
        f"after cut clients: fds {open_fds(g)} (was {fds}), children "
        f"{len(server_children(g))} (was {children}), threads {threads(g)} "
        f"(was {tasks}), workers {git_workers(repo_dir)}",
    )
    result.notes = f"{rounds} SIGKILL rounds; {cuts} clients cut; fds, processes, threads counted"
    return result


# --- 8. load -------------------------------------------------------------------------------


def load(g: Gateway, w: World, clones: int, sockets: int) -> Result:
    result = Result("load (concurrent clones, socket flood)")

    def clone(n: int) -> tuple[bool, str]:
        target = w.work / f"load{n}"
        r = g.git(w.alice, "clone", "-q", g.url(w.path), str(target), check=False)
        ok = r.returncode == 0 and local_git("rev-parse", "HEAD", cwd=target).strip() == w.tip
        subprocess.run(["rm", "-rf", str(target)])
        return ok, " / ".join(r.stderr.strip().splitlines()[:2])[:200]

    failed: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=clones) as pool:
        for n, (ok, why) in enumerate(pool.map(clone, range(clones))):
            result.check(ok, f"concurrent clone {n}: {why}")
            if not ok:
                failed[why] = failed.get(why, 0) + 1
    flood = []
    try:
        for _ in range(sockets):
            flood.append(socket.create_connection(("127.0.0.1", g.port), timeout=10))
        started = time.monotonic()
        r = g.git(w.alice, "ls-remote", g.url(w.path), check=False)
        took = time.monotonic() - started
        result.check(
            r.returncode == 0 and w.tip in r.stdout and took < 2,
            f"ls-remote during {sockets} open sockets took {took:.2f} s",
        )
    finally:
        for s in flood:
            s.close()
    result.notes = (
        f"{clones} clones at once, each checked out and compared; ls-remote with "
        f"{sockets} silent sockets open took {took:.2f} s"
        + (f"; failed clones said: {failed}" if failed else "")
    )
    return result
