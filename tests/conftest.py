"""Fixtures: a real `gateway serve` on a free loopback port, real `git` and `ssh` clients.

One server is started per test session (under `pytest -n auto`, one per xdist worker);
every test makes its own accounts, workspaces and repositories with unique names, so
tests do not see each other's data. The server driver and the helpers live in the
`testkit` package, which bench/ and adversarial/ import too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.server import BACKOFF_SECONDS, Gateway


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


@pytest.fixture
def private(tmp_path):
    """A server of one's own, to configure, kill and restart; stopped at the end:
    private(toml="", start=True) -> Gateway."""
    servers: list[Gateway] = []

    def make(toml: str = "", start: bool = True) -> Gateway:
        g = Gateway(tmp_path / f"server{len(servers)}")
        g.cli("init")
        if toml:
            (g.data / "gateway.toml").write_text(toml)
        servers.append(g)
        if start:
            g.start()
        return g

    yield make
    for g in servers:
        g.stop()


@pytest.fixture
def hooks(gw: Gateway):
    """Install hooks into the test server's hooks_dir for one test: hooks(name, script)."""
    installed: list[Path] = []

    def install(name: str, script: str) -> Path:
        path = gw.root / "hooks" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        path.chmod(0o755)
        installed.append(path)
        return path

    yield install
    for path in installed:
        path.unlink(missing_ok=True)
