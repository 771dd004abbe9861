"""Operations (issue #7): settings, start-up checks, limits, logs, metrics, PROXY protocol,
SIGHUP and SIGTERM, each against a real `gateway serve` of its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncssh
import pytest

from gateway import config
from testkit import GATEWAY, Gateway, free_port, http, local_git, make_key, unique, wait_for
from testkit.sshclient import connect


def serve(g: Gateway, *extra: str, env: dict | None = None, timeout: float = 20):
    """Run `gateway serve` expecting it to refuse to start: (status, output)."""
    result = subprocess.run(
        [*GATEWAY, "--data-dir", str(g.data), *extra, "serve", "--listen", f"127.0.0.1:{g.port}"],
        capture_output=True,
        text=True,
        env={**g.env, **(env or {})},
        cwd=g.root,
        timeout=timeout,
    )
    return result.returncode, result.stdout + result.stderr


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("ERROR: ") and "Traceback" not in output, output
    return lines[0]


def log_records(g: Gateway) -> list[dict]:
    """The server's log as records; every line must be a logfmt or JSON event."""
    records = []
    for line in g.server_log().splitlines():
        if line.startswith("gateway listening on"):
            continue  # the start-up line on stdout, for people
        if line.startswith("{"):
            records.append(json.loads(line))
        else:
            records.append(parse_logfmt(line))
    return records


def parse_logfmt(line: str) -> dict:
    record, rest = {}, line
    while rest:
        key, sep, rest = rest.partition("=")
        assert sep and key and " " not in key, f"not logfmt: {line!r}"
        if rest.startswith('"'):
            end = 1
            while rest[end] != '"':
                end += 2 if rest[end] == "\\" else 1
            record[key] = json.loads(rest[: end + 1])
            rest = rest[end + 1 :].lstrip(" ")
        else:
            value, _, rest = rest.partition(" ")
            record[key] = value
    return record


def events(g: Gateway, name: str) -> list[dict]:
    return [r for r in log_records(g) if r.get("event") == name]


def closed_without_banner(s: socket.socket) -> bool:
    """The server closed the socket before saying anything (a reset counts: unread
    bytes make the kernel send one)."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def ls_remote_ok(g: Gateway, user, path: str) -> float:
    started = time.monotonic()
    g.git(user, "ls-remote", g.url(path))
    return time.monotonic() - started


def seeded(g: Gateway, tmp: Path):
    """(user, repo path, clone dir) with one commit pushed."""
    user = g.user()
    ws = g.workspace((user, "admin"))
    path = g.repo(ws)
    clone = tmp / unique("clone")
    g.git(user, "clone", "-q", g.url(path), str(clone))
    (clone / "a.txt").write_text("a\n")
    local_git("add", "a.txt", cwd=clone, env=g.env)
    local_git("commit", "-qm", "a", cwd=clone, env=g.env)
    g.git(user, "push", "-q", "origin", "HEAD:main", cwd=clone)
    return user, path, clone


# --- settings -----------------------------------------------------------------------------


def test_config_check_lists_every_setting_with_its_source(private):
    g = private("max_sessions = 4\n", start=False)
    result = subprocess.run(
        [*GATEWAY, "--data-dir", str(g.data), "config", "check"],
        capture_output=True,
        text=True,
        cwd=g.root,
        env={**g.env, "GATEWAY_LOG_FORMAT": "json"},
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split(" = ")[0]: line for line in result.stdout.splitlines() if " = " in line}
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in config.SETTING_NAMES:
        assert name in lines, result.stdout
        assert f"`{name}`" in readme, f"setting {name} is not in the README"
    assert (
        lines["max_sessions"].startswith("max_sessions = 4  # ")
        and "gateway.toml" in lines["max_sessions"]
    )
    assert lines["log_format"].startswith('log_format = "json"  # GATEWAY_LOG_FORMAT')
    assert lines["login_timeout"].startswith("login_timeout = 30  # default")
    assert result.stdout.rstrip().endswith("usable")


@pytest.mark.parametrize(
    "toml, env, expected",
    [
        (
            "login_timout = 5\n",
            {},
            "setting 'login_timout': unknown setting (did you mean 'login_timeout'?)",
        ),
        ("login_timeout = -5\n", {}, "setting 'login_timeout' must be between 1 and 3600 (got -5)"),
        ('login_timeout = "soon"\n', {}, "setting 'login_timeout' must be a whole number"),
        ('listen = "nowhere"\n', {}, "setting 'listen' must be HOST:PORT"),
        ('log_format = "xml"\n', {}, "setting 'log_format' must be one of 'logfmt', 'json'"),
        ("proxy_protocol = 1\n", {}, "setting 'proxy_protocol' must be true or false"),
        ('listen = "127.0.0.1:2222\n', {}, "is not valid TOML"),
        ("idle_timeout = 30\nhook_timeout = 60\n", {}, "idle_timeout (30, from"),
        (
            "",
            {"GATEWAY_MAX_SESSIONS": "ten"},
            "GATEWAY_MAX_SESSIONS must be a whole number (got 'ten')",
        ),
        (
            "",
            {"GATEWAY_MAX_SESSIONS": "0"},
            "GATEWAY_MAX_SESSIONS must be between 1 and 1000 (got 0)",
        ),
        ("", {"GATEWAY_PROXY_PROTOCOL": "maybe"}, "GATEWAY_PROXY_PROTOCOL must be true or false"),
    ],
    ids=[
        "unknown-key",
        "negative",
        "wrong-type",
        "bad-listen",
        "bad-choice",
        "not-bool",
        "bad-toml",
        "idle-below-hook",
        "env-not-int",
        "env-out-of-range",
        "env-not-bool",
    ],
)
def test_a_bad_setting_is_one_line_naming_the_key_and_nothing_starts(private, toml, env, expected):
    g = private(start=False)
    (g.data / "gateway.toml").write_text(toml)
    check = subprocess.run(
        [*GATEWAY, "--data-dir", str(g.data), "config", "check"],
        capture_output=True,
        text=True,
        env={**g.env, **env},
        cwd=g.root,
    )
    assert check.returncode == 1
    assert expected in one_error_line(check.stderr), check.stderr
    status, output = serve(g, env=env)
    assert status == 1 and expected in one_error_line(output)
    with pytest.raises(OSError):  # nothing listens
        socket.create_connection(("127.0.0.1", g.port), timeout=1).close()


def test_env_overrides_the_file(private, tmp_path):
    g = private("max_auth_tries = 6\n", start=False)
    g.env["GATEWAY_MAX_AUTH_TRIES"] = "1"
    g.start()
    user = g.user()
    stranger = make_key(tmp_path, "stranger")
    # Two keys offered: with one try allowed, the stranger's failure ends the connection.
    result = subprocess.run(
        [
            *g.ssh_command(stranger),
            "-i",
            str(user.key),
            "-p",
            str(g.port),
            "git@127.0.0.1",
            "whoami",
        ],
        capture_output=True,
        text=True,
        env=g.env,
        timeout=30,
    )
    assert result.returncode == 255 and user.name not in result.stdout, result
    assert g.ssh(user, "whoami").returncode == 0


def test_loose_master_key_is_refused_with_the_fix(private):
    g = private(start=False)
    os.chmod(g.data / "master.key", 0o644)
    status, output = serve(g)
    line = one_error_line(output)
    assert status == 1 and "master.key can be read by other users" in line
    assert f"chmod 600 {g.data / 'master.key'}" in line


def test_data_dir_owned_by_someone_else_is_refused(private, tmp_path):
    g = private(start=False)
    if os.geteuid() == 0:
        os.chown(g.data, 65534, 65534)
        expected = "is owned by uid 65534"
    else:  # the test runs unprivileged: a directory root owns
        g.data = Path("/")
        expected = "is owned by uid 0"
    status, output = serve(g)
    assert status == 1 and expected in one_error_line(output)


def test_port_in_use_is_one_line(private):
    g = private(start=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", g.port))
        taken.listen()
        status, output = serve(g)
    line = one_error_line(output)
    assert status == 1 and f"Cannot listen on 127.0.0.1:{g.port}" in line
    assert "in use" in line


# --- limits -------------------------------------------------------------------------------


def open_sockets(g: Gateway, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(count)]


def is_closed(s: socket.socket) -> bool:
    s.settimeout(2)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, OSError):
        return False


def test_a_flood_of_unauthenticated_sockets_does_not_keep_a_user_out(private, tmp_path):
    g = private()
    user, path, _ = seeded(g, tmp_path)
    flood = open_sockets(g, 300)
    try:
        took = ls_remote_ok(g, user, path)  # at once, by default settings
        assert took < 5, took
    finally:
        for s in flood:
            s.close()


def test_a_full_startup_cap_drops_the_silent_to_let_a_user_in(private, tmp_path):
    g = private("max_startups = 50\n")
    user, path, _ = seeded(g, tmp_path)
    flood = open_sockets(g, 120)  # 50 held, the rest refused: the cap is full
    try:
        assert sum(is_closed(s) for s in flood[50:]) == 70
        time.sleep(2.5)  # silent for a while: now they may be dropped to make room
        assert ls_remote_ok(g, user, path) < 5
        assert is_closed(flood[0])  # the oldest silent one made room
        assert not is_closed(flood[49])
    finally:
        for s in flood:
            s.close()
    assert events(g, "connection.dropped")
    assert [e for e in events(g, "connection.refused") if e["reason"] == "max_startups"]


def test_connections_per_address_are_capped(private, tmp_path):
    g = private("max_connections_per_address = 3\nmax_startups_per_address = 5\n")
    held = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(3)]
    try:
        for s in held:  # talking clients count; silent sockets are the startup caps' business
            s.sendall(b"SSH-2.0-held\r\n")
            assert s.recv(4).startswith(b"SSH-")
        extra = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        extra.settimeout(5)
        assert closed_without_banner(extra)
        extra.close()
    finally:
        for s in held:
            s.close()
    user = g.user()
    assert wait_for(lambda: g.ssh(user, "whoami").returncode == 0, 10)
    assert [
        e for e in events(g, "connection.refused") if e["reason"] == "max_connections_per_address"
    ]


def test_login_timeout_cuts_a_silent_client(private):
    g = private("login_timeout = 2\n")
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    started = time.monotonic()
    try:
        s.sendall(b"SSH-2.0-slow\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        s.close()
    took = time.monotonic() - started
    assert 1.5 < took < 8, took


def test_sessions_per_connection_are_capped(private):
    g = private("max_sessions = 2\n")
    user = g.user()

    async def go():
        async with connect(g, user.key) as conn:
            # Two prompts held open (2sv enable waits for a code; `2sv verify` would end at
            # once for an account without 2SV), then a third session.
            held = [await conn.create_process("2sv enable") for _ in range(2)]
            for p in held:
                await p.stderr.readline()  # its prompt: the session is running
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run("whoami")
            for p in held:
                p.stdin.write_eof()
                await p.wait()
            # Room again, once the server has counted the two ended sessions out (the
            # client can see a channel close a moment before that).
            for _ in range(50):
                try:
                    return await conn.run("whoami")
                except asyncssh.ChannelOpenError:
                    await asyncio.sleep(0.1)
            return await conn.run("whoami")

    result = asyncio.run(go())
    assert result.exit_status == 0 and user.name in result.stdout
    assert events(g, "session.refused")


def test_a_prompt_left_unanswered_times_out(private):
    g = private("idle_timeout = 3\nhook_timeout = 1\n")
    user = g.user()
    started = time.monotonic()
    proc = subprocess.Popen(
        [*g.ssh_command(user.key), "-p", str(g.port), "git@127.0.0.1", "2sv", "enable"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=g.env,
    )
    try:
        proc.wait(30)  # stdin stays open, nothing typed
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.stdin.close()
    assert time.monotonic() - started < 20
    assert b"ERROR: No answer within 3 seconds" in err, err
    assert proc.returncode != 0


def test_an_idle_authenticated_connection_is_closed(private):
    g = private("idle_timeout = 3\nhook_timeout = 1\n")
    user = g.user()

    async def go():
        async with connect(g, user.key) as conn:
            started = time.monotonic()
            await asyncio.wait_for(conn.wait_closed(), 20)
            return time.monotonic() - started

    took = asyncio.run(go())
    assert 2 < took < 15, took
    assert events(g, "connection.idle")


# --- logs and metrics ----------------------------------------------------------------------


def test_every_log_line_is_structured_and_tells_the_story(private, tmp_path):
    g = private('log_format = "json"\n')
    user, path, clone = seeded(g, tmp_path)
    outsider = g.user()
    g.git(outsider, "ls-remote", g.url(path), check=False)
    records = log_records(g)  # each line parsed as JSON
    names = {r["event"] for r in records}
    for name in (
        "listening",
        "connection.open",
        "auth.ok",
        "command",
        "decision",
        "connection.close",
    ):
        assert name in names, names
    auth = [r for r in records if r["event"] == "auth.ok" and r["account"] == user.name]
    assert (
        auth and auth[0]["key"].startswith("SHA256:") and auth[0]["peer"].startswith("127.0.0.1:")
    )
    pushes = [r for r in records if r["event"] == "command" and r["verb"] == "git-receive-pack"]
    assert pushes and pushes[0]["status"] == 0 and pushes[0]["target"] == path
    denied = [r for r in records if r["event"] == "decision" and r["account"] == outsider.name]
    assert denied and denied[0]["result"] == "deny"


def test_logfmt_lines_parse_and_quote_hostile_text(private, tmp_path):
    g = private()
    user = g.user()
    g.ssh(user, 'bogus "with quotes" and\\backslash')
    g.ssh(user, "2sv", "verify", input="123456\n")  # a code never reaches the log
    records = log_records(g)  # each line parsed as logfmt
    assert any(r.get("event") == "command" and r.get("verb") == "unknown" for r in records)
    assert "123456" not in g.server_log()


scrape = http.get


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_health_and_ready_are_served_when_configured(private, tmp_path):
    port = free_port()
    g = private(f'metrics_listen = "127.0.0.1:{port}"\n')
    user, path, _ = seeded(g, tmp_path)
    g.git(user, "ls-remote", g.url(path))
    g.ssh(user, "no-such-command")
    status, text = scrape(port, "/metrics")
    assert status == 200
    assert metric(text, "gateway_commands_total", verb="git-upload-pack", outcome="ok") >= 2
    assert metric(text, "gateway_commands_total", verb="git-receive-pack", outcome="ok") == 1
    assert metric(text, "gateway_commands_total", verb="unknown", outcome="error") == 1
    assert metric(text, "gateway_auth_total", result="ok") >= 4
    assert metric(text, "gateway_session_bytes_total", direction="out") > 300
    assert metric(text, "gateway_session_bytes_total", direction="in") > 100
    assert metric(text, "gateway_command_duration_seconds_count", verb="git-upload-pack") >= 2
    assert "gateway_connections_in_flight" in text
    assert scrape(port, "/health") == (200, "ok\n")
    assert scrape(port, "/ready") == (200, "ready\n")
    assert scrape(port, "/nope")[0] == 404


def test_no_metrics_listener_by_default(gw):
    assert "metrics.listening" not in gw.server_log()


# --- PROXY protocol -------------------------------------------------------------------------

PROXY_SCRIPT = r"""
import os, socket, sys, threading
header = bytes.fromhex(sys.argv[3])
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
s.sendall(header)
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


def v2_header(address: str, port: int) -> bytes:
    import ipaddress
    import struct

    addresses = (
        ipaddress.IPv4Address(address).packed
        + ipaddress.IPv4Address("127.0.0.1").packed
        + struct.pack("!HH", port, 22)
    )
    return (
        b"\r\n\r\n\x00\r\nQUIT\n"
        + bytes([0x21, 0x11])
        + struct.pack("!H", len(addresses))
        + addresses
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_gives_the_clients_address(private, tmp_path, version):
    g = private("proxy_protocol = true\n")
    user = g.user()
    script = tmp_path / "proxy.py"
    script.write_text(PROXY_SCRIPT)
    header = (
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 22\r\n"
        if version == "v1"
        else v2_header("203.0.113.7", 40001)
    )
    proxy = f"ProxyCommand={sys.executable} {script} %h {g.port} {header.hex()}"
    result = g.ssh(user, "whoami", extra=("-o", proxy))
    assert result.returncode == 0 and user.name in result.stdout, result.stderr
    auth = [r for r in events(g, "auth.ok") if r["account"] == user.name]
    assert auth and auth[-1]["peer"] == "203.0.113.7:40001", auth


@pytest.mark.parametrize(
    "first_bytes",
    [b"SSH-2.0-OpenSSH_9.6\r\n", b"PROXY TCP4 junk\r\n", b"PROXY " + b"9" * 200],
    ids=["no-header", "malformed-v1", "overlong-v1"],
)
def test_without_a_valid_proxy_header_the_connection_is_closed(private, first_bytes):
    g = private("proxy_protocol = true\n")
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(first_bytes)
        assert closed_without_banner(s)
    assert wait_for(
        lambda: [
            e for e in events(g, "connection.refused") if e["reason"].startswith("PROXY header")
        ]
    )


# --- SIGHUP and SIGTERM -----------------------------------------------------------------------


def test_sighup_reloads_settings_and_keydir_without_dropping_connections(private, tmp_path):
    g = private()
    user = g.user()
    newcomer_key = make_key(tmp_path, "newcomer")
    newcomer = unique("nc")
    keydir = g.root / "keys"
    keydir.mkdir(exist_ok=True)

    async def go():
        async with connect(g, user.key) as conn:
            assert (await conn.run("whoami")).exit_status == 0
            (g.data / "gateway.toml").write_text('log_format = "json"\n')
            (keydir / f"{newcomer}.pub").write_text(Path(str(newcomer_key) + ".pub").read_text())
            g.proc.send_signal(signal.SIGHUP)
            assert await asyncio.to_thread(wait_for, lambda: '"event": "reload"' in g.server_log())
            after = await conn.run("whoami")  # the same connection still serves
            return after

    after = asyncio.run(go())
    assert after.exit_status == 0 and user.name in after.stdout
    reload = [r for r in log_records(g) if r.get("event") == "reload"]
    assert reload and "log_format" in reload[0]["changed"]
    assert wait_for(lambda: g.ssh(newcomer_key, "whoami").returncode == 0, 10)
    assert g.proc.poll() is None


def test_sighup_with_a_broken_file_keeps_the_old_settings(private):
    g = private()
    user = g.user()
    (g.data / "gateway.toml").write_text("max_sessions = -1\n")
    g.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reload.failed" in g.server_log())
    assert g.ssh(user, "whoami").returncode == 0
    assert "max_sessions" in events(g, "reload.failed")[0]["error"]


def _slow_hook(g: Gateway, seconds: float) -> None:
    hooks = g.root / "hooks" / "pre-receive.d"
    hooks.mkdir(parents=True, exist_ok=True)
    hook = hooks / "50-slow"
    hook.write_text(f"#!/bin/sh\ncat >/dev/null\nsleep {seconds}\n")
    hook.chmod(0o755)


def test_sigterm_lets_a_running_push_finish_then_exits(private, tmp_path):
    g = private("grace_period = 20\n")
    user, path, clone = seeded(g, tmp_path)
    _slow_hook(g, 3)
    (clone / "b.txt").write_text("b\n")
    local_git("add", "b.txt", cwd=clone, env=g.env)
    local_git("commit", "-qm", "b", cwd=clone, env=g.env)
    tip = local_git("rev-parse", "HEAD", cwd=clone).strip()
    results = {}
    pusher = threading.Thread(
        target=lambda: results.update(
            push=g.git(user, "push", "origin", "HEAD:main", cwd=clone, check=False)
        )
    )
    pusher.start()
    assert wait_for(lambda: any(e.get("action") == "write" for e in events(g, "decision")), 30)
    time.sleep(0.5)  # the pack is in; the hook sleeps
    g.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(OSError):  # no longer accepting
        socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
    pusher.join(60)
    assert results["push"].returncode == 0, results["push"].stderr
    assert g.proc.wait(30) == 0
    refs = local_git(
        "for-each-ref", "--format=%(objectname)", "refs/heads/main", cwd=g.repo_dir(path)
    ).strip()
    assert refs == tip
    assert events(g, "stopped")


def test_sigterm_after_the_grace_period_cuts_a_push_and_loses_nothing(private, tmp_path):
    g = private("grace_period = 1\n")
    user, path, clone = seeded(g, tmp_path)
    before = local_git("rev-parse", "main", cwd=g.repo_dir(path)).strip()
    _slow_hook(g, 30)
    (clone / "c.txt").write_text("c\n")
    local_git("add", "c.txt", cwd=clone, env=g.env)
    local_git("commit", "-qm", "c", cwd=clone, env=g.env)
    pusher = subprocess.Popen(
        ["git", "push", "origin", "HEAD:main"],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**g.env, "GIT_SSH_COMMAND": " ".join(g.ssh_command(user.key))},
    )
    assert wait_for(lambda: any(e.get("action") == "write" for e in events(g, "decision")), 30)
    time.sleep(0.5)
    started = time.monotonic()
    g.proc.send_signal(signal.SIGTERM)
    assert g.proc.wait(30) == 0
    assert time.monotonic() - started < 15
    pusher.wait(30)
    assert pusher.returncode != 0
    assert events(g, "stopping.grace_expired")
    assert local_git("rev-parse", "main", cwd=g.repo_dir(path)).strip() == before
    g.start()  # the next start sweeps what the cut push left
    assert not list((g.repo_dir(path) / "objects").glob("incoming-*"))
    local_git("fsck", "--full", cwd=g.repo_dir(path))
    assert ls_remote_ok(g, user, path) < 10
