"""Fixtures: a real `gateway serve` on a free loopback port, real `git` and `ssh` clients.

One server is started per test session; every test makes its own accounts, workspaces
and repositories with unique names, so tests do not see each other's data.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
GATEWAY = [str(BIN / "gateway")] if (BIN / "gateway").exists() else [sys.executable, "-m", "gateway"]
_counter = itertools.count(1)
BACKOFF_SECONDS = 2


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 1000}-{next(_counter)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class User:
    name: str
    key: Path  # private key file; the public one is key + ".pub"

    @property
    def pub(self) -> Path:
        return Path(str(self.key) + ".pub")


def make_key(directory: Path, name: str, kind: str = "ed25519") -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)],
        check=True,
    )
    return path


class Gateway:
    """A running server plus helpers to drive it the way operators and users do."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "var"
        self.home = root / "home"
        self.keys_dir = root / "userkeys"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.home.mkdir(parents=True)
        self.keys_dir.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.com",
            "GIT_TERMINAL_PROMPT": "0",
        }
        self.env.pop("GATEWAY_DATA_DIR", None)
        self.env.pop("GATEWAY_CONFIG", None)
        (self.home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n[protocol]\n\tversion = 0\n")

    # --- the server -----------------------------------------------------------------

    def start(self) -> None:
        offset = len(self.server_log()) if (self.root / "serve.log").exists() else 0
        self.log = open(self.root / "serve.log", "ab")
        self.proc = subprocess.Popen(
            [*GATEWAY, "--data-dir", str(self.data), "serve", "--listen", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway serve exited: {self.server_log()}")
            if "gateway listening on" in self.server_log()[offset:]:
                return  # printed once it accepts (a PROXY-protocol server sends no banner first)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("gateway serve did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def server_log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")

    # --- the operator ---------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*GATEWAY, "--data-dir", str(self.data), *args], input=input, capture_output=True,
            text=True, env=self.env, cwd=self.root, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"gateway {' '.join(args)} failed: {result.stderr}")
        return result

    def user(self, name: str | None = None) -> User:
        name = name or unique("u")
        key = make_key(self.keys_dir, name)
        self.cli("account", "add", name, "--key", str(key) + ".pub")
        return User(name, key)

    def workspace(self, *members: tuple[User, str]) -> str:
        name = unique("ws")
        self.cli("workspace", "add", name)
        for user, role in members:
            self.cli("member", "add", name, user.name, "--role", role)
        return name

    def repo(self, workspace: str, name: str | None = None, public: bool = False) -> str:
        path = f"{workspace}/{name or unique('r')}"
        self.cli("repo", "add", path, *(["--public"] if public else []))
        return path

    # --- the user -------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"ssh://git@127.0.0.1:{self.port}/{path}.git"

    def ssh_command(self, key: Path) -> list[str]:
        return [
            "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
            "-F", "/dev/null",
        ]

    def ssh(self, user: User | Path, *command: str, input: bytes | str | None = None,
            login: str = "git", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        key = user.key if isinstance(user, User) else user
        if isinstance(input, str):
            input = input.encode()
        result = subprocess.run(
            [*self.ssh_command(key), *extra, "-p", str(self.port), f"{login}@127.0.0.1", *command],
            input=input if input is not None else b"", capture_output=True, env=self.env, timeout=60,
        )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def git(self, user: User, *args: str, cwd: Path | None = None, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        env = {**self.env, "GIT_SSH_COMMAND": " ".join(self.ssh_command(user.key))}
        result = subprocess.run(
            ["git", *args], cwd=cwd or self.root, env=env, capture_output=True, timeout=300,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}"
            )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def repo_dir(self, path: str) -> Path:
        workspace, name = path.split("/")
        return self.data / "repos" / workspace / f"{name}.git"


def git_workers(repo_dir: Path) -> list[int]:
    """Live Git worker processes serving REPO_DIR: a worker serving a repository has it
    as its working directory (a worker started per request also has it in its command)."""
    target = str(repo_dir.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if b"gateway.git.workers.worker" in cmdline and state != "Z" and (
                cwd == target or target.encode() in cmdline):
            pids.append(int(entry.name))
    return pids


def local_git(*args: str, cwd: Path, env: dict | None = None) -> str:
    """Plain local git (no network), for preparing and inspecting work trees."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


@pytest.fixture(scope="session")
def gw(tmp_path_factory) -> Gateway:
    if not shutil.which("git") or not shutil.which("ssh"):
        pytest.fail("the tests need the git and ssh binaries")
    gateway = Gateway(tmp_path_factory.mktemp("gateway"))
    gateway.cli("init")
    # A short 2SV back-off so that throttling tests need not wait for minutes.
    (gateway.data / "gateway.toml").write_text(f"twosv_backoff_seconds = {BACKOFF_SECONDS}\n")
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def work(tmp_path, gw) -> Path:
    """A scratch directory for clones."""
    return tmp_path
