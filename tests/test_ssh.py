"""The SSH surface end to end: greeting, access messages, bad input, SSH-level limits.

Real `ssh`, `git`, `sftp` and `scp` binaries against a real `gateway serve`; asyncssh as a
client only where OpenSSH cannot send what is needed (NUL bytes, invalid UTF-8, the
offered-then-signed key sequence of CVE-2023-43809). Nothing here patches the server.
"""

from __future__ import annotations

import asyncio
import os
import pty
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import asyncssh
import pytest

from testkit import Gateway, User, fingerprint, git_workers, local_git, make_key
from testkit.sshclient import probe_then_sign

GIT_FATAL = "fatal: Could not read from remote repository."


# --- helpers -------------------------------------------------------------------------


def greeting_line(user: User) -> str:
    return (
        f'Hi {user.name}! You\'ve authenticated with key "{user.name}@test" '
        f"({fingerprint(user.pub)}). Shell access is disabled; use git to clone and push."
    )


def hint_line(gw: Gateway) -> str:
    return f"Run 'ssh -p {gw.port} git@127.0.0.1 help' to see the commands."


def ssh_base(gw: Gateway, log_level: str = "ERROR") -> list[str]:
    """OpenSSH options without an identity (the Gateway helper fixes one key)."""
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        f"LogLevel={log_level}",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
        "-p",
        str(gw.port),
    ]


def run(
    argv: list[str], gw: Gateway, input: bytes = b"", timeout: float = 60, env: dict | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv, input=input, capture_output=True, env=env or gw.env, timeout=timeout
    )
    return subprocess.CompletedProcess(
        argv,
        result.returncode,
        result.stdout.decode(errors="replace"),
        result.stderr.decode(errors="replace"),
    )


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def assert_one_error(
    result: subprocess.CompletedProcess, message: str | None = None, hint: str | None = None
) -> None:
    """The gateway refused: one `ERROR: ` line (plus the help pointer where allowed),
    nothing on stdout, a non-zero status that came from the server (not ssh's 255)."""
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode not in (0, 255), (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert lines and lines[0].startswith("ERROR: "), result.stderr
    if message is not None:
        assert lines[0] == f"ERROR: {message}", result.stderr
    allowed_rest = [[]] + ([[hint]] if hint else [])
    assert lines[1:] in allowed_rest, result.stderr


def git_refused(result: subprocess.CompletedProcess, message: str) -> None:
    """git shows the gateway's line verbatim, then its own `fatal:` line."""
    assert result.returncode != 0
    assert_no_traceback(result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    error_lines = [line for line in lines if line.startswith("ERROR")]
    assert error_lines == [f"ERROR: {message}"], result.stderr
    at = lines.index(f"ERROR: {message}")
    assert lines[at + 1] == GIT_FATAL, result.stderr


def new_tree(gw: Gateway, where: Path, marker: str) -> Path:
    """A local work tree with one commit."""
    where.mkdir(parents=True)
    local_git("init", "-q", "-b", "main", cwd=where, env=gw.env)
    (where / "marker.txt").write_text(marker + "\n")
    local_git("add", "marker.txt", cwd=where, env=gw.env)
    local_git("commit", "-q", "-m", marker, cwd=where, env=gw.env)
    return where


def ls_remote(gw: Gateway, user: User, path: str) -> dict[str, str]:
    out = gw.git(user, "ls-remote", gw.url(path)).stdout
    return {ref: sha for sha, ref in (line.split("\t") for line in out.splitlines())}


def disk_snapshot(root: Path) -> set[tuple[str, int, int]]:
    """Every path under ROOT with its size and mtime: a change anywhere shows."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            found.add((str(p.relative_to(root)), st.st_size, st.st_mtime_ns))
    return found


def workers_for(repo_dir: Path) -> list[int]:
    """Live git worker processes serving REPO_DIR."""
    return git_workers(repo_dir)


def log_tail(gw: Gateway, offset: int) -> str:
    return gw.server_log()[offset:]


def async_run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def connect(gw: Gateway, key: Path | None, **kw):
    options = dict(
        port=gw.port,
        username="git",
        known_hosts=None,
        agent_path=None,
        client_keys=[str(key)] if key else None,
    )
    options.update(kw)
    return asyncssh.connect("127.0.0.1", **options)


# --- shared, read-mostly world -------------------------------------------------------


class World:
    pass


@pytest.fixture(scope="module")
def world(gw: Gateway, tmp_path_factory) -> World:
    """alice writes, rita reads, adam administers `ws`; olga is in no workspace; carol owns
    `ws2` with a private repository. `ws/code` is private, `ws/pub` public, both with a
    commit on main."""
    w = World()
    w.log_offset = len(gw.server_log())
    w.alice, w.rita, w.adam, w.olga, w.carol = (gw.user() for _ in range(5))
    w.ws = gw.workspace((w.alice, "write"), (w.rita, "read"), (w.adam, "admin"))
    w.ws2 = gw.workspace((w.carol, "admin"))
    w.code = gw.repo(w.ws, "code")
    w.pub = gw.repo(w.ws, "pub", public=True)
    w.hidden = gw.repo(w.ws2, "hidden")
    scratch = tmp_path_factory.mktemp("world")
    for path, who in ((w.code, w.alice), (w.pub, w.alice), (w.hidden, w.carol)):
        tree = new_tree(gw, scratch / path.replace("/", "_"), f"first commit of {path}")
        gw.git(who, "push", gw.url(path), "main:main", cwd=tree)
    w.head = {
        path: ls_remote(gw, w.alice if path != w.hidden else w.carol, path)
        for path in (w.code, w.pub, w.hidden)
    }
    return w


# --- 1. greeting, whoami, help -------------------------------------------------------


def test_greeting_without_command(gw, world):
    result = gw.ssh(world.alice)
    assert_no_traceback(result.stdout, result.stderr)
    assert result.returncode != 255, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == greeting_line(world.alice)
    # Then the 2SV state; alice's workspaces have no 2SV policy, so no policy lines.
    assert lines[1].startswith("Two-step verification") and "disabled" in lines[1], lines
    assert not any("Workspace" in line for line in lines), lines


def test_greeting_names_the_key_that_signed(gw, world, tmp_path):
    """A second key of the same account with its own title: the greeting names that key."""
    second = make_key(tmp_path, "second")
    gw.cli("key", "add", world.olga.name, str(second) + ".pub", "--title", "work laptop")
    result = gw.ssh(second)
    fp = fingerprint(Path(str(second) + ".pub"))
    assert result.stdout.splitlines()[0] == (
        f'Hi {world.olga.name}! You\'ve authenticated with key "work laptop" ({fp}). '
        "Shell access is disabled; use git to clone and push."
    )


def test_greeting_with_forced_pty(gw, world):
    """`ssh -tt` asks for a pty: the issue says it gets the greeting and ends.

    OpenSSH treats a refused pty as fatal when -t/-tt was given, so a server that refuses
    pty requests can never show the greeting here."""
    result = gw.ssh(world.alice, extra=("-tt",))
    assert_no_traceback(result.stdout, result.stderr)
    assert greeting_line(world.alice) in result.stdout.replace("\r\n", "\n").splitlines(), (
        result.returncode,
        result.stdout,
        result.stderr,
    )
    assert result.returncode != 255
    # With a terminal, commands still run, and refusals are still one ERROR line.
    who = gw.ssh(world.alice, "whoami", extra=("-tt",))
    assert (who.returncode, who.stdout.replace("\r\n", "\n")) == (0, world.alice.name + "\n")
    bad = gw.ssh(world.alice, "git-upload-pack ../../etc", extra=("-tt",))
    assert bad.returncode not in (0, 255)
    text = (bad.stdout + bad.stderr).replace("\r\n", "\n")
    assert_no_traceback(text)
    assert next(line for line in text.splitlines() if line.strip()).startswith("ERROR: "), text
    assert sum(line.startswith("ERROR") for line in text.splitlines()) == 1, text


def test_greeting_from_a_terminal(gw, world):
    """A user typing `ssh -p PORT git@HOST` in a terminal (stdin is a tty, no -t)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*ssh_base(gw, "DEBUG2"), "-i", str(world.alice.key), "git@127.0.0.1"],
            stdin=slave,
            capture_output=True,
            env=gw.env,
            timeout=60,
        )
    finally:
        os.close(slave)
        os.close(master)
    out = proc.stdout.decode(errors="replace").replace("\r\n", "\n")
    err = proc.stderr.decode(errors="replace")
    assert_no_traceback(out, err)
    assert "request pty-req" in err  # the client did ask for a terminal
    assert greeting_line(world.alice) in out.splitlines(), (out, err)


def test_whoami_and_help(gw, world):
    result = gw.ssh(world.rita, "whoami")
    assert (result.returncode, result.stdout, result.stderr) == (0, world.rita.name + "\n", "")
    result = gw.ssh(world.rita, "help")
    assert result.returncode == 0 and result.stderr == ""
    assert f"ssh://git@127.0.0.1:{gw.port}/WORKSPACE/NAME.git" in result.stdout
    for command in ("help", "whoami"):
        assert f"ssh -p {gw.port} git@127.0.0.1 {command}" in result.stdout, result.stdout


def test_whoami_with_arguments_is_refused(gw, world):
    assert_one_error(gw.ssh(world.rita, "whoami extra"))


# --- 2. access messages --------------------------------------------------------------


def test_missing_and_private_repositories_look_the_same(gw, world, tmp_path):
    missing = f"{world.ws2}/nope"
    a = gw.git(world.alice, "clone", gw.url(missing), str(tmp_path / "a"), check=False)
    b = gw.git(world.alice, "clone", gw.url(world.hidden), str(tmp_path / "b"), check=False)
    git_refused(a, f"Repository not found: {missing}")
    git_refused(b, f"Repository not found: {world.hidden}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Nothing but the name tells the two answers apart.
    assert a.stderr.replace(missing, "X").replace(str(tmp_path / "a"), "D") == b.stderr.replace(
        world.hidden, "X"
    ).replace(str(tmp_path / "b"), "D")
    # A missing workspace too, and a push to a private repository of another workspace.
    c = gw.git(world.alice, "ls-remote", gw.url("no-such-ws/x"), check=False)
    git_refused(c, "Repository not found: no-such-ws/x")
    tree = new_tree(gw, tmp_path / "t", "intruder")
    d = gw.git(world.alice, "push", gw.url(world.hidden), "main:evil", cwd=tree, check=False)
    git_refused(d, f"Repository not found: {world.hidden}")
    assert ls_remote(gw, world.carol, world.hidden) == world.head[world.hidden]


def test_every_role_clones_the_private_repository(gw, world, tmp_path):
    for user in (world.rita, world.alice, world.adam):
        dest = tmp_path / user.name
        gw.git(user, "clone", gw.url(world.code), str(dest))
        assert (dest / "marker.txt").read_text() == f"first commit of {world.code}\n"


def test_read_member_cannot_push(gw, world, tmp_path):
    tree = new_tree(gw, tmp_path / "t", "reader push")
    result = gw.git(world.rita, "push", gw.url(world.code), "main:rita", cwd=tree, check=False)
    git_refused(result, f"Permission to {world.code} denied to {world.rita.name}.")
    assert "refs/heads/rita" not in ls_remote(gw, world.alice, world.code)


def test_write_and_admin_members_push(gw, world, tmp_path):
    for user in (world.alice, world.adam):
        tree = new_tree(gw, tmp_path / user.name, f"push by {user.name}")
        gw.git(user, "push", gw.url(world.code), f"main:{user.name}", cwd=tree)
        sha = local_git("rev-parse", "HEAD", cwd=tree).strip()
        assert ls_remote(gw, world.rita, world.code)[f"refs/heads/{user.name}"] == sha


def test_public_repository_readable_by_anyone_not_writable(gw, world, tmp_path):
    dest = tmp_path / "pub"
    gw.git(world.olga, "clone", gw.url(world.pub), str(dest))
    assert (dest / "marker.txt").exists()
    tree = new_tree(gw, tmp_path / "t", "outsider push")
    result = gw.git(world.olga, "push", gw.url(world.pub), "main:olga", cwd=tree, check=False)
    git_refused(result, f"Permission to {world.pub} denied to {world.olga.name}.")
    assert ls_remote(gw, world.olga, world.pub) == world.head[world.pub]


def test_unknown_command(gw, world):
    result = gw.ssh(world.alice, "frobnicate")
    assert_one_error(result, "Unknown command: frobnicate", hint=hint_line(gw))
    assert result.stderr.splitlines()[1:] == [hint_line(gw)]


def test_archive_of_unreadable_repository(gw, world, tmp_path):
    result = subprocess.run(
        ["git", "archive", f"--remote={gw.url(world.hidden)}", "HEAD"],
        env={**gw.env, "GIT_SSH_COMMAND": " ".join(gw.ssh_command(world.alice.key))},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and result.stdout == ""
    assert f"ERROR: Repository not found: {world.hidden}" in result.stderr.splitlines()


# --- 3. bad input over ssh exec ------------------------------------------------------

PWNED = f"/tmp/pwned-{uuid.uuid4().hex}"

# (command template, exact first line or None, unknown-command hint allowed)
# {repo} is a repository the caller can read and write: a command that slipped through
# would be served.
BAD_COMMANDS = [
    ("git-upload-pack '{repo}.git", "Invalid command: unbalanced quotes", False),
    ("git-upload-pack '{repo}.git'\ntouch " + PWNED, None, False),
    ("git-upload-pack '{repo}.git'\rtouch " + PWNED, None, False),
    ("git-upload-pack '{repo}.git' extra", None, False),
    ("git upload-pack '{repo}.git' extra", None, False),
    ("git-upload-pack", None, False),
    ("git-upload-pack --upload-pack=touch\\ " + PWNED, None, False),
    ("git-upload-pack '--upload-pack=touch " + PWNED + "' '{repo}.git'", None, False),
    ("git-receive-pack --receive-pack='touch " + PWNED + "'", None, False),
    ("git-upload-pack -h", None, False),
    ("git-upload-pack --help", None, False),
    ("git-upload-pack ../../etc", None, False),
    ("git-upload-pack /etc/passwd", "Repository not found: etc/passwd", False),
    ("git-upload-pack '{ws}/../{name}.git'", None, False),
    ("git-upload-pack '{ws}/{name}.git/../../..'", None, False),
    ("git-upload-pack '../{ws}/{name}.git'", None, False),
    ("git-receive-pack '.hidden/x.git'", None, False),
    ("git-receive-pack '{ws}/.hidden.git'", None, False),
    ("git-upload-pack '{ws}/-x.git'", None, False),
    ("git-upload-pack '-{ws}/x.git'", None, False),
    ("git-upload-pack '{repo}.git'; touch " + PWNED, None, False),
    ("git-upload-pack '{repo}.git;touch " + PWNED + "'", None, False),
    ("git-upload-pack '{repo}.git' | touch " + PWNED, None, False),
    ("git-upload-pack '{repo}.git' && touch " + PWNED, None, False),
    ('git-upload-pack "$(touch ' + PWNED + ')"', None, False),
    ("git-upload-pack '{repo}$(touch " + PWNED + ").git'", None, False),
    ("git-upload-pack `touch " + PWNED + "`", None, False),
    ("touch " + PWNED, "Unknown command: touch", True),
    ("sh -c 'touch " + PWNED + "'", "Unknown command: sh", True),
    ("git‐upload‐pack '{repo}.git'", "Unknown command: git‐upload‐pack", True),  # U+2010
    ("git-upload-pack '{repo}\u2024git'", None, False),  # one-dot leader instead of '.'
    ("git-upload-pack '{repo}" + "a" * 9990 + ".git'", None, False),
    ("help; touch " + PWNED, None, True),
]


BAD_IDS = [
    "unbalanced-quote",
    "newline",
    "carriage-return",
    "extra-arg",
    "extra-arg-spaced-verb",
    "no-path",
    "upload-pack-option",
    "upload-pack-option-then-path",
    "receive-pack-option",
    "dash-h",
    "dash-dash-help",
    "dotdot",
    "absolute-path",
    "dotdot-in-middle",
    "dotdot-after-name",
    "dotdot-first",
    "dot-workspace",
    "dot-name",
    "dash-name",
    "dash-workspace",
    "semicolon",
    "semicolon-in-quotes",
    "pipe",
    "and-and",
    "command-substitution",
    "command-substitution-in-path",
    "backticks",
    "touch",
    "sh-c",
    "unicode-hyphen-verb",
    "unicode-dot-path",
    "10k-chars",
    "help-semicolon",
]
assert len(BAD_IDS) == len(BAD_COMMANDS)


@pytest.mark.parametrize("template,first,hinted", BAD_COMMANDS, ids=BAD_IDS)
def test_bad_input_is_refused_and_changes_nothing(gw, world, template, first, hinted):
    user, repo = world.alice, world.code
    ws, name = repo.split("/")
    command = template.replace("{repo}", repo).replace("{ws}", ws).replace("{name}", name)
    before = disk_snapshot(gw.data / "repos")
    top_before = sorted(p.name for p in gw.data.iterdir())
    offset = len(gw.server_log())
    result = gw.ssh(user, command, input=b"0000")
    assert_one_error(result, first, hint=hint_line(gw) if hinted else None)
    assert not os.path.exists(PWNED)
    assert disk_snapshot(gw.data / "repos") == before
    assert sorted(p.name for p in gw.data.iterdir()) == top_before
    logged = log_tail(gw, offset)
    assert "Traceback" not in logged and "session failed" not in logged, logged


def test_error_lines_echo_no_control_characters(gw, world):
    """What the gateway echoes back of a bad path is one printable line."""
    result = gw.ssh(world.alice, "git-upload-pack '\x1b[31mred\x1b[0m/x.git'")
    assert_one_error(result)
    assert "\x1b" not in result.stderr


async def _nul_and_invalid_utf8(gw: Gateway, key: Path, repo: str) -> dict:
    seen = {}
    async with connect(gw, key) as conn:
        # No stdin is sent: the channel may be closed (refused) before it could be written.
        r = await conn.run(f"git-upload-pack '{repo}.git'\x00--upload-pack=touch {PWNED}")
        seen["nul"] = (r.exit_status, r.stdout, r.stderr)
        r = await conn.run("git-upload-pack a\x00b")
        seen["nul2"] = (r.exit_status, r.stdout, r.stderr)
        try:
            r = await conn.run(b"git-upload-pack '" + repo.encode() + b"\xff.git'")
            seen["utf8"] = (r.exit_status, r.stdout, r.stderr)
        except asyncssh.ChannelOpenError as exc:
            seen["utf8"] = ("refused", str(exc))
        # The same connection still serves a good command afterwards.
        r = await conn.run("whoami")
        seen["after"] = (r.exit_status, r.stdout, r.stderr)
    return seen


def test_nul_and_invalid_utf8_in_command(gw, world):
    offset = len(gw.server_log())
    before = disk_snapshot(gw.data / "repos")
    seen = async_run(_nul_and_invalid_utf8(gw, world.alice.key, world.code))
    for case in ("nul", "nul2"):
        status, out, err = seen[case]
        assert status not in (0, None), seen
        assert out == "" and err.startswith("ERROR: ") and err.count("\n") == 1, seen
        assert "\x00" not in err
    # Invalid UTF-8: one ERROR line, as for any bad command (asyncssh alone would only
    # refuse the channel request, which ssh shows as "exec request failed").
    status, out, err = seen["utf8"]
    assert status not in (0, None) and out == "", seen
    assert err == "ERROR: Invalid command: not valid UTF-8\n", seen
    assert seen["after"] == (0, world.alice.name + "\n", ""), seen
    assert not os.path.exists(PWNED)
    assert disk_snapshot(gw.data / "repos") == before
    assert "Traceback" not in log_tail(gw, offset)
    assert gw.ssh(world.rita, "whoami").stdout == world.rita.name + "\n"


# --- 4. symlinks out of the repositories root ----------------------------------------


def _outside_repo(gw: Gateway, where: Path) -> tuple[Path, str]:
    """A bare repository outside the data dir, with a commit whose content is secret."""
    bare = where / "outside.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True, env=gw.env)
    tree = new_tree(gw, where / "outside-tree", "SECRET outside the root")
    local_git("push", "-q", str(bare), "main:main", cwd=tree, env=gw.env)
    return bare, local_git("rev-parse", "HEAD", cwd=tree).strip()


def test_symlinked_repository_pointing_outside_is_not_served(gw, world, tmp_path):
    bare, secret = _outside_repo(gw, tmp_path)
    path = gw.repo(world.ws, "evil")
    target = gw.repo_dir(path)
    subprocess.run(["rm", "-rf", str(target)], check=True)
    target.symlink_to(bare)
    try:
        _symlinked_repository_checks(gw, world, tmp_path, path, bare, secret)
    finally:  # leave the shared data dir without a link out of it
        target.unlink()
        gw.cli("repo", "remove", path)


def _symlinked_repository_checks(gw, world, tmp_path, path, bare, secret):
    for user in (world.alice, world.adam):
        result = gw.git(user, "clone", gw.url(path), str(tmp_path / f"c-{user.name}"), check=False)
        git_refused(result, f"Repository not found: {path}")
        assert secret not in result.stdout + result.stderr
        assert not (tmp_path / f"c-{user.name}").exists()
    ls = gw.git(world.alice, "ls-remote", gw.url(path), check=False)
    assert ls.returncode != 0 and secret not in ls.stdout
    # A push does not write through the link either.
    tree = new_tree(gw, tmp_path / "t", "through the link")
    push = gw.git(world.alice, "push", gw.url(path), "main:pushed", cwd=tree, check=False)
    git_refused(push, f"Repository not found: {path}")
    refs = local_git("for-each-ref", "--format=%(refname)", cwd=bare, env=gw.env).split()
    assert refs == ["refs/heads/main"]


def test_symlinked_workspace_directory_pointing_outside_is_not_served(gw, world, tmp_path):
    ws = gw.workspace((world.alice, "write"))
    path = gw.repo(ws, "r")
    bare, secret = _outside_repo(gw, tmp_path)
    ws_dir = gw.data / "repos" / ws
    outside_ws = tmp_path / "outside-ws"
    outside_ws.mkdir()
    subprocess.run(["rm", "-rf", str(ws_dir)], check=True)
    bare.rename(outside_ws / "r.git")
    ws_dir.symlink_to(outside_ws)
    try:
        result = gw.git(world.alice, "ls-remote", gw.url(path), check=False)
        git_refused(result, f"Repository not found: {path}")
        assert secret not in result.stdout
    finally:
        ws_dir.unlink()
        gw.cli("repo", "remove", path)


# --- 5. SSH level --------------------------------------------------------------------


def test_password_and_keyboard_interactive_are_not_offered(gw, world):
    result = gw.ssh(
        world.alice,
        "whoami",
        extra=(
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
            "-o",
            "PubkeyAuthentication=no",
        ),
    )
    assert result.returncode == 255 and result.stdout == ""
    assert "Permission denied (publickey)." in result.stderr, result.stderr

    async def try_password():
        for kw in ({"password": world.alice.name}, {"kbdint_auth": True, "password": "x"}):
            try:
                async with connect(gw, None, **kw):
                    return "logged in"
            except asyncssh.PermissionDenied:
                pass
        return "denied"

    assert async_run(try_password()) == "denied"


def test_unknown_key_and_wrong_login_name(gw, world, tmp_path):
    stranger = make_key(tmp_path, "stranger")
    result = gw.ssh(stranger, "whoami")
    assert result.returncode == 255 and result.stdout == ""
    assert "Permission denied (publickey)." in result.stderr
    for login in ("root", world.alice.name, "GIT"):
        result = gw.ssh(world.alice, "whoami", login=login)
        assert result.returncode == 255 and result.stdout == "", (login, result)
        assert "Permission denied (publickey)." in result.stderr, (login, result.stderr)


def test_disabled_account_cannot_log_in(gw, world):
    user = gw.user()
    assert gw.ssh(user, "whoami").stdout == user.name + "\n"
    gw.cli("account", "disable", user.name)
    result = gw.ssh(user, "whoami")
    assert result.returncode == 255 and "Permission denied (publickey)." in result.stderr


def test_local_port_forwarding_is_refused(gw, world):
    listen = socket.socket()
    listen.bind(("127.0.0.1", 0))
    port2 = listen.getsockname()[1]
    listen.close()
    proc = subprocess.Popen(
        [
            *ssh_base(gw, "INFO"),
            "-i",
            str(world.alice.key),
            "-N",
            "-L",
            f"127.0.0.1:{port2}:127.0.0.1:{gw.port}",
            "git@127.0.0.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gw.env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port2), timeout=5)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.1)
        with conn:
            conn.settimeout(10)
            try:
                data = conn.recv(100)
            except ConnectionResetError:
                data = b""
        # Forwarded, this would read the gateway's own "SSH-2.0-" banner.
        assert data == b"", data
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # seen once on a loaded machine
            proc.kill()
            _, err = proc.communicate()
    assert "administratively prohibited" in err.decode() or "open failed" in err.decode(), err

    async def direct():
        async with connect(gw, world.alice.key) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", gw.port)
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_unix_connection("/run/systemd/private")
            return (await conn.run("whoami")).stdout

    assert async_run(direct()) == world.alice.name + "\n"


def test_remote_port_forwarding_is_refused(gw, world):
    result = run(
        [
            *ssh_base(gw),
            "-i",
            str(world.alice.key),
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"127.0.0.1:0:127.0.0.1:{gw.port}",
            "git@127.0.0.1",
            "whoami",
        ],
        gw,
    )
    assert result.returncode == 255 and world.alice.name not in result.stdout, result
    assert "remote port forwarding failed" in result.stderr, result.stderr

    async def remote():
        async with connect(gw, world.alice.key) as conn:
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", gw.port)
            with pytest.raises(asyncssh.ChannelListenError):
                await conn.forward_remote_path("/tmp/gateway-test-" + uuid.uuid4().hex, "/dev/null")

    async_run(remote())


def test_agent_and_x11_forwarding_do_not_reach_the_session(gw, world, tmp_path):
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**gw.env, "SSH_AUTH_SOCK": str(sock), "DISPLAY": ":0"}
        result = run(
            [*ssh_base(gw, "DEBUG"), "-i", str(world.alice.key), "-A", "-X", "git@127.0.0.1"],
            gw,
            env=env,
        )
    finally:
        agent.terminate()
        agent.wait(10)
    assert greeting_line(world.alice) in result.stdout.splitlines(), result
    assert "Requesting authentication agent forwarding" in result.stderr  # it was asked for
    # ... and the server never opened an agent channel back to the client.
    assert "ctype auth-agent" not in result.stderr, result.stderr
    assert "ctype x11" not in result.stderr, result.stderr

    # An explicit X11 request (with a cookie, so the client does send it) is refused.
    xauth = tmp_path / "Xauthority"
    made = subprocess.run(
        ["xauth", "-f", str(xauth), "add", "127.0.0.1:0", ".", "00112233445566778899aabbccddeeff"],
        capture_output=True,
    )
    if made.returncode != 0:
        return

    async def x11():
        async with connect(gw, world.alice.key) as conn:
            with pytest.raises(asyncssh.ChannelOpenError, match="X11 forwarding request failed"):
                await conn.run(
                    "whoami",
                    x11_forwarding=True,
                    x11_display="127.0.0.1:0",
                    x11_auth_path=str(xauth),
                )
            return (await conn.run("whoami")).stdout

    assert async_run(x11()) == world.alice.name + "\n"


def test_sftp_and_scp_are_refused(gw, world, tmp_path):
    common = [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
        str(world.alice.key),
        "-P",
        str(gw.port),
    ]
    result = run(["sftp", *common, "git@127.0.0.1"], gw, input=b"ls\nget /etc/passwd\n")
    assert result.returncode != 0 and "passwd" not in result.stdout, result
    assert "subsystem request failed" in result.stderr or "ERROR:" in result.stderr, result
    for mode in ([], ["-O"]):  # SFTP-based and the legacy scp protocol
        dest = tmp_path / f"passwd{len(mode)}"
        result = run(["scp", *mode, *common, "git@127.0.0.1:/etc/passwd", str(dest)], gw)
        assert result.returncode != 0 and not dest.exists(), result
        assert_no_traceback(result.stderr)
    up = run(["scp", "-O", *common, str(world.alice.pub), f"git@127.0.0.1:{PWNED}"], gw)
    assert up.returncode != 0 and not os.path.exists(PWNED)

    async def subsystem():
        async with connect(gw, world.alice.key) as conn:
            with pytest.raises((asyncssh.ChannelOpenError, asyncssh.SFTPError)):
                await conn.start_sftp_client()

    async_run(subsystem())


def _offer_keys(gw: Gateway, keys: list[Path]) -> subprocess.CompletedProcess:
    argv = [*ssh_base(gw, "INFO")]
    for key in keys:
        argv += ["-i", str(key)]
    return run([*argv, "git@127.0.0.1", "whoami"], gw)


@pytest.fixture(scope="module")
def stranger_keys(tmp_path_factory) -> list[Path]:
    where = tmp_path_factory.mktemp("strangers")
    return [make_key(where, f"k{i}") for i in range(8)]


@pytest.mark.parametrize("unknown,gets_in", [(2, True), (5, True), (6, False), (7, False)])
def test_at_most_six_authentication_attempts(gw, world, stranger_keys, unknown, gets_in):
    """OpenSSH offers the keys in order: the unknown ones, then alice's. Every refused
    offer counts; after 6 the connection is dropped before alice's key is tried."""
    result = _offer_keys(gw, [*stranger_keys[:unknown], world.alice.key])
    if gets_in:
        assert (result.returncode, result.stdout) == (0, world.alice.name + "\n"), result
    else:
        assert result.returncode == 255 and result.stdout == "", result
        assert "Too many authentication failures" in result.stderr, result.stderr


def test_login_timeout(gw, tmp_path):
    """A connection that never authenticates is dropped after `login_timeout`."""
    other = Gateway(tmp_path / "other")
    other.cli("init")
    (other.data / "gateway.toml").write_text("login_timeout = 2\n")
    other.start()
    try:
        with socket.create_connection(("127.0.0.1", other.port), timeout=15) as s:
            s.sendall(b"SSH-2.0-OpenSSH_9.2 idle\r\n")
            started = time.monotonic()
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
            took = time.monotonic() - started
        assert took < 10, took
        # Still serving afterwards.
        with socket.create_connection(("127.0.0.1", other.port), timeout=5) as s:
            assert s.recv(8).startswith(b"SSH-2.0")
    finally:
        other.stop()


# --- 6. offered key vs signing key (CVE-2023-43809) ----------------------------------


def test_identity_comes_from_the_signing_key_not_the_probed_one(gw, world, monkeypatch):
    attacker, victim = world.olga, world.carol
    victim_public = asyncssh.read_public_key(str(victim.pub))
    method = probe_then_sign(victim_public, claim_victim_when_signing=False)
    monkeypatch.setitem(asyncssh.auth._client_auth_handlers, b"publickey", method)

    async def attack():
        async with connect(gw, attacker.key, preferred_auth="publickey") as conn:
            who = await conn.run("whoami")
            peek = await conn.run(f"git-upload-pack '{world.hidden}.git'")
            greet = await conn.run()
            return who, peek, greet

    who, peek, greet = async_run(attack())
    # The probe for the victim's key was answered (the key is registered) ...
    assert method.probes_ok == [victim_public.public_data]
    # ... and still the session is the attacker's.
    assert (who.exit_status, who.stdout) == (0, attacker.name + "\n")
    assert peek.exit_status != 0 and peek.stdout == ""
    assert peek.stderr == f"ERROR: Repository not found: {world.hidden}\n"
    assert greet.stdout.startswith(f"Hi {attacker.name}! ")
    assert victim.name not in greet.stdout


def test_signature_must_match_the_claimed_key(gw, world, monkeypatch):
    """Probe the victim's key, then send a request claiming it, signed by another key."""
    attacker, victim = world.olga, world.carol
    victim_public = asyncssh.read_public_key(str(victim.pub))
    method = probe_then_sign(victim_public, claim_victim_when_signing=True)
    monkeypatch.setitem(asyncssh.auth._client_auth_handlers, b"publickey", method)

    async def attack():
        try:
            async with connect(gw, attacker.key, preferred_auth="publickey") as conn:
                return (await conn.run("whoami")).stdout
        except asyncssh.PermissionDenied:
            return "denied"
        except asyncssh.DisconnectError as exc:
            return f"disconnected: {exc}"

    outcome = async_run(attack())
    assert method.probes_ok == [victim_public.public_data]
    assert outcome == "denied" or outcome.startswith("disconnected"), outcome
    assert victim.name not in outcome


# --- 7. robustness -------------------------------------------------------------------


def test_server_keeps_serving_during_and_after_bad_input(gw, world):
    """An upload-pack of another user stays open while bad input arrives; it then
    completes, and a fresh ls-remote works."""
    offset = len(gw.server_log())
    waiting = subprocess.Popen(
        [
            *gw.ssh_command(world.rita.key),
            "-p",
            str(gw.port),
            "git@127.0.0.1",
            f"git-upload-pack '{world.code}.git'",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=gw.env,
    )
    try:
        for template, _, _ in BAD_COMMANDS[:12]:
            command = template.replace("{repo}", world.code).replace("{ws}", world.ws)
            result = gw.ssh(world.alice, command.replace("{name}", "code"))
            assert result.returncode not in (0, 255)
        assert waiting.poll() is None  # still connected, waiting for our wants
        out, err = waiting.communicate(b"0000", timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert world.head[world.code]["refs/heads/main"].encode() in out
    assert ls_remote(gw, world.olga, world.pub) == world.head[world.pub]
    assert "Traceback" not in log_tail(gw, offset)


def test_client_cut_off_mid_clone(gw, world, tmp_path):
    ws = gw.workspace((world.alice, "write"))
    path = gw.repo(ws, "big")
    tree = new_tree(gw, tmp_path / "big-tree", "big")
    (tree / "random.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    local_git("add", "random.bin", cwd=tree, env=gw.env)
    local_git("commit", "-q", "-m", "random", cwd=tree, env=gw.env)
    # Set up on disk with C git: the gateway is not what is under test here.
    local_git("push", "-q", str(gw.repo_dir(path)), "main:main", cwd=tree, env=gw.env)
    offset = len(gw.server_log())
    env = {**gw.env, "GIT_SSH_COMMAND": " ".join(gw.ssh_command(world.alice.key))}
    cut_mid_session = 0
    for attempt in range(3):
        clone = subprocess.Popen(
            ["git", "clone", gw.url(path), str(tmp_path / f"c{attempt}")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while (
            not workers_for(gw.repo_dir(path))
            and clone.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        time.sleep(0.05 * attempt)
        cut_mid_session += clone.poll() is None and bool(workers_for(gw.repo_dir(path)))
        os.killpg(clone.pid, signal.SIGKILL)
        clone.wait()
    assert cut_mid_session >= 1  # at least one clone was cut while its worker ran
    # The workers of the cut sessions go away; nothing is left running.
    deadline = time.monotonic() + 15
    while workers_for(gw.repo_dir(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers_for(gw.repo_dir(path)) == []
    # Everyone is still served, including a full clone of the same repository.
    assert ls_remote(gw, world.olga, world.pub) == world.head[world.pub]
    gw.git(world.alice, "clone", gw.url(path), str(tmp_path / "full"))
    assert (tmp_path / "full" / "random.bin").stat().st_size == 6 * 1024 * 1024
    logged = log_tail(gw, offset)
    assert "Traceback" not in logged and "session failed" not in logged, logged


def test_internal_error_in_one_session_is_one_short_line(gw, world, tmp_path):
    """A broken repository: that session ends with a short ERROR line, no traceback to
    the user; others carry on."""
    ws = gw.workspace((world.alice, "write"))
    path = gw.repo(ws, "broken")
    tree = new_tree(gw, tmp_path / "t", "soon broken")
    gw.git(world.alice, "push", gw.url(path), "main:main", cwd=tree)
    # (A ref of garbage is skipped, as C git skips it; an unknown repository format is not.)
    (gw.repo_dir(path) / "config").write_text("[core]\n\trepositoryformatversion = 9\n")
    result = gw.git(world.alice, "clone", gw.url(path), str(tmp_path / "c"), check=False)
    assert result.returncode != 0
    assert_no_traceback(result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and len(errors[0]) < 100, result.stderr
    assert gw.ssh(world.alice, "whoami").stdout == world.alice.name + "\n"


def test_server_log_has_no_unexpected_traceback(gw, world):
    """Over this module, every traceback in the operator's log belongs to a logged
    internal error, never to a bare crash."""
    logged = log_tail(gw, world.log_offset)
    lines = logged.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            context = "\n".join(lines[max(0, i - 3) : i])
            assert "session failed" in context or "worker failed" in context, context
    assert gw.proc.poll() is None
