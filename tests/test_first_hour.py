"""Issue 22, the operator's and the CLI's first hour: the README's Walkthrough as written,
`make serve`, the keydir in the checkout, operator messages, SSH typos, the auth log,
and the host name that messages users copy say."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from testkit import GATEWAY, Gateway, make_key, unique

ROOT = Path(__file__).resolve().parents[1]


def run(argv, cwd=None, env=None, input=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout
    )


def one_error(result: subprocess.CompletedProcess, status: int = 1) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    return lines[0]


@pytest.fixture
def private_gateway(tmp_path):
    """A server of its own, for tests that need fixed names or their own settings."""
    started = []

    def start(listen_host: str = "127.0.0.1", env: dict | None = None) -> Gateway:
        gateway = Gateway(tmp_path / f"gw{len(started)}")
        gateway.env.update(env or {})
        gateway.listen_host = listen_host
        gateway.cli("init")
        if listen_host != "127.0.0.1":  # Gateway.start listens on loopback; this one not
            with open(gateway.root / "serve.log", "ab") as serve_log:
                gateway.proc = subprocess.Popen(
                    [
                        *GATEWAY,
                        "--data-dir",
                        str(gateway.data),
                        "serve",
                        "--listen",
                        f"{listen_host}:{gateway.port}",
                    ],
                    stdout=serve_log,
                    stderr=subprocess.STDOUT,
                    env=gateway.env,
                    cwd=gateway.root,
                )
            deadline = time.monotonic() + 30
            while "gateway listening on" not in gateway.server_log():
                assert gateway.proc.poll() is None and time.monotonic() < deadline, (
                    gateway.server_log()
                )
                time.sleep(0.1)
        else:
            gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


# --- 6. the Walkthrough, as written ----------------------------------------------------


def walkthrough_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_the_walkthrough_block_is_found():
    commands = walkthrough_commands()
    assert commands[0].startswith(".venv/bin/gateway account add alice")
    assert any(c.startswith("git clone ") for c in commands)
    assert any(c.startswith("git push") for c in commands)


@pytest.mark.parametrize("default_branch", [None, "main", "trunk"])
def test_walkthrough_runs_as_written(private_gateway, tmp_path, default_branch):
    """The README's block, line for line, by bash in a directory that has `.venv/bin/
    gateway`, with a HOME that has `~/.ssh/id_ed25519.pub`; only the port is the test
    server's. git's own default branch (master when unset) is what the empty clone gets."""
    gw = private_gateway()
    home, project = tmp_path / "home", tmp_path / "project"
    (home / ".ssh").mkdir(parents=True)
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "gateway").write_text(
        "#!/bin/sh\nexec " + " ".join(GATEWAY) + ' "$@"\n'
    )
    (project / ".venv" / "bin" / "gateway").chmod(0o755)
    make_key(home / ".ssh", "id_ed25519")
    # ssh reads ~/.ssh from the passwd entry, not $HOME: a shim on PATH points it there.
    shims = tmp_path / "bin"
    shims.mkdir()
    config = home / ".ssh" / "config"
    config.write_text(
        f"Host 127.0.0.1\n  IdentityFile {home}/.ssh/id_ed25519\n"
        "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
    )
    (shims / "ssh").write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
    (shims / "ssh").chmod(0o755)
    gitconfig = "[user]\n\tname = Alice\n\temail = alice@example.com\n[protocol]\n\tversion = 0\n"
    if default_branch:
        gitconfig += f"[init]\n\tdefaultBranch = {default_branch}\n"
    (home / ".gitconfig").write_text(gitconfig)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("GIT_", "GATEWAY_"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{shims}:{env['PATH']}",
        GATEWAY_DATA_DIR=str(gw.data),
        GIT_CONFIG_NOSYSTEM="1",
        **({"GATEWAY_DATABASE_URL": gw.database_url} if gw.database_url else {}),
    )
    commands = walkthrough_commands()
    script = "set -e -o pipefail\n" + "\n".join(
        f"echo '+ {i}'\n" + c.replace("2222", str(gw.port)) for i, c in enumerate(commands)
    )
    result = run(["bash", "-c", script], cwd=project, env=env)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "README.md" in result.stdout.splitlines()  # what `git archive | tar t` listed
    clone = project / "widgets"
    status = run(["git", "status"], cwd=clone, env=env)
    assert (
        status.returncode == 0 and "Your branch is up to date with 'origin/main'." in status.stdout
    ), status.stdout
    assert "gone" not in status.stdout and "nothing to commit" in status.stdout
    pull = run(["git", "pull"], cwd=clone, env=env)
    assert pull.returncode == 0 and "Already up to date." in pull.stdout, pull.stderr
    # The server has the branch its HEAD names, and only that one.
    served = run(["git", "ls-remote", "origin"], cwd=clone, env=env).stdout.split()
    assert served[1::2] == ["HEAD", "refs/heads/main"], served
    assert (
        run(["git", "rev-parse", "--abbrev-ref", "@{upstream}"], cwd=clone, env=env).stdout.strip()
        == "origin/main"
    )


# --- 12. make serve, host key fingerprints ---------------------------------------------


def test_make_serve_does_not_install_the_test_extras(tmp_path):
    venv = tmp_path / "venv"  # absent: make would build it, and -n shows how
    serve = run(["make", "-n", "serve", f"VENV={venv}"], cwd=ROOT)
    assert serve.returncode == 0, serve.stderr
    assert "pip install --quiet -e ." in serve.stdout and "[test]" not in serve.stdout
    test = run(["make", "-n", "test", f"VENV={venv}"], cwd=ROOT)
    assert "pip install --quiet -e '.[test]'" in test.stdout
    # An installed runtime is not installed again for serve, nor the extras.
    venv.mkdir()
    (venv / ".installed-runtime").touch()
    again = run(["make", "-n", "serve", f"VENV={venv}"], cwd=ROOT)
    assert "pip" not in again.stdout and "serve --listen 127.0.0.1:2222" in again.stdout


def test_serve_prints_host_key_fingerprints_on_first_start(tmp_path):
    data = tmp_path / "var"
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    number = port.getsockname()[1]
    port.close()

    def serve_output() -> str:
        log = tmp_path / "serve.out"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*GATEWAY, "--data-dir", str(data), "serve", "--listen", f"127.0.0.1:{number}"],
                stdout=out,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
            try:
                deadline = time.monotonic() + 30
                while "gateway listening on" not in log.read_text():
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.1)
            finally:
                proc.terminate()
                proc.wait(15)
        return log.read_text()

    first = serve_output()
    printed = re.findall(r"^Host key: (\S+) (SHA256:\S+)$", first, re.M)
    # What ssh-keygen says of the public halves is what the first ssh will show.
    expected = []
    for pub in sorted((data / "host_keys").glob("*.pub")):
        line = run(["ssh-keygen", "-lf", str(pub)]).stdout.split()
        expected.append(line[1])
    assert sorted(fp for _, fp in printed) == sorted(expected) and len(expected) == 3
    assert "ssh-ed25519" in [algorithm for algorithm, _ in printed]
    assert "Host key:" not in serve_output()  # the second start made no keys


# --- 13. the keydir in the project's checkout ------------------------------------------


def test_keys_dropped_into_keys_are_not_untracked_files(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    dropped = [ROOT / "keys" / f"{unique('k')}.pub", ROOT / "keys" / unique("d") / "laptop.pub"]
    try:
        for path in dropped:
            path.parent.mkdir(exist_ok=True)
            path.write_text("ssh-ed25519 AAAA test\n")
        status = run(["git", "status", "--porcelain", "--untracked-files=all", "keys"], cwd=ROOT)
        assert status.returncode == 0 and status.stdout == "", status.stdout
        tracked = run(["git", "ls-files", "keys"], cwd=ROOT).stdout.split()
        assert "keys/README.md" in tracked and "keys/.gitignore" in tracked
    finally:
        for path in dropped:
            path.unlink()
        dropped[1].parent.rmdir()


# --- 8. operator messages ----------------------------------------------------------------


def test_operator_messages_say_what_happened(gw, tmp_path):
    missing = tmp_path / "nope.pub"
    line = one_error(gw.cli("account", "add", unique("u"), "--key", str(missing), check=False))
    assert line == f"ERROR: Cannot read key file: no such file: {missing}"
    line = one_error(gw.cli("key", "add", gw.user().name, str(tmp_path), check=False))
    assert "Is a directory" in line and "Error" not in line.split(":", 1)[1]

    private = one_error(
        gw.cli("key", "add", gw.user().name, str(make_key(tmp_path, "p")), check=False)
    )
    assert "This is a private key" in private and ".pub" in private
    assert "BEGIN" not in private and "OPENSSH" not in private

    ws = gw.workspace()
    gw.repo(ws, "Widgets")
    line = one_error(gw.cli("repo", "add", f"{ws}/widgets", check=False))
    assert line == f"ERROR: Repository already exists: {ws}/Widgets"
    line = one_error(gw.cli("repo", "add", f"{ws}/new.git", check=False))
    assert "ends in '.git'" in line and "use 'new'" in line
    assert not (gw.data / "repos" / ws / "new.git.git").exists()

    owner = gw.user()
    line = one_error(gw.cli("key", "add", gw.user().name, f"{owner.key}.pub", check=False))
    assert line.endswith(f"is already in use: it logs in to account {owner.name}"), line
    repo = gw.repo(ws)
    deploy = make_key(tmp_path, "deploy")
    gw.cli("access-key", "add", repo, f"{deploy}.pub")
    line = one_error(gw.cli("key", "add", owner.name, f"{deploy}.pub", check=False))
    assert line.endswith(f"is already in use: it is the access key of repository {repo}"), line
    line = one_error(gw.cli("access-key", "add", repo, f"{owner.key}.pub", check=False))
    assert line.endswith(f"it logs in to account {owner.name}"), line

    # What does not exist says how to make it, or where to look.
    ghost_ws, ghost = unique("nows"), unique("noacct")
    line = one_error(gw.cli("repo", "add", f"{ghost_ws}/widgets", check=False))
    assert (
        line == f"ERROR: No such workspace: {ghost_ws} (create it with: gateway workspace "
        f"add {ghost_ws})"
    )
    line = one_error(gw.cli("member", "add", ws, ghost, check=False))
    assert line == f"ERROR: No such account: {ghost} (create it with: gateway account add {ghost})"
    line = one_error(gw.cli("access-key", "add", f"{ws}/nothing", f"{deploy}.pub", check=False))
    assert line == f"ERROR: No such repository: {ws}/nothing ('gateway repo list' shows them)"
    fingerprint = json.loads(gw.cli("access-key", "list", "--json").stdout)
    fingerprint = next(k["fingerprint"] for k in fingerprint if k["repository"] == repo)
    line = one_error(gw.cli("key", "remove", fingerprint, check=False))
    assert line == f"ERROR: {fingerprint} is an access key: gateway access-key remove {fingerprint}"

    nobody = unique("nobody")
    for args in (("audit", "--account", nobody), ("audit", "--account", nobody, "--json")):
        line = one_error(gw.cli(*args, check=False))
        assert line.startswith(f"ERROR: No such account: {nobody}")
    # An account with no history yet is not "no such account".
    quiet = unique("quiet")
    gw.cli("account", "add", quiet)
    assert [
        e["action"] for e in json.loads(gw.cli("audit", "--account", quiet, "--json").stdout)
    ] == ["account.add"]


def test_keydir_conflict_with_an_access_key_says_where(gw, tmp_path):
    ws = gw.workspace()
    repo = gw.repo(ws)
    deploy = make_key(tmp_path, "deploy")
    gw.cli("access-key", "add", repo, f"{deploy}.pub")
    keydir = tmp_path / "keydir"
    keydir.mkdir()
    shutil.copy(f"{deploy}.pub", keydir / f"{unique('kd')}.pub")
    (keydir / f"{unique('gone')}.pub").symlink_to(tmp_path / "nowhere.pub")
    result = gw.cli("keys", "sync", "--keydir", str(keydir), check=False)
    assert result.returncode == 1
    assert f"it is the access key of repository {repo}" in result.stderr, result.stderr
    assert "cannot read: No such file or directory" in result.stderr, result.stderr
    assert "FileNotFoundError" not in result.stderr


# --- 9. SSH command typos -------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed,first_line",
    [
        (("recovery-code",), "Unknown command: recovery-code. Did you mean 'recovery-codes'?"),
        (("whoiam",), "Unknown command: whoiam. Did you mean 'whoami'?"),
        (("2sv", "enabel"), "Unknown command: 2sv enabel. Did you mean '2sv enable'? Usage: "),
        (
            ("recovery-codes", "regenrate"),
            "Unknown command: recovery-codes regenrate. Did you mean 'recovery-codes regenerate'?",
        ),
        (
            ("security-key", "lsit"),
            "Unknown command: security-key lsit. Did you mean 'security-key list'?",
        ),
        (
            ("workspace", "shwo", "acme"),
            "Unknown command: workspace shwo. Did you mean 'workspace show'?",
        ),
        (
            ("keys", "remvoe", "SHA256:x"),
            "Unknown command: keys remvoe. Did you mean 'keys remove'?",
        ),
    ],
)
def test_ssh_typos_get_a_suggestion(gw, typed, first_line):
    user = gw.user()
    result = gw.ssh(user, *typed)
    assert result.returncode not in (0, 255) and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"ERROR: {first_line}"), lines
    assert "Traceback" not in result.stderr


def test_ssh_nonsense_gets_no_suggestion(gw):
    result = gw.ssh(gw.user(), "frobnicate")
    assert result.stderr.splitlines()[0] == "ERROR: Unknown command: frobnicate"
    usage = gw.ssh(gw.user(), "2sv", "status", "extra")  # a real subcommand: just usage
    assert usage.stderr.splitlines()[0].startswith("ERROR: Usage: ssh ")


def test_adding_a_login_key_over_ssh_says_who_can(gw):
    user = gw.user()

    def listed() -> list[str]:  # the fingerprints `keys` lists (not their last use)
        return re.findall(r"SHA256:\S+", gw.ssh(user, "keys").stdout)

    before = listed()
    assert len(before) == 1
    result = gw.ssh(user, "keys", "add", "laptop", input="ssh-ed25519 AAAA x\n")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"ERROR: Login keys are added by an operator on the server (gateway key add "
        f"{user.name} FILE); over SSH you can list and remove them."
    ]
    assert listed() == before


def test_an_admin_previews_a_policy_over_ssh(gw):
    admin, member = gw.user(), gw.user()
    ws = gw.workspace((admin, "admin"), (member, "write"))
    result = gw.ssh(admin, "workspace", "require-2sv", ws, "on", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Members without two-step verification, who would lose")
    assert admin.name in lines[0] and member.name in lines[0]
    assert lines[1] == f"Dry run: {ws} stays at require-2sv=off."
    assert "require-2sv:  off" in gw.ssh(admin, "workspace", "show", ws).stdout
    refused = gw.ssh(member, "workspace", "require-2sv", ws, "on", "--dry-run")
    assert refused.stderr.splitlines() == [
        f'ERROR: Only admins of workspace "{ws}" can change its policy.'
    ]
    bad = gw.ssh(admin, "workspace", "require-2sv", ws, "on", "--dyr-run")
    assert bad.stderr.splitlines() == [
        "ERROR: Invalid arguments at '--dyr-run': expected --window MINUTES or --dry-run"
    ]


# --- 10. auth.failed says who and why ---------------------------------------------------


def auth_failures(gw: Gateway, offset: int) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            line for line in gw.server_log()[offset:].splitlines() if "event=auth.failed" in line
        ]
        if lines:
            return lines
        time.sleep(0.1)
    return []


def test_auth_failed_logs_user_name_and_reason(gw, tmp_path):
    user = gw.user()
    offset = len(gw.server_log())
    assert gw.ssh(user, "whoami", login="root").returncode == 255
    lines = auth_failures(gw, offset)
    assert lines and all("user=root" in ln and "reason=unknown-user" in ln for ln in lines), lines

    offset = len(gw.server_log())
    assert gw.ssh(make_key(tmp_path, "stranger"), "whoami").returncode == 255
    lines = auth_failures(gw, offset)
    assert lines and all("user=git" in ln and "reason=unknown-key" in ln for ln in lines), lines

    disabled = gw.user()
    gw.cli("account", "disable", disabled.name)
    offset = len(gw.server_log())
    assert gw.ssh(disabled, "whoami").returncode == 255
    lines = auth_failures(gw, offset)
    assert lines and all("reason=account-disabled" in ln for ln in lines), lines


def test_auth_failed_user_name_is_escaped(gw):
    """A user name is the client's text: it must not forge a log line or move a cursor."""
    user = gw.user()
    # asyncssh's client (SASLprep) will not send controls; the server escapes those too
    # (names.printable), and logfmt quotes what could pass for fields.
    hostile = 'ro" event=auth.ok account=admin'
    offset = len(gw.server_log())

    async def attempt():
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port=gw.port,
                username=hostile,
                known_hosts=None,
                agent_path=None,
                client_keys=[str(user.key)],
            ):
                return "in"
        except asyncssh.PermissionDenied:
            return "denied"

    assert asyncio.run(asyncio.wait_for(attempt(), 30)) == "denied"
    lines = auth_failures(gw, offset)
    assert lines and "reason=unknown-user" in lines[0]
    logged = gw.server_log()[offset:]
    assert 'user="ro\\" event=auth.ok account=admin"' in lines[0], lines[0]
    assert "event=auth.ok" not in logged.replace('\\" event=auth.ok', "")


# --- 3. the host name in messages users copy ---------------------------------------------


def machine_name() -> str:
    for name in (socket.getfqdn(), socket.gethostname()):
        if (
            name
            and name != "localhost"
            and not name.startswith("localhost.")
            and not name.startswith("127.")
        ):
            return name
    return "localhost"


def test_listening_on_every_address_messages_say_the_machine_name(private_gateway):
    name = machine_name()
    if name == "localhost":
        pytest.skip("this machine has no name but localhost")
    gw = private_gateway("0.0.0.0")
    user = gw.user()
    ws = gw.workspace((user, "admin"))
    # The server's own messages, over the real ssh.
    result = gw.ssh(user, "frobnicate")
    assert f"ssh -p {gw.port} git@{name} help" in result.stderr, result.stderr
    greeting = gw.ssh(user).stdout
    assert "localhost" not in greeting
    # The operator's CLI with the same listen setting (as the unit's GATEWAY_LISTEN).
    env_listen = {"GATEWAY_LISTEN": f"0.0.0.0:{gw.port}"}
    gw.env.update(env_listen)
    added = gw.cli("repo", "add", f"{ws}/widgets")
    assert f"Clone it with: git clone ssh://git@{name}:{gw.port}/{ws}/widgets.git" in added.stdout
    gw.git(user, "ls-remote", gw.url(f"{ws}/widgets"))  # and the gateway serves it
    check = gw.cli("config", "check")
    assert "WARNING" not in check.stdout
    assert f"# messages users copy say: ssh -p {gw.port} git@{name} ..." in check.stdout


@pytest.mark.parametrize(
    "listen,ssh_host,warns",
    [
        ("0.0.0.0:2222", "localhost", True),
        ("[::]:2222", "ip6-localhost", True),
        ("0.0.0.0:2222", "127.0.0.1", True),
        ("192.0.2.10:2222", "localhost.localdomain", True),
        ("0.0.0.0:2222", "git.example.com", False),
        ("127.0.0.1:2222", "localhost", False),
        ("127.0.0.1:2222", "", False),
    ],
)
def test_config_check_warns_of_a_loopback_host_on_a_public_listener(
    tmp_path, gw, listen, ssh_host, warns
):
    env = {**gw.env, "GATEWAY_LISTEN": listen, "GATEWAY_SSH_HOST": ssh_host}
    result = run([*GATEWAY, "--data-dir", str(tmp_path / "var"), "config", "check"], env=env)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stdout.splitlines() if line.startswith("# WARNING:")]
    assert bool(warning) == warns, result.stdout
    if warns:
        assert f"say {ssh_host!r}" in warning[0] and "set ssh_host" in warning[0]


def test_a_loopback_host_is_logged_at_start(private_gateway):
    gw = private_gateway("0.0.0.0", env={"GATEWAY_SSH_HOST": "localhost"})
    assert re.search(
        r"level=warning event=settings.warning problem=.*set ssh_host", gw.server_log()
    ), gw.server_log()


def test_machine_name_falls_back_past_loopback_names(monkeypatch):
    from gateway import config

    monkeypatch.setattr(config, "_machine_name", None)
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "build-7")
    assert config.machine_name() == "build-7"
    monkeypatch.setattr(config, "_machine_name", None)
    monkeypatch.setattr(socket, "getfqdn", lambda: "build-7.example.com")
    assert config.machine_name() == "build-7.example.com"
    monkeypatch.setattr(config, "_machine_name", None)
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost.localdomain")
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    assert config.machine_name() == "localhost"
    settings = config.Settings(listen="0.0.0.0:2222")
    assert settings.public_host == "localhost" and settings.loopback_host_warning()
    monkeypatch.setattr(config, "_machine_name", None)
