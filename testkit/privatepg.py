"""A PostgreSQL server of a test's own, to stop and start under a running gateway (the
fault tests): initdb into a temporary directory, owned by the `postgres` user when run
as root, listening on a free loopback port. The shared cluster other tests use is never
restarted."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .names import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def missing() -> str | None:
    """Why no private server can be made here, or None."""
    if not (BIN / "initdb").exists():
        return f"the PostgreSQL binaries are not installed ({BIN}/initdb)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to own the cluster"
    return None


class PrivatePostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self._user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self._user = ["runuser", "-u", "postgres", "--"]
        self._run(BIN / "initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data))
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: object) -> None:
        subprocess.run(
            [*self._user, *map(str, args)],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.root,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = self.root / "server.log"
        self._run(BIN / "pg_ctl", "-D", self.data, "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        self._run(BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def close(self) -> None:
        subprocess.run(
            [*self._user, str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(self.root, ignore_errors=True)
