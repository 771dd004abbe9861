"""Several gateways on one PostgreSQL (README, "Running several gateways"): three
`gateway serve` processes on their own ports and data directories, sharing one
database, one repositories directory (a symlink, as a mount would be), the host keys
(`host_keys_dir`) and the master key (`master_key_file`). What one node promises holds
across all of them. PostgreSQL only: skipped when none is reachable.
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.store import nodelock
from testkit import database
from testkit.keys import fingerprint, make_key
from testkit.names import free_port, unique
from testkit.server import Gateway
from testkit.twosv import enable, fresh_code

pytestmark = pytest.mark.database
NODES = 3


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> list[Gateway]:
    if not database.reachable():
        pytest.skip(f"no PostgreSQL reachable at {database.SERVER_URL} (GATEWAY_TEST_DATABASE_URL)")
    database.current_test_marked = True
    shared = tmp_path_factory.mktemp("shared")
    (shared / "repos").mkdir()
    (shared / "keys").mkdir()
    url = database.new_postgres_database()
    gateways = []
    for number in range(NODES):
        node = Gateway(tmp_path_factory.mktemp(f"node{number}"))
        node.drop_database()  # the PostgreSQL pass's own: this test shares `url`
        node.database_url = url
        node.env["GATEWAY_DATABASE_URL"] = url
        node.data.mkdir(mode=0o700)
        (node.data / "repos").symlink_to(shared / "repos")
        (node.data / "gateway.toml").write_text(
            f'host_keys_dir = "{shared / "host_keys"}"\n'
            f'master_key_file = "{shared / "master.key"}"\n'
            f'keydir = "{shared / "keys"}"\n'
            "twosv_backoff_seconds = 2\n" + database.toml_line(url)
        )
        node.cli("init")
        gateways.append(node)
    with ThreadPoolExecutor(NODES) as pool:
        list(pool.map(Gateway.start, gateways))
    yield gateways
    for node in gateways:
        node.stop()
    database.drop(url)


def test_nodes_share_host_keys_and_one_database(nodes):
    scanned = [
        subprocess.run(
            ["ssh-keyscan", "-t", "ed25519", "-p", str(n.port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()[-1]
        for n in nodes
    ]
    assert len(set(scanned)) == 1, scanned
    assert not any((n.data / "host_keys").exists() for n in nodes)
    user = nodes[0].user()
    assert all(n.ssh(user, "whoami").returncode == 0 for n in nodes)


def test_a_push_waits_for_the_advisory_lock_another_node_holds(nodes, tmp_path):
    """The flock alone would be enough on this one machine; this shows the push also
    takes the lock that nodes on other machines see."""
    user = nodes[0].user()
    repo = nodes[0].repo(nodes[0].workspace((user, "write")))
    clone = tmp_path / "c"
    nodes[1].git(user, "clone", nodes[1].url(repo), str(clone))
    nodes[1].git(user, "commit", "--allow-empty", "-m", "one", cwd=clone)
    name = nodelock.refs_lock_name(str(nodes[0].repo_dir(repo).resolve()))
    done = threading.Event()
    with nodelock.held(nodes[0].database_url, name):
        pusher = threading.Thread(
            target=lambda: (nodes[1].git(user, "push", "origin", "HEAD", cwd=clone), done.set())
        )
        pusher.start()
        deadline = time.monotonic() + 60
        while not _waiting_advisory_locks(nodes[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _waiting_advisory_locks(nodes[0]) == 1
        assert not done.is_set()
    pusher.join(60)
    assert done.is_set()


def _waiting_advisory_locks(node: Gateway) -> int:
    rows = node.sql(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )
    return int(rows[0][0])


def test_ten_clients_push_one_ref_through_three_nodes(nodes, tmp_path):
    owner = nodes[0].user()
    workspace = nodes[0].workspace((owner, "write"))
    repo = nodes[0].repo(workspace)
    seed = tmp_path / "seed"
    nodes[0].git(owner, "clone", nodes[0].url(repo), str(seed))
    nodes[0].git(owner, "commit", "--allow-empty", "-m", "root", cwd=seed)
    nodes[0].git(owner, "push", "origin", "HEAD:main", cwd=seed)
    clients = []
    for number in range(10):
        clone = tmp_path / f"client{number}"
        node = nodes[number % NODES]
        node.git(owner, "clone", node.url(repo), str(clone))
        clients.append((node, clone))
    accepted = rejected_told = rejected = 0

    def push(number: int, round_: int) -> tuple[bool, bool]:
        node, clone = clients[number]
        node.git(owner, "fetch", "-q", "origin", cwd=clone)
        node.git(owner, "reset", "-q", "--hard", "origin/main", cwd=clone)
        node.git(owner, "commit", "-q", "--allow-empty", "-m", f"{number}.{round_}", cwd=clone)
        result = node.git(owner, "push", "origin", "HEAD:main", cwd=clone, check=False)
        told = "rejected" in result.stderr or "failed to update ref" in result.stderr
        return result.returncode == 0, told

    with ThreadPoolExecutor(10) as pool:
        for round_ in range(20):
            for ok, told in pool.map(lambda n, r=round_: push(n, r), range(10)):
                accepted += ok
                rejected += not ok
                rejected_told += (not ok) and told
    assert accepted >= 20 and rejected_told == rejected
    nodes[0].git(owner, "fetch", "-q", "origin", cwd=seed)
    count = nodes[0].git(owner, "rev-list", "--count", "origin/main", cwd=seed).stdout
    assert int(count) == accepted + 1  # the root, then one commit per accepted push


def test_a_totp_code_is_used_once_across_nodes(nodes):
    user = nodes[0].user()
    secret, _, _ = enable(nodes[0], user)
    code = fresh_code(secret)
    assert nodes[1].ssh(user, "2sv", "verify", input=code + "\n").returncode == 0
    for node in (nodes[0], nodes[2]):
        again = node.ssh(user, "2sv", "verify", input=code + "\n")
        assert again.returncode != 0 and "already used" in again.stderr


def test_the_back_off_counts_failures_from_every_node(nodes):
    user = nodes[0].user()
    _, codes, _ = enable(nodes[0], user)
    for number in range(5):
        nodes[number % NODES].ssh(user, "2sv", "verify", input="000000\n")
    locked = nodes[2].ssh(user, "2sv", "verify", input=codes[0] + "\n")
    assert locked.returncode != 0 and "Too many failed codes" in locked.stderr


def test_one_recovery_code_used_in_parallel_on_three_nodes(nodes):
    user = nodes[0].user()
    _, codes, _ = enable(nodes[0], user)
    with ThreadPoolExecutor(20) as pool:
        results = list(
            pool.map(
                lambda n: nodes[n % NODES].ssh(user, "2sv", "verify", input=codes[1] + "\n"),
                range(20),
            )
        )
    assert sum(r.returncode == 0 for r in results) == 1
    assert all("Traceback" not in r.stderr for r in results)


def test_a_session_opened_on_one_node_is_honoured_by_the_others(nodes):
    user = nodes[0].user()
    _, codes, _ = enable(nodes[0], user)
    workspace = nodes[0].workspace((user, "write"))
    nodes[0].cli("workspace", "require-2sv", workspace, "session", "--window", "60")
    repo = nodes[0].repo(workspace)
    refused = nodes[1].git(user, "ls-remote", nodes[1].url(repo), check=False)
    assert refused.returncode != 0 and "requires a verified two-step session" in refused.stderr
    assert nodes[0].ssh(user, "2sv", "verify", input=codes[0] + "\n").returncode == 0
    for node in nodes[1:]:
        assert node.git(user, "ls-remote", node.url(repo)).returncode == 0


def test_a_key_removed_or_account_disabled_on_one_node_holds_on_all(nodes):
    user = nodes[0].user()
    second = make_key(nodes[0].keys_dir, unique("k2"))
    nodes[0].cli("key", "add", user.name, f"{second}.pub")
    assert all(n.ssh(second, "whoami").returncode == 0 for n in nodes)
    nodes[1].cli("key", "remove", fingerprint(second))
    assert all(n.ssh(second, "whoami").returncode != 0 for n in nodes)
    assert all(n.ssh(user, "whoami").returncode == 0 for n in nodes)
    nodes[2].cli("account", "disable", user.name)
    assert all(n.ssh(user, "whoami").returncode != 0 for n in nodes)


def test_keys_sync_on_two_nodes_at_once_converges(nodes):
    keydir = Path(nodes[0].cli("config", "check").stdout.split('keydir = "')[1].split('"')[0])
    names = [unique("kd") for _ in range(4)]
    for name in names:
        (keydir / name).mkdir()
        for title in ("a", "b"):
            key = make_key(keydir / name, title)
            key.unlink()  # only the public half stays in the keydir
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: n.cli("keys", "sync", check=False), nodes[:2]))
    assert all("Traceback" not in r.stderr for r in results), [r.stderr for r in results]
    assert any(r.returncode == 0 for r in results), [r.stderr for r in results]
    again = nodes[2].cli("keys", "sync")
    assert again.returncode == 0
    for name in names:
        listed = nodes[2].cli("key", "list", name).stdout
        assert listed.count("SHA256:") == 2, listed


def test_an_unreachable_database_is_one_masked_line():
    port = free_port()  # nothing listens there
    url = f"postgresql://gateway:s3cret@127.0.0.1:{port}/gateway"
    with pytest.raises(nodelock.LockUnavailable) as raised, nodelock.held(url, "ws/r.git"):
        pass
    message = str(raised.value)
    assert "s3cret" not in message and "cannot take the lock" in message
    assert "\n" not in message
