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
