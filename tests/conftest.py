"""Fixtures: a real `gateway serve` on a free loopback port, real `git` and `ssh` clients.

One server is started per test session (under `pytest -n auto`, one per xdist worker);
every test makes its own accounts, workspaces and repositories with unique names, so
tests do not see each other's data. The server driver and the helpers live in the
`testkit` package, which bench/ and adversarial/ import too.

Tests that touch the database run on both backends: `make test` runs the suite on
SQLite, then the tests marked `database` again with GATEWAY_TEST_BACKEND=postgresql
(testkit/database.py). The marker is given here to every test that uses a fixture
below that holds a gateway or a database; a test that makes one some other way says
`@pytest.mark.database` itself (testkit refuses to make one for an unmarked test).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.store import db as store_db
from testkit import database
from testkit.server import BACKOFF_SECONDS, Gateway

# Fixtures that hold a gateway or a database: a test using one (even through another
# fixture) touches the database.
DATABASE_FIXTURES = {
    "gw",
    "private",
    "backend",
    "inproc",
    "session",
    # modules' own gateways
    "front",
    "capped",
    "sshd_ca",
    "servers",
    "bombed",
    "private_gateway",
    "caps",
    "timed",
    "forking",
}


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "database: touches the database (run again on PostgreSQL by make test)"
    )


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.database)


def pytest_runtest_setup(item) -> None:
    database.current_test_marked = item.get_closest_marker("database") is not None


def pytest_sessionfinish(session) -> None:
    database.drop_all()  # what a fixture did not drop itself (a test's own Gateway)


@pytest.fixture
async def backend(tmp_path):
    """The backend of this run (SQLite in tmp_path, or a new PostgreSQL database),
    migrated: backend.connect() gives a Database; settings are `backend.settings`."""
    url = database.new_database()
    settings = Settings(data_dir=tmp_path, database_url=url or "")
    opened = await store_db.open_backend(settings)
    opened.settings = settings
    yield opened
    await opened.close()
    database.drop(url)


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
    gateway.drop_database()


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
        g.drop_database()


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
