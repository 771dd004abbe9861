"""Behind OpenSSH (issue #7 item 7): a real sshd on loopback with `gateway authorized-keys`
as its AuthorizedKeysCommand and `gateway shell` as the forced command; the real ssh and
git clients get the gateway's commands, policy and 2SV. A `gateway serve` runs on the
same data directory, so that the answers of the two paths can be compared."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyotp
import pytest

from testkit import GATEWAY, Gateway, User, fingerprint, free_port, local_git, make_key, unique
from testkit.twosv import CODE_RE, URI_RE, code_at, fresh_code

SSHD = "/usr/sbin/sshd"


class Sshd:
    """An sshd of its own in front of a gateway data dir (gateway serve is not needed)."""

    def __init__(
        self, g: Gateway, root: Path, port: int, trusted_user_ca_keys: Path | None = None
    ) -> None:
        self.g = g
        self.port = port
        # sshd runs the keys command only from a root-owned path nobody else can write to,
        # all the way up: /tmp (mode 1777) will not do.
        self.bin_dir = Path("/usr/local/libexec") / f"gateway-test-{uuid.uuid4().hex[:8]}"
        self.bin_dir.mkdir(mode=0o755, parents=True)
        keys_command = self.bin_dir / "gateway-keys"
        keys_command.write_text(
            f"#!/bin/sh\nexec {sys.executable} -m gateway --data-dir "
            f'{g.data} authorized-keys "$@"\n'
        )
        keys_command.chmod(0o755)
        certificates = ""
        # User certificates, as the README sets them up; before AuthorizedKeysCommand, since
        # sshd 9.2 ignores an AuthorizedPrincipalsCommand that comes after it.
        if trusted_user_ca_keys is not None:
            principals_command = self.bin_dir / "gateway-principals"
            principals_command.write_text(
                f"#!/bin/sh\nexec {sys.executable} -m gateway --data-dir "
                f'{g.data} authorized-principals "$@"\n'
            )
            principals_command.chmod(0o755)
            certificates = (
                f"TrustedUserCAKeys {trusted_user_ca_keys}\n"
                f"AuthorizedPrincipalsCommand {principals_command} %u %k\n"
                "AuthorizedPrincipalsCommandUser root\n"
            )
        host_key = root / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
        config = root / "sshd_config"
        config.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
{certificates}AuthorizedKeysCommand {keys_command} %u %t %k
AuthorizedKeysCommandUser root
LogLevel VERBOSE
# The gateway must not let a client steer it with variables: let sshd pass them on.
# GIT_PROTOCOL is the one it reads (protocol v2), as the README's OpenSSH section says.
AcceptEnv GATEWAY_* PYTHON* GIT_PROTOCOL
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        # sshd keeps its own copy of the log's descriptor; ours closes once it has started.
        with open(root / "sshd.log", "ab") as sshd_log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=sshd_log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start: " + (root / "sshd.log").read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.bin_dir, ignore_errors=True)

    def ssh(
        self, key: Path, *command: str, input: str = "", extra: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.g.ssh_command(key), *extra, "-p", str(self.port), "root@127.0.0.1", *command],
            input=input,
            capture_output=True,
            text=True,
            env=self.g.env,
            timeout=60,
        )

    def serve_ssh(self, key: Path, *command: str, input: str = "") -> subprocess.CompletedProcess:
        """The same, through `gateway serve` (login name root there too: one ssh_user)."""
        return self.g.ssh(key, *command, input=input, login="root")

    def git(self, key: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**self.g.env, "GIT_SSH_COMMAND": " ".join(self.g.ssh_command(key))}
        return subprocess.run(
            ["git", *args],
            cwd=cwd or self.g.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def url(self, path: str) -> str:
        return f"ssh://root@127.0.0.1:{self.port}/{path}.git"

    def serve_url(self, path: str) -> str:
        return f"ssh://root@127.0.0.1:{self.g.port}/{path}.git"


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        pytest.fail("these tests run OpenSSH's sshd as root (.ci/run installs openssh-server)")
    root = tmp_path_factory.mktemp("openssh")
    g = Gateway(root / "gw")
    g.cli("init")
    # sshd logs users in as a unix user: root here, so the gateway's login name is root;
    # messages show sshd's port (on both paths, so that their answers can be compared).
    port = free_port()
    # sshd's commands see no GATEWAY_* variable: the database is named in the file too.
    (g.data / "gateway.toml").write_text(
        g.database_toml + f'ssh_user = "root"\nssh_port = {port}\ntwosv_backoff_seconds = 2\n'
    )
    g.start()
    sshd = Sshd(g, root, port)
    yield sshd
    sshd.stop()
    g.stop()


def enrol(front: Sshd, user: User) -> str:
    """`2sv enable` through sshd: the QR page, then a code from the secret it shows."""
    proc = subprocess.Popen(
        [*front.g.ssh_command(user.key), "-p", str(front.port), "root@127.0.0.1", "2sv", "enable"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=front.g.env,
    )
    out = b""
    deadline = time.monotonic() + 30
    # The URI comes first and the Key line last: read the whole page before the code.
    key_line = re.compile(r"Key: +[A-Z2-7 ]+\n")
    while not key_line.search(out.decode(errors="replace")) and time.monotonic() < deadline:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        out += chunk
    assert "█" in out.decode(errors="replace") or "▀" in out.decode(errors="replace")  # QR
    secret = pyotp.parse_uri(URI_RE.search(out.decode()).group(1)).secret
    rest, err = proc.communicate(code_at(secret).encode() + b"\n", timeout=30)
    assert proc.returncode == 0, err
    assert len(CODE_RE.findall((out + rest).decode())) == 6  # the recovery codes, once
    return secret


def same(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> None:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), (a, b)


def keys_line(g: Gateway, user: str, pub: Path) -> subprocess.CompletedProcess:
    key_type, blob = pub.read_text().split()[:2]
    return g.cli("authorized-keys", user, key_type, blob, check=False)


def test_authorized_keys_prints_a_forced_command_only_for_known_enabled_keys(front, tmp_path):
    g = front.g
    alice = g.user()
    line = keys_line(g, "root", alice.pub)
    assert line.returncode == 0 and line.stderr == ""
    out = line.stdout.strip()
    assert out.startswith('restrict,pty,command="') and out.endswith(
        " ".join(alice.pub.read_text().split()[:2])
    )
    assert (
        f' -I -m gateway --data-dir {g.data.resolve()} shell --key {fingerprint(alice.pub)}"' in out
    )
    assert "\n" not in out
    # The config file the lookup read is the one the shell is told to read.
    config = g.data / "gateway.toml"
    g.env["GATEWAY_CONFIG"] = str(config)
    try:
        assert f"--config {config.resolve()} shell" in keys_line(g, "root", alice.pub).stdout
    finally:
        del g.env["GATEWAY_CONFIG"]
    # An access key gets a line too; a path the login shell would split or expand, none.
    deploy = make_key(tmp_path, "deploy")
    g.cli("access-key", "add", g.repo(g.workspace((alice, "admin"))), f"{deploy}.pub")
    assert "shell --key" in keys_line(g, "root", Path(f"{deploy}.pub")).stdout
    odd = tmp_path / "odd $(touch x).toml"
    shutil.copy(config, odd)
    key_type, blob = alice.pub.read_text().split()[:2]
    refused = subprocess.run(
        [
            *GATEWAY,
            "--data-dir",
            str(g.data),
            "--config",
            str(odd),
            "authorized-keys",
            "root",
            key_type,
            blob,
        ],
        capture_output=True,
        text=True,
        env=g.env,
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("ERROR: Cannot put") and refused.stderr.count("\n") == 1
    stranger = make_key(tmp_path, "stranger")
    assert keys_line(g, "root", Path(str(stranger) + ".pub")).stdout == ""
    assert keys_line(g, "git", alice.pub).stdout == ""  # not the login name sshd serves
    bad = g.cli("authorized-keys", "root", "ssh-ed25519", "not-base64!", check=False)
    assert bad.returncode == 0 and bad.stdout == ""
    g.cli("account", "disable", alice.name)
    assert keys_line(g, "root", alice.pub).stdout == ""


def test_commands_clone_and_push_through_sshd(front, tmp_path):
    g = front.g
    alice, outsider = g.user(), g.user()
    ws = g.workspace((alice, "admin"))
    path = g.repo(ws)
    who = front.ssh(alice.key, "whoami")
    assert who.returncode == 0 and alice.name in who.stdout, who.stderr
    greeting = front.ssh(alice.key)
    assert f"Hi {alice.name}!" in greeting.stdout + greeting.stderr
    clone = tmp_path / "c"
    result = front.git(alice.key, "clone", "-q", front.url(path), str(clone))
    assert result.returncode == 0, result.stderr
    (clone / "a.txt").write_text("through sshd\n")
    local_git("add", "a.txt", cwd=clone, env=g.env)
    local_git("commit", "-qm", "a", cwd=clone, env=g.env)
    result = front.git(alice.key, "push", "-q", "origin", "HEAD:main", cwd=clone)
    assert result.returncode == 0, result.stderr
    tip = local_git("rev-parse", "HEAD", cwd=clone).strip()
    assert local_git("rev-parse", "main", cwd=g.repo_dir(path)).strip() == tip
    refused = front.git(outsider.key, "ls-remote", front.url(path))
    assert refused.returncode != 0 and f"ERROR: Repository not found: {path}" in refused.stderr
    unknown = front.ssh(make_key(tmp_path, "nobody"), "whoami")
    assert unknown.returncode == 255 and "Permission denied" in unknown.stderr
    log = (g.data / "shell.log").read_text()
    assert "event=command" in log and "Traceback" not in log


def test_same_answers_as_gateway_serve(front, tmp_path):
    g = front.g
    alice, reader, outsider = g.user(), g.user(), g.user()
    ws = g.workspace((alice, "admin"), (reader, "read"))
    path = g.repo(ws)
    for command in (
        (),
        ("whoami",),
        ("help",),
        ("2sv", "status"),
        ("recovery-codes",),
        ("workspace", "show", ws),
        ("no-such-command", "x"),
        ("2sv", "verify"),
        ("git-upload-pack", "'nobody/none.git'"),
        ("git-receive-pack", f"'{path}'"),
    ):
        for user in (alice, outsider):
            same(front.ssh(user.key, *command), front.serve_ssh(user.key, *command))
    for user, args in ((outsider, ("ls-remote",)), (reader, ("push", "--all"))):
        clone = tmp_path / unique("c")
        local_git("init", "-q", str(clone), cwd=tmp_path, env=g.env)
        local_git("commit", "-q", "--allow-empty", "-m", "x", cwd=clone, env=g.env)
        via_sshd = front.git(user.key, *args, front.url(path), cwd=clone)
        via_serve = front.git(user.key, *args, front.serve_url(path), cwd=clone)
        assert via_sshd.returncode != 0 and "ERROR: " in via_sshd.stderr
        assert via_sshd.stderr.replace(str(front.port), "P") == via_serve.stderr.replace(
            str(g.port), "P"
        )


def test_workspace_2sv_policy_and_session_through_sshd(front, tmp_path):
    g = front.g
    admin, member = g.user(), g.user()
    ws = g.workspace((admin, "admin"), (member, "write"))
    path = g.repo(ws)
    g.cli("workspace", "require-2sv", ws, "on")
    refused = front.git(member.key, "ls-remote", front.url(path))
    assert refused.returncode != 0
    assert f'ERROR: Workspace "{ws}" requires two-step verification.' in refused.stderr
    assert f"ssh -p {front.port} root@127.0.0.1 2sv enable" in refused.stderr
    secret = enrol(front, member)
    allowed = front.git(member.key, "ls-remote", front.url(path))
    assert allowed.returncode == 0, allowed.stderr
    assert "on" in front.ssh(member.key, "2sv", "status").stdout.lower()
    # `session`: each key needs a `2sv verify`; sessions opened through sshd count for
    # gateway serve too, one database behind both.
    g.cli("workspace", "require-2sv", ws, "session", "--window", "5")
    expected = (
        f'ERROR: Workspace "{ws}" requires a verified two-step session.\n'
        f"Open one with: ssh -p {front.port} root@127.0.0.1 2sv verify"
    )
    for url in (front.url(path), front.serve_url(path)):
        refused = front.git(member.key, "ls-remote", url)
        assert refused.returncode != 0 and expected in refused.stderr
    assert "requires a verified two-step session" in front.ssh(member.key).stdout
    wrong = front.ssh(
        member.key, "2sv", "verify", input="000000\n" if code_at(secret) != "000000" else "111111\n"
    )
    assert wrong.returncode != 0 and "ERROR: " in wrong.stderr
    # Typed at a terminal (`ssh -tt`): sshd's pty echoes, erases and ends the line.
    code = fresh_code(secret)
    typed = code[:3] + "9\x7f" + code[3:] + "\r"
    verified = subprocess.run(
        [
            *g.ssh_command(member.key),
            "-tt",
            "-p",
            str(front.port),
            "root@127.0.0.1",
            "2sv",
            "verify",
        ],
        input=typed.encode(),
        capture_output=True,
        env=g.env,
        timeout=60,
    )  # bytes: \r kept
    assert verified.returncode == 0, verified
    assert b"Two-step session open" in verified.stdout and b"\r\n" in verified.stdout
    for url in (front.url(path), front.serve_url(path)):
        allowed = front.git(member.key, "ls-remote", url)
        assert allowed.returncode == 0, allowed.stderr
    # Another key of the same account has no session of its own.
    second = make_key(g.keys_dir, unique("second"))
    g.cli("key", "add", member.name, f"{second}.pub", "--title", "second")
    refused = front.git(second, "ls-remote", front.url(path))
    assert refused.returncode != 0 and expected in refused.stderr


def test_access_keys_and_refused_keys_through_sshd(front, tmp_path):
    g = front.g
    owner = g.user()
    ws = g.workspace((owner, "admin"))
    path = g.repo(ws)
    seed = tmp_path / "seed"
    assert front.git(owner.key, "clone", "-q", front.url(path), str(seed)).returncode == 0
    local_git("commit", "-q", "--allow-empty", "-m", "first", cwd=seed, env=g.env)
    assert front.git(owner.key, "push", "-q", "origin", "HEAD:main", cwd=seed).returncode == 0
    deploy = make_key(tmp_path, "deploy")
    g.cli("access-key", "add", path, f"{deploy}.pub", "--title", "ci")
    clone = tmp_path / "deploy-clone"
    result = front.git(deploy, "clone", "-q", front.url(path), str(clone))
    assert result.returncode == 0, result.stderr
    local_git("commit", "-q", "--allow-empty", "-m", "from ci", cwd=clone, env=g.env)
    push = front.git(deploy, "push", "origin", "HEAD:main", cwd=clone)
    assert push.returncode != 0
    assert f'ERROR: Permission to {path} denied to access key "ci" (read-only).' in push.stderr
    # Disabled: sshd gets no line and refuses; enabled again, back in.
    g.cli("account", "disable", owner.name)
    refused = front.ssh(owner.key, "whoami")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    g.cli("account", "enable", owner.name)
    assert front.ssh(owner.key, "whoami").stdout.strip() != ""
    # A key removed after sshd looked it up: the forced command itself refuses it.
    g.cli("key", "remove", fingerprint(owner.pub))
    assert front.ssh(owner.key, "whoami").returncode == 255
    late = g.cli("shell", "--key", fingerprint(owner.pub), check=False)
    assert late.returncode == 1 and late.stdout == ""
    assert late.stderr == "ERROR: This key is no longer accepted\n"


def test_protocol_v2_through_sshd(front, tmp_path):
    """With `AcceptEnv GIT_PROTOCOL`, git's `version=2` reaches `gateway shell`: clone
    and fetch in v2; a GIT_PROTOCOL that is not `version=N` items is served in v0."""
    g = front.g
    alice = g.user()
    path = g.repo(g.workspace((alice, "admin")))
    seed = tmp_path / "seed"
    local_git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    (seed / "a.txt").write_text("a\n")
    local_git("add", "a.txt", cwd=seed, env=g.env)
    local_git("commit", "-qm", "a", cwd=seed, env=g.env)
    assert front.git(alice.key, "push", "-q", front.url(path), "main", cwd=seed).returncode == 0
    clone = tmp_path / "clone"
    env = {**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(alice.key))}
    traced = subprocess.run(
        ["git", "-c", "protocol.version=2", "clone", front.url(path), str(clone)],
        env={**env, "GIT_TRACE_PACKET": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert traced.returncode == 0, traced.stderr
    assert "clone< version 2" in traced.stderr and "clone> command=fetch" in traced.stderr
    assert local_git("fsck", "--full", cwd=clone) == ""
    bogus = front.ssh(
        alice.key,
        f"git-upload-pack '{path}.git'",
        extra=("-o", "SetEnv=GIT_PROTOCOL=version=2;x"),
    )
    assert "refs/heads/main" in bogus.stdout and "version 2" not in bogus.stdout


def test_variables_a_client_sends_change_nothing(front, tmp_path):
    """sshd passes on what AcceptEnv allows: no GATEWAY_* setting, master key or Python
    variable of the client's may reach the gateway (Gogs' CVE-2024-39930 was of this kind)."""
    g = front.g
    user = g.user()
    evil = tmp_path / "evil"
    evil.mkdir()
    canary = tmp_path / "canary"
    (evil / "sitecustomize.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    sent = (
        "-o",
        f"SetEnv=GATEWAY_SSH_PORT=1 GATEWAY_MASTER_KEY=zz PYTHONPATH={evil} "
        f"GATEWAY_DATA_DIR={tmp_path}",
    )
    result = front.ssh(user.key, "no-such-command", extra=sent)
    assert result.returncode == 1
    assert result.stderr == (
        "ERROR: Unknown command: no-such-command\n"
        f"Run 'ssh -p {front.port} root@127.0.0.1 help' to see the commands.\n"
    )
    assert front.ssh(user.key, "whoami", extra=sent).stdout.strip() == user.name
    assert not canary.exists()


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """sshd in front of a data dir whose settings cap Git workers at 1 per account."""
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        pytest.fail("these tests run OpenSSH's sshd as root (.ci/run installs openssh-server)")
    root = tmp_path_factory.mktemp("openssh-caps")
    g = Gateway(root / "gw")
    g.cli("init")
    port = free_port()
    (g.data / "gateway.toml").write_text(
        g.database_toml + f'ssh_user = "root"\nssh_port = {port}\nmax_git_workers_per_account = 1\n'
        # request_timeout leaves room for a second `ssh` + `gateway shell` start (and a
        # `gateway member remove`) on a loaded 2-core machine while a request is held.
        "git_queue_timeout = 1\nrequest_timeout = 10\n"
    )
    g.start()
    sshd = Sshd(g, root, port)
    yield sshd
    sshd.stop()
    g.stop()


def test_worker_caps_request_timeout_and_the_recheck_through_sshd(capped, tmp_path):
    """One cap for both transports (lock files in the data dir): a session held through
    sshd counts against the same account through gateway serve, and the other way round;
    request_timeout and the first-command re-check apply under `gateway shell` too."""
    import asyncio

    import asyncssh

    g = capped.g
    owner, member = g.user(), g.user()
    ws = g.workspace((owner, "admin"), (member, "read"))
    path = g.repo(ws)
    seed = tmp_path / "seed"
    assert capped.git(owner.key, "clone", "-q", capped.url(path), str(seed)).returncode == 0
    local_git("commit", "-q", "--allow-empty", "-m", "first", cwd=seed, env=g.env)
    assert capped.git(owner.key, "push", "-q", "origin", "HEAD:main", cwd=seed).returncode == 0
    tip = local_git("rev-parse", "HEAD", cwd=seed).strip()
    line = (
        "ERROR: Too many Git requests at once from this account (1 running); try again in a minute"
    )

    async def hold(port: int, key: Path):
        conn = await asyncssh.connect(
            "127.0.0.1",
            port,
            username="root",
            client_keys=[str(key)],
            known_hosts=None,
            agent_path=None,
            config=None,
        )
        proc = await conn.create_process(f"git-upload-pack '{path}.git'", encoding=None)
        while (head := await asyncio.wait_for(proc.stdout.readexactly(4), 20)) != b"0000":
            await proc.stdout.readexactly(int(head, 16) - 4)
        return conn, proc

    async def go():
        answers = {}
        for name, port, other in (
            ("sshd", capped.port, capped.serve_url),
            ("serve", g.port, capped.url),
        ):
            conn, proc = await hold(port, owner.key)
            answers[name] = await asyncio.to_thread(capped.git, owner.key, "ls-remote", other(path))
            # Held past request_timeout with nothing sent: cut, with the line.
            err = await asyncio.wait_for(proc.stderr.read(), 30)
            await proc.wait_closed()
            answers[name + " cut"] = err.decode()
            conn.close()
        conn, proc = await hold(capped.port, member.key)
        await asyncio.to_thread(g.cli, "member", "remove", ws, member.name)
        proc.stdin.write(
            b"%04x" % (len(f"want {tip}\n") + 4) + f"want {tip}\n".encode() + b"00000009done\n"
        )
        proc.stdin.write_eof()
        out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
        conn.close()
        answers["recheck"] = (out, err.decode())
        return answers

    answers = asyncio.run(go())
    for name in ("sshd", "serve"):
        assert answers[name].returncode != 0 and line in answers[name].stderr, answers[name]
        assert answers[name + " cut"] == (
            "ERROR: The Git request did not arrive in full within 10 seconds; closing\n"
        ), answers
    out, err = answers["recheck"]
    assert b"PACK" not in out and err.startswith(f"ERROR: Repository not found: {path}"), err
    # Nothing held any more: both transports serve the account again.
    assert capped.git(owner.key, "ls-remote", capped.url(path)).returncode == 0
    assert capped.git(owner.key, "ls-remote", capped.serve_url(path)).returncode == 0
