"""A real `gateway serve` on a free loopback port in a directory of its own, driven the
way operators (the CLI) and users (ssh, git) drive it. The tests' `gw` fixture holds
one; tests that need their own settings, the benchmarks and the adversarial suite make
their own. On the PostgreSQL pass (testkit/database.py) each has a database of its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import database
from .keys import User, make_key
from .names import free_port, unique

BIN = Path(sys.executable).parent
GATEWAY = (
    [str(BIN / "gateway")] if (BIN / "gateway").exists() else [sys.executable, "-m", "gateway"]
)
# The 2SV back-off of the tests' shared server, short so throttling tests need not wait.
BACKOFF_SECONDS = 2


class Gateway:
    """A running server plus helpers to drive it the way operators and users do."""

    def __init__(self, root: Path, sqlite: bool = False) -> None:
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
        self.env.pop("GATEWAY_DATABASE_URL", None)
        # On the PostgreSQL pass (unless `sqlite`: an installation to move), a new
        # database; the CLI and serve get it from the environment, sshd's commands from
        # `database_toml` in a gateway.toml.
        self.database_url = None if sqlite else database.new_database()
        if self.database_url:
            self.env["GATEWAY_DATABASE_URL"] = self.database_url
        # The client's own protocol (v2 since git 2.26), as users' git speaks it; a test
        # about v0 or v1 says `-c protocol.version=N`.
        (self.home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")

    # --- the server -----------------------------------------------------------------

    def start(self) -> None:
        self.wait_started(self.launch())

    def launch(self) -> int:
        """`gateway serve` started, not waited for; where its log starts (wait_started)."""
        offset = len(self.server_log()) if (self.root / "serve.log").exists() else 0
        # The server keeps its own copy of the log's descriptor; ours closes once started.
        with open(self.root / "serve.log", "ab") as serve_log:
            self.proc = subprocess.Popen(
                [
                    *GATEWAY,
                    "--data-dir",
                    str(self.data),
                    "serve",
                    "--listen",
                    f"127.0.0.1:{self.port}",
                ],
                stdout=serve_log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
            )
        return offset

    def wait_started(self, offset: int, timeout: float = 30) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
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

    def drop_database(self) -> None:
        """The PostgreSQL pass's database, dropped (after stop)."""
        database.drop(self.database_url)

    @property
    def database_toml(self) -> str:
        """The database_url line a gateway.toml needs where no variable reaches (sshd)."""
        return database.toml_line(self.database_url)

    def sql(self, query: str, *params: object) -> list[tuple]:
        """Run one statement on this gateway's database, whichever backend it is, and
        commit: tests that set up a state no command makes (an expired key, say)."""
        return database.run(self._sql(query, params))

    async def _sql(self, query: str, params: tuple) -> list[tuple]:
        from gateway.config import Settings
        from gateway.store import db as store_db

        settings = Settings(data_dir=self.data, database_url=self.database_url or "")
        async with await store_db.open_backend(settings, migrate=False) as backend:
            db = await backend.connect()
            try:
                rows = await db.fetch_all(query, params)
                await db.commit()
            finally:
                await db.close()
        return [tuple(row) for row in rows]

    def server_log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")

    # --- the operator ---------------------------------------------------------------

    def cli(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*GATEWAY, "--data-dir", str(self.data), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=60,
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
            "ssh",
            "-i",
            str(key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            "-F",
            "/dev/null",
        ]

    def ssh(
        self,
        user: User | Path,
        *command: str,
        input: bytes | str | None = None,
        login: str = "git",
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess:
        key = user.key if isinstance(user, User) else user
        if isinstance(input, str):
            input = input.encode()
        result = subprocess.run(
            [*self.ssh_command(key), *extra, "-p", str(self.port), f"{login}@127.0.0.1", *command],
            input=input if input is not None else b"",
            capture_output=True,
            env=self.env,
            timeout=60,
        )
        return subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def git(
        self,
        user: User,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """git ARGS as USER over ssh; ENV adds variables (GIT_TRACE_PACKET, say)."""
        result = subprocess.run(
            ["git", *args],
            cwd=cwd or self.root,
            env=self._git_env(user, env),
            capture_output=True,
            timeout=300,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')}"
            )
        return subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )

    def git_process(
        self, user: User, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """git ARGS as USER, started and not waited for (communicate() gives text)."""
        return subprocess.Popen(
            ["git", *args],
            cwd=cwd or self.root,
            env=self._git_env(user, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _git_env(self, user: User, env: dict[str, str] | None) -> dict[str, str]:
        return {
            **self.env,
            "GIT_SSH_COMMAND": " ".join(self.ssh_command(user.key)),
            **(env or {}),
        }

    def repo_dir(self, path: str) -> Path:
        workspace, name = path.split("/")
        return self.data / "repos" / workspace / f"{name}.git"
