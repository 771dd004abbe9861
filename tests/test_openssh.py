"""Behind OpenSSH (issue #7 item 7): a real sshd on loopback with `gateway authorized-keys`
as its AuthorizedKeysCommand and `gateway shell` as the forced command; the real ssh and
git clients get the gateway's commands, policy and 2SV."""

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

from conftest import Gateway, local_git, make_key, unique

SSHD = "/usr/sbin/sshd"
URI_RE = re.compile(r"URI:\s+(otpauth://\S+)")


class Sshd:
    """An sshd of its own in front of a gateway data dir (gateway serve is not needed)."""

    def __init__(self, g: Gateway, root: Path) -> None:
        self.g = g
        self.port = g.port  # the gateway does not listen; sshd takes its port
        # sshd runs the keys command only from a root-owned path nobody else can write to,
        # all the way up: /tmp (mode 1777) will not do.
        self.bin_dir = Path("/usr/local/libexec") / f"gateway-test-{uuid.uuid4().hex[:8]}"
        self.bin_dir.mkdir(mode=0o755, parents=True)
        keys_command = self.bin_dir / "gateway-keys"
        keys_command.write_text(f"#!/bin/sh\nexec {sys.executable} -m gateway --data-dir "
                                f"{g.data} authorized-keys \"$@\"\n")
        keys_command.chmod(0o755)
        host_key = root / "ssh_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                       check=True)
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
AuthorizedKeysCommand {keys_command} %u %t %k
AuthorizedKeysCommandUser root
LogLevel VERBOSE
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = open(root / "sshd.log", "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
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

    def ssh(self, key: Path, *command: str, input: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([*self.g.ssh_command(key), "-p", str(self.port), "root@127.0.0.1",
                               *command], input=input, capture_output=True, text=True,
                              env=self.g.env, timeout=60)

    def git(self, key: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**self.g.env, "GIT_SSH_COMMAND": " ".join(self.g.ssh_command(key))}
        return subprocess.run(["git", *args], cwd=cwd or self.g.root, env=env,
                              capture_output=True, text=True, timeout=120)

    def url(self, path: str) -> str:
        return f"ssh://root@127.0.0.1:{self.port}/{path}.git"


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        pytest.fail("these tests run OpenSSH's sshd as root (.ci/run installs openssh-server)")
    root = tmp_path_factory.mktemp("openssh")
    g = Gateway(root / "gw")
    g.cli("init")
    # sshd logs users in as a unix user: root here, so the gateway's login name is root;
    # messages show sshd's port.
    (g.data / "gateway.toml").write_text(f'ssh_user = "root"\nssh_port = {g.port}\n')
    sshd = Sshd(g, root)
    yield sshd
    sshd.stop()


def keys_line(g: Gateway, user: str, pub: Path) -> subprocess.CompletedProcess:
    key_type, blob = pub.read_text().split()[:2]
    return g.cli("authorized-keys", user, key_type, blob, check=False)


def test_authorized_keys_prints_a_forced_command_only_for_known_enabled_keys(front, tmp_path):
    g = front.g
    alice = g.user()
    line = keys_line(g, "root", alice.pub)
    assert line.returncode == 0 and line.stderr == ""
    out = line.stdout.strip()
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(alice.pub)], capture_output=True,
                                 text=True).stdout.split()[1]
    assert out.startswith('restrict,pty,command="') and out.endswith(
        " ".join(alice.pub.read_text().split()[:2]))
    assert f"shell --key {fingerprint}\"" in out and f"--data-dir {g.data.resolve()}" in out
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


def test_workspace_2sv_policy_and_enrolment_through_sshd(front, tmp_path):
    g = front.g
    admin, member = g.user(), g.user()
    ws = g.workspace((admin, "admin"), (member, "write"))
    path = g.repo(ws)
    g.cli("workspace", "require-2sv", ws, "on")
    refused = front.git(member.key, "ls-remote", front.url(path))
    assert refused.returncode != 0
    assert f'ERROR: Workspace "{ws}" requires two-step verification.' in refused.stderr
    assert f"ssh -p {g.port} root@127.0.0.1 2sv enable" in refused.stderr
    # Enrol over sshd: the QR page, then a code from the secret it shows.
    proc = subprocess.Popen([*g.ssh_command(member.key), "-p", str(front.port), "root@127.0.0.1",
                             "2sv", "enable"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=g.env)
    out = b""
    deadline = time.monotonic() + 30
    while not URI_RE.search(out.decode(errors="replace")) and time.monotonic() < deadline:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        out += chunk
    secret = pyotp.parse_uri(URI_RE.search(out.decode()).group(1)).secret
    rest, err = proc.communicate(pyotp.TOTP(secret).now().encode() + b"\n", timeout=30)
    assert proc.returncode == 0, err
    assert re.search(r"[0-9a-z]{5}-[0-9a-z]{5}", (out + rest).decode())  # recovery codes
    allowed = front.git(member.key, "ls-remote", front.url(path))
    assert allowed.returncode == 0, allowed.stderr
    status = front.ssh(member.key, "2sv", "status")
    assert status.returncode == 0 and "on" in status.stdout.lower()
