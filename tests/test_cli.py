"""The operator's command line end to end (SPEC §3, §8): the real `gateway` CLI run as a
subprocess against the data directory of a real `gateway serve`, checked the way an
operator checks it: exit status, one `ERROR: ` line on stderr (never a traceback), what
is on disk, and what users see over ssh right afterwards, without a server restart.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from testkit import GATEWAY, Gateway, User, fingerprint, local_git, make_key, unique

FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


# --- helpers --------------------------------------------------------------------------


def assert_clean(result: subprocess.CompletedProcess) -> None:
    """Never a traceback, never a raw control character echoed back to the terminal."""
    for stream in (result.stdout, result.stderr):
        assert "Traceback" not in stream, stream
        assert not [c for c in stream if ord(c) < 32 and c not in "\n\t"], repr(stream)


def ok(gw: Gateway, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    result = gw.cli(*args, input=input, check=False)
    assert_clean(result)
    assert result.returncode == 0, (
        f"gateway {' '.join(args)} -> {result.returncode}: {result.stderr}"
    )
    return result


def refused(
    gw: Gateway, *args: str, status: int = 1, input: str | None = None, match: str | None = None
) -> subprocess.CompletedProcess:
    """The command fails with `status` and exactly one `ERROR: ` line on stderr."""
    result = gw.cli(*args, input=input, check=False)
    assert_clean(result)
    assert result.returncode == status, (
        f"gateway {' '.join(map(repr, args))}: expected exit {status}, got {result.returncode}\n"
        f"stdout: {result.stdout}\nstderr: {result.stderr}"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), (args, result.stderr)
    if match is not None:
        assert match in lines[0], (args, lines[0])
    return result


def refused_all(gw: Gateway, commands: list[tuple[str, ...]], status: int = 1) -> None:
    """`refused` for many independent commands, run a few at a time; reports every miss."""

    def attempt(args):
        try:
            refused(gw, *args, status=status)
        except AssertionError as exc:
            return f"{args!r}: {str(exc).splitlines()[0]}"
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        misses = [m for m in pool.map(attempt, commands) if m]
    assert not misses, "\n".join(misses)


def as_json(result: subprocess.CompletedProcess):
    return json.loads(result.stdout)


def new_key(gw: Gateway, kind: str = "ed25519") -> Path:
    """A fresh key pair (not registered); returns the private key path."""
    return make_key(gw.keys_dir, unique("k"), kind)


def pub(key: Path) -> Path:
    return Path(str(key) + ".pub")


def greeting_line(account: str, title: str, fp: str) -> str:
    return f'Hi {account}! You\'ve authenticated with key "{title}" ({fp}).'


def assert_greets(
    gw: Gateway, key: Path | User, account: str, title: str | None = None, fp: str | None = None
) -> str:
    result = gw.ssh(key)
    assert result.returncode == 0, result.stderr
    if title is not None:
        assert greeting_line(account, title, fp) in result.stdout, result.stdout
    else:
        assert result.stdout.startswith(f"Hi {account}! "), result.stdout
    return result.stdout


def assert_login_refused(gw: Gateway, key: Path | User) -> None:
    result = gw.ssh(key)
    assert result.returncode != 0, result.stdout
    assert "Hi " not in result.stdout
    assert "Permission denied" in result.stderr, result.stderr


def whoami(gw: Gateway, key: Path | User) -> str:
    result = gw.ssh(key, "whoami")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def account_names(gw: Gateway) -> set[str]:
    return {a["name"] for a in as_json(ok(gw, "account", "list", "--json"))}


def key_fingerprints(gw: Gateway, account: str | None = None) -> list[str]:
    args = ["key", "list"] + ([account] if account else []) + ["--json"]
    return [k["fingerprint"] for k in as_json(ok(gw, *args))]


def tree(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def fresh_cli(
    gw: Gateway, cwd: Path, *args: str, data: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """The CLI on another data directory than the running server's."""
    argv = [*GATEWAY, *(["--data-dir", str(data)] if data is not None else []), *args]
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env or gw.env, cwd=cwd, timeout=120
    )
    assert_clean(result)
    return result


def audit(gw: Gateway, *args: str) -> list[dict]:
    return as_json(ok(gw, "audit", "--json", *args))


# --- 1. init --------------------------------------------------------------------------


def test_init_is_idempotent_and_prints_host_key_fingerprints(gw, tmp_path):
    data = tmp_path / "fresh"
    first = fresh_cli(gw, tmp_path, "init", data=data)
    assert first.returncode == 0, first.stderr
    printed = FINGERPRINT_RE.findall(first.stdout)
    assert len(printed) == 3, first.stdout
    for algorithm in ("ed25519", "ecdsa", "rsa"):
        assert re.search(rf"{algorithm}.*SHA256:", first.stdout, re.IGNORECASE), first.stdout

    # The printed fingerprints are those of the keys in DATA/host_keys/.
    host_keys = data / "host_keys"
    on_disk = {}
    for path in sorted(host_keys.iterdir()):
        if path.suffix == ".pub":
            continue
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path} is readable by others"
        line = subprocess.run(
            ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()
        on_disk[line[-1].strip("()")] = line[1]
    assert set(on_disk) == {"ED25519", "ECDSA", "RSA"}, on_disk
    assert set(on_disk.values()) == set(printed)

    master = data / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    master_bytes = master.read_bytes()
    assert len(master_bytes) >= 32
    # The SQLite file; on the PostgreSQL pass the database the environment names instead.
    assert (data / "gateway.db").is_file() == (gw.database_url is None)
    assert (data / "repos").is_dir()
    files_before = {p: p.read_bytes() for p in host_keys.iterdir()}

    # Again: same keys, same master key, same fingerprints, nothing regenerated.
    second = fresh_cli(gw, tmp_path, "init", data=data)
    assert second.returncode == 0, second.stderr
    assert FINGERPRINT_RE.findall(second.stdout) == printed
    assert master.read_bytes() == master_bytes
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    assert {p: p.read_bytes() for p in host_keys.iterdir()} == files_before

    # GATEWAY_DATA_DIR names the same data directory.
    env = {**gw.env, "GATEWAY_DATA_DIR": str(data)}
    third = fresh_cli(gw, tmp_path, "init", env=env)
    assert third.returncode == 0, third.stderr
    assert FINGERPRINT_RE.findall(third.stdout) == printed
    assert not (tmp_path / "var").exists()


def test_init_prints_the_host_keys_the_server_presents(gw):
    printed = set(FINGERPRINT_RE.findall(ok(gw, "init").stdout))
    scan = subprocess.run(
        ["ssh-keyscan", "-p", str(gw.port), "-t", "ed25519,ecdsa,rsa", "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    served = subprocess.run(
        ["ssh-keygen", "-lf", "-"], input=scan.stdout, capture_output=True, text=True, check=True
    ).stdout
    assert set(FINGERPRINT_RE.findall(served)) == printed
    assert len(printed) == 3


def test_commands_refuse_an_uninitialised_data_dir(gw, tmp_path):
    data = tmp_path / "nothing-here"
    result = fresh_cli(gw, tmp_path, "account", "add", "alice", data=data)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "init" in lines[0], result.stderr
    assert not data.exists()


# --- 2. accounts ----------------------------------------------------------------------


def test_account_add_list_show_json(gw):
    name = unique("acct")
    key = new_key(gw)
    added = ok(gw, "account", "add", name, "--email", f"{name}@example.com", "--key", str(pub(key)))
    assert name in added.stdout

    listed = [a for a in as_json(ok(gw, "account", "list", "--json")) if a["name"] == name]
    assert [(a["name"], a["email"], a["disabled"]) for a in listed] == [
        (name, f"{name}@example.com", False)
    ]
    text = ok(gw, "account", "list").stdout
    assert any(line.split()[:1] == [name] and "active" in line for line in text.splitlines()), text

    shown = as_json(ok(gw, "account", "show", name, "--json"))
    assert shown["name"] == name and shown["email"] == f"{name}@example.com"
    assert shown["disabled"] is False
    assert [k["fingerprint"] for k in shown["keys"]] == [fingerprint(pub(key))]
    assert shown["keys"][0]["title"] == f"{key.name}@test"  # the key's comment
    text = ok(gw, "account", "show", name).stdout
    assert name in text and fingerprint(pub(key)) in text

    # An account with no key and no email; a key given on stdin.
    bare = unique("acct")
    ok(gw, "account", "add", bare)
    assert as_json(ok(gw, "account", "show", bare, "--json"))["keys"] == []
    other = new_key(gw)
    stdin_name = unique("acct")
    ok(gw, "account", "add", stdin_name, "--key", "-", input=pub(other).read_text())
    assert key_fingerprints(gw, stdin_name) == [fingerprint(pub(other))]
    assert whoami(gw, other) == stdin_name


def test_account_names_at_the_length_limit(gw):
    name = unique("a")
    longest = name + "x" * (39 - len(name))
    ok(gw, "account", "add", longest)
    assert longest in account_names(gw)
    refused(gw, "account", "add", longest + "x")
    assert longest + "x" not in account_names(gw)


def test_duplicate_account_refused_and_unchanged(gw):
    user = gw.user()
    refused(gw, "account", "add", user.name, "--email", "new@example.com", match=user.name)
    shown = as_json(ok(gw, "account", "show", user.name, "--json"))
    assert shown["email"] is None
    assert len(shown["keys"]) == 1


BAD_ACCOUNT_NAMES = [
    "-bob",
    "Bob",
    ".hidden",
    "a" * 40,
    "a/b",
    "",
    "bob_smith",
    "bób",
    "bob\n",
    "bob\x1b[2J",
]


def test_bad_account_names_refused(gw):
    before = account_names(gw)
    commands = [("account", "add", "--", name) for name in BAD_ACCOUNT_NAMES]
    # The other commands that take an account name refuse them the same way.
    commands += [
        ("account", "show", "--", "Bob"),
        ("account", "disable", "--", "-bob"),
        ("account", "enable", "--", "a/b"),
    ]
    refused_all(gw, commands)
    assert account_names(gw) == before


def test_unknown_account_refused(gw):
    name = unique("ghost")
    for command in (
        ("account", "show"),
        ("account", "disable"),
        ("account", "enable"),
        ("key", "list"),
    ):
        refused(gw, *command, name, match=name)
    key = new_key(gw)
    refused(gw, "key", "add", name, str(pub(key)), match=name)
    assert name not in account_names(gw)


USAGE_ERRORS = [
    (),  # no command
    ("account",),  # no action
    ("account", "add"),  # missing NAME
    ("account", "add", "-bob"),  # option-looking name without --
    ("account", "frobnicate"),  # unknown subcommand
    ("frobnicate",),  # unknown command
    ("key", "add", "alice"),  # missing FILE
    ("member", "add", "ws", "alice", "--role", "owner"),  # bad --role choice
    ("audit", "--limit", "many"),  # not a number
    ("audit", "--limit", "0"),  # out of range
]


def test_usage_errors_exit_2(gw):
    refused_all(gw, USAGE_ERRORS, status=2)


def test_account_add_with_key_in_use_creates_nothing(gw):
    owner = gw.user()
    name = unique("acct")
    result = refused(gw, "account", "add", name, "--key", str(owner.pub), match="in use")
    assert name not in account_names(gw)
    assert whoami(gw, owner) == owner.name
    # Nothing was created, so the operator must not be told it was.
    assert "Created" not in result.stdout, result.stdout


def test_account_add_with_bad_key_file_creates_nothing(gw, tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("this is not a key\n")
    name = unique("acct")
    refused(gw, "account", "add", name, "--key", str(bad))
    refused(gw, "account", "add", name, "--key", str(tmp_path / "missing.pub"))
    assert name not in account_names(gw)


# --- 3. disable / enable --------------------------------------------------------------


def test_disabled_account_cannot_log_in_until_enabled(gw, work):
    user = gw.user()
    ws = gw.workspace((user, "write"))
    path = gw.repo(ws)
    assert_greets(gw, user, user.name)

    ok(gw, "account", "disable", user.name)
    assert as_json(ok(gw, "account", "show", user.name, "--json"))["disabled"] is True
    listed = [a for a in as_json(ok(gw, "account", "list", "--json")) if a["name"] == user.name]
    assert listed[0]["disabled"] is True
    assert_login_refused(gw, user)
    denied = gw.git(user, "ls-remote", gw.url(path), check=False)
    assert denied.returncode != 0

    ok(gw, "account", "enable", user.name)
    assert as_json(ok(gw, "account", "show", user.name, "--json"))["disabled"] is False
    assert_greets(gw, user, user.name)
    assert gw.git(user, "ls-remote", gw.url(path)).returncode == 0


def test_disabling_one_account_leaves_others_alone(gw):
    alice, bob = gw.user(), gw.user()
    ok(gw, "account", "disable", alice.name)
    try:
        assert_login_refused(gw, alice)
        assert whoami(gw, bob) == bob.name
    finally:
        ok(gw, "account", "enable", alice.name)


# --- 4. keys --------------------------------------------------------------------------


def test_key_add_from_file_and_stdin_then_remove(gw):
    user = gw.user()
    second, third = new_key(gw), new_key(gw)
    fp2, fp3 = fingerprint(pub(second)), fingerprint(pub(third))
    assert_login_refused(gw, second)

    added = ok(gw, "key", "add", user.name, str(pub(second)))
    assert fp2 in added.stdout
    # Usable at once; untitled keys are titled with the key's comment.
    assert_greets(gw, second, user.name, f"{second.name}@test", fp2)

    ok(gw, "key", "add", user.name, "-", "--title", "laptop", input=pub(third).read_text())
    assert_greets(gw, third, user.name, "laptop", fp3)

    listed = as_json(ok(gw, "key", "list", user.name, "--json"))
    assert [k["fingerprint"] for k in listed] == [fingerprint(user.pub), fp2, fp3]
    assert {k["account"] for k in listed} == {user.name}
    assert [k["title"] for k in listed][1:] == [f"{second.name}@test", "laptop"]
    assert fp3 in ok(gw, "key", "list").stdout
    assert {fp2, fp3} <= set(key_fingerprints(gw))

    ok(gw, "key", "remove", fp2)
    assert_login_refused(gw, second)
    assert_greets(gw, third, user.name, "laptop", fp3)
    assert_greets(gw, user, user.name)
    assert key_fingerprints(gw, user.name) == [fingerprint(user.pub), fp3]

    refused(gw, "key", "remove", fp2, match=fp2)
    refused(gw, "key", "remove", "SHA256:doesnotexist")
    ok(gw, "key", "remove", fp3)
    assert_login_refused(gw, third)


def test_key_of_another_account_refused(gw):
    alice, bob = gw.user(), gw.user()
    fp = fingerprint(alice.pub)
    refused(gw, "key", "add", bob.name, str(alice.pub), match="in use")
    refused(gw, "key", "add", alice.name, str(alice.pub))  # nor twice for the same account
    # Same key, other comment and options: still the same fingerprint.
    line = alice.pub.read_text().split()
    refused(gw, "key", "add", bob.name, "-", input=f"no-pty {line[0]} {line[1]} other comment\n")
    assert key_fingerprints(gw, bob.name) == [fingerprint(bob.pub)]
    assert key_fingerprints(gw, alice.name) == [fp]
    assert whoami(gw, alice) == alice.name


def _malformed_key_files(gw: Gateway, tmp_path: Path) -> dict[str, Path]:
    ed = pub(new_key(gw)).read_text().split()
    rsa_key = new_key(gw, "rsa")
    rsa = pub(rsa_key).read_text().split()
    files = {
        "garbage": "this is not an ssh key\n",
        "truncated ed25519 blob": f"ssh-ed25519 {ed[1][:40]} truncated\n",
        "truncated rsa blob": f"ssh-rsa {rsa[1][:-12]} truncated\n",
        "ssh-rsa with an ed25519 blob": f"ssh-rsa {ed[1]} mismatch\n",
        "ssh-ed25519 with an rsa blob": f"ssh-ed25519 {rsa[1]} mismatch\n",
        "ecdsa with an ed25519 blob": f"ecdsa-sha2-nistp256 {ed[1]} mismatch\n",
        "empty file": "",
        "only comments and blank lines": "# a comment\n\n   \n",
        "good line then garbage": f"ssh-ed25519 {ed[1]} good\nnot a key\n",
        "private key file": rsa_key.read_text(),
    }
    paths = {}
    for i, (label, text) in enumerate(files.items()):
        path = tmp_path / f"bad{i}.pub"
        path.write_text(text)
        paths[label] = path
    paths["directory"] = tmp_path
    paths["missing file"] = tmp_path / "missing.pub"
    return paths


def test_malformed_keys_refused_and_nothing_added(gw, tmp_path):
    user = gw.user()
    before = key_fingerprints(gw)
    files = _malformed_key_files(gw, tmp_path)
    private = files.pop("private key file")
    refused_all(gw, [("key", "add", user.name, str(path)) for path in files.values()])
    result = refused(gw, "key", "add", user.name, str(private))
    secret = private.read_text().splitlines()[1]
    assert secret not in result.stderr and secret not in result.stdout
    # The same on stdin.
    refused(
        gw, "key", "add", user.name, "-", input=files["ssh-rsa with an ed25519 blob"].read_text()
    )
    assert key_fingerprints(gw) == before


def test_authorized_keys_line_with_options_accepted(gw):
    user = gw.user()
    key = new_key(gw)
    algorithm, blob = pub(key).read_text().split()[:2]
    line = (
        f'no-pty,command="/bin/sh -c \'echo hi\'",from="10.0.0.1" {algorithm} {blob} workstation\n'
    )
    ok(gw, "key", "add", user.name, "-", input=line)
    fp = fingerprint(pub(key))
    # Options are ignored: the gateway decides what the key may do, from any address.
    assert_greets(gw, key, user.name, "workstation", fp)
    stored = [
        k for k in as_json(ok(gw, "key", "list", user.name, "--json")) if k["fingerprint"] == fp
    ]
    assert stored and stored[0]["algorithm"] == "ssh-ed25519"


def test_several_keys_in_one_file(gw, tmp_path):
    user = gw.user()
    ed, rsa, ecdsa = new_key(gw), new_key(gw, "rsa"), new_key(gw, "ecdsa")
    bundle = tmp_path / "bundle.pub"
    bundle.write_text(
        "# the team's keys\n\n"
        + pub(ed).read_text()
        + pub(rsa).read_text().rstrip("\n")
        + "\r\n"
        + pub(ecdsa).read_text()
    )
    ok(gw, "key", "add", user.name, str(bundle))
    for key in (ed, rsa, ecdsa):
        assert_greets(gw, key, user.name, f"{key.name}@test", fingerprint(pub(key)))
    algorithms = {k["algorithm"] for k in as_json(ok(gw, "key", "list", user.name, "--json"))}
    assert {"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"} <= algorithms


def test_key_file_partly_in_use_adds_nothing(gw, tmp_path):
    alice, bob = gw.user(), gw.user()
    new = new_key(gw)
    mixed = tmp_path / "mixed.pub"
    mixed.write_text(pub(new).read_text() + alice.pub.read_text())
    result = refused(gw, "key", "add", bob.name, str(mixed), match="in use")
    assert key_fingerprints(gw, bob.name) == [fingerprint(bob.pub)]
    assert_login_refused(gw, new)
    # The refused command added nothing, so stdout must not claim it did.
    assert "Added" not in result.stdout, result.stdout


# --- 5. workspaces and members --------------------------------------------------------


def test_workspace_add_list_show_json(gw):
    name = unique("ws")
    assert name in ok(gw, "workspace", "add", name).stdout
    listed = [w for w in as_json(ok(gw, "workspace", "list", "--json")) if w["name"] == name]
    assert len(listed) == 1 and listed[0]["require_2sv"] == "off"
    assert name in ok(gw, "workspace", "list").stdout
    shown = as_json(ok(gw, "workspace", "show", name, "--json"))
    assert shown["name"] == name and shown["members"] == [] and shown["repositories"] == []
    assert name in ok(gw, "workspace", "show", name).stdout
    # Workspace names are matched case-insensitively.
    assert as_json(ok(gw, "workspace", "show", name.upper(), "--json"))["name"] == name


def test_workspace_refusals(gw):
    name = unique("ws")
    ok(gw, "workspace", "add", name)
    refused(gw, "workspace", "add", name, match=name)
    refused(gw, "workspace", "add", name.upper())  # differs only in case
    refused_all(
        gw,
        [
            ("workspace", "add", "--", bad)
            for bad in ("-ws", ".ws", "a" * 40, "a/b", "", "wß", "ws_1")
        ],
    )
    ghost = unique("ghost")
    refused(gw, "workspace", "show", ghost, match=ghost)
    names = [w["name"] for w in as_json(ok(gw, "workspace", "list", "--json"))]
    assert names.count(name) == 1
    assert ghost not in names and not [n for n in names if n.lower() != n]


def test_member_add_roles_and_remove(gw):
    writer, reader, admin = gw.user(), gw.user(), gw.user()
    ws = gw.workspace()
    ok(gw, "member", "add", ws, writer.name)
    ok(gw, "member", "add", ws, reader.name, "--role", "read")
    ok(gw, "member", "add", ws, admin.name, "--role", "admin")
    members = {
        m["account"]: m["role"]
        for m in as_json(ok(gw, "workspace", "show", ws, "--json"))["members"]
    }
    assert members == {writer.name: "write", reader.name: "read", admin.name: "admin"}

    ok(gw, "member", "remove", ws, reader.name)
    members = {
        m["account"]: m["role"]
        for m in as_json(ok(gw, "workspace", "show", ws, "--json"))["members"]
    }
    assert members == {writer.name: "write", admin.name: "admin"}
    refused(gw, "member", "remove", ws, reader.name)  # no longer a member


def test_member_refusals(gw):
    user = gw.user()
    ws = gw.workspace((user, "read"))
    ghost_account, ghost_ws = unique("ghost"), unique("ghost")
    refused(gw, "member", "add", ws, ghost_account, match=ghost_account)
    refused(gw, "member", "add", ghost_ws, user.name, match=ghost_ws)
    refused(gw, "member", "add", ws, "Bad_Name")
    refused(gw, "member", "remove", ws, ghost_account)
    refused(gw, "member", "remove", ghost_ws, user.name)
    assert ghost_account not in account_names(gw)
    assert ghost_ws not in {w["name"] for w in as_json(ok(gw, "workspace", "list", "--json"))}
    members = as_json(ok(gw, "workspace", "show", ws, "--json"))["members"]
    assert [(m["account"], m["role"]) for m in members] == [(user.name, "read")]


# --- 6. repositories ------------------------------------------------------------------


def head_of(repo_dir: Path) -> str:
    return subprocess.run(
        ["git", "symbolic-ref", "HEAD"], cwd=repo_dir, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_repo_add_private_public_and_default_branch(gw):
    user = gw.user()
    ws = gw.workspace((user, "read"))
    private, public, trunk = unique("r"), unique("r"), unique("r")
    out = ok(gw, "repo", "add", f"{ws}/{private}").stdout
    assert f"{ws}/{private}.git" in out  # the clone URL
    ok(gw, "repo", "add", f"{ws}/{public}", "--public")
    ok(gw, "repo", "add", f"{ws}/{trunk}", "--default-branch", "trunk")

    for name, branch in ((private, "main"), (public, "main"), (trunk, "trunk")):
        repo_dir = gw.data / "repos" / ws / f"{name}.git"
        assert (repo_dir / "objects").is_dir() and (repo_dir / "refs").is_dir()
        assert head_of(repo_dir) == f"refs/heads/{branch}"
        check = subprocess.run(
            ["git", "rev-parse", "--is-bare-repository"],
            cwd=repo_dir,
            capture_output=True,
            text=True,
        )
        assert check.stdout.strip() == "true"

    listed = {
        r["repository"]: (r["public"], r["default_branch"])
        for r in as_json(ok(gw, "repo", "list", ws, "--json"))
    }
    assert listed == {
        f"{ws}/{private}": (False, "main"),
        f"{ws}/{public}": (True, "main"),
        f"{ws}/{trunk}": (False, "trunk"),
    }
    everything = {r["repository"] for r in as_json(ok(gw, "repo", "list", "--json"))}
    assert set(listed) <= everything
    text = ok(gw, "repo", "list", ws).stdout
    assert f"{ws}/{public}" in text and "public" in text and "trunk" in text

    # Private by default: an account outside the workspace sees only the public one.
    outsider = gw.user()
    assert gw.git(outsider, "ls-remote", gw.url(f"{ws}/{public}")).returncode == 0
    hidden = gw.git(outsider, "ls-remote", gw.url(f"{ws}/{private}"), check=False)
    assert hidden.returncode != 0 and f"Repository not found: {ws}/{private}" in hidden.stderr
    assert gw.git(user, "ls-remote", gw.url(f"{ws}/{private}")).returncode == 0


HOSTILE_REPO_NAMES = [
    "../x",
    "..",
    ".hidden",
    "-x",
    "a..b",
    "x.git",
    "X.GIT",
    "a" * 101,
    "a/b",
    "a b",
    "wïdget",
    "",
    "x\x1b[31m",
    "x\\y",
]


def test_hostile_repo_names_refused_and_nothing_created(gw):
    ws = gw.workspace()
    repos_before, trash_before = tree(gw.data / "repos"), tree(gw.data / "trash")
    commands = [("repo", "add", "--", f"{ws}/{name}") for name in HOSTILE_REPO_NAMES]
    # Hostile workspace parts and paths too.
    commands += [
        ("repo", "add", "--", path)
        for path in ("../x", f"/{ws}/x", f"{ws}", f"{ws}//x", f"{ws}/x/../../../tmp")
    ]
    refused_all(gw, commands)
    assert tree(gw.data / "repos") == repos_before
    assert tree(gw.data / "trash") == trash_before
    assert as_json(ok(gw, "repo", "list", ws, "--json")) == []
    # The limits themselves are accepted.
    longest = "a" * 100
    ok(gw, "repo", "add", f"{ws}/{longest}")
    ok(gw, "repo", "add", f"{ws}/_x.y-Z")
    assert (gw.data / "repos" / ws / f"{longest}.git").is_dir()


def test_repo_bad_default_branch_refused(gw):
    ws = gw.workspace()
    before = tree(gw.data / "repos")
    refused_all(
        gw,
        [
            ("repo", "add", f"{ws}/{unique('r')}", f"--default-branch={branch}")
            for branch in ("a..b", "-x", "x.lock", "", "a b", "x~1", "@{x}")
        ],
    )
    assert tree(gw.data / "repos") == before
    assert as_json(ok(gw, "repo", "list", ws, "--json")) == []


def test_repo_names_differing_only_in_case(gw):
    user = gw.user()
    ws = gw.workspace((user, "read"))
    ok(gw, "repo", "add", f"{ws}/Widgets")
    before = tree(gw.data / "repos")
    refused(gw, "repo", "add", f"{ws}/widgets")
    refused(gw, "repo", "add", f"{ws}/WIDGETS", "--public")
    refused(gw, "repo", "add", f"{ws.upper()}/widgets")
    assert tree(gw.data / "repos") == before
    assert [r["repository"] for r in as_json(ok(gw, "repo", "list", ws, "--json"))] == [
        f"{ws}/Widgets"
    ]
    assert sorted(p.name for p in (gw.data / "repos" / ws).iterdir()) == ["Widgets.git"]
    # Any spelling reaches the one repository.
    for spelling in (f"{ws}/widgets", f"{ws.upper()}/WIDGETS"):
        assert gw.git(user, "ls-remote", gw.url(spelling)).returncode == 0


def test_repo_add_refusals(gw):
    ws = gw.workspace()
    ghost = unique("ghost")
    refused(gw, "repo", "add", f"{ghost}/x", match=ghost)
    assert not (gw.data / "repos" / ghost).exists()
    name = unique("r")
    ok(gw, "repo", "add", f"{ws}/{name}")
    refused(gw, "repo", "add", f"{ws}/{name}")
    assert len(as_json(ok(gw, "repo", "list", ws, "--json"))) == 1
    refused(gw, "repo", "list", ghost)
    refused(gw, "repo", "remove", f"{ws}/{unique('r')}")
    refused(gw, "repo", "remove", "--", f"{ws}/../{name}")
    assert (gw.data / "repos" / ws / f"{name}.git").is_dir()


def test_repo_remove_moves_data_to_trash(gw, work):
    user = gw.user()
    ws = gw.workspace((user, "write"))
    path = gw.repo(ws)
    name = path.split("/")[1]
    clone = work / "clone"
    gw.git(user, "clone", gw.url(path), str(clone))
    (clone / "README").write_text("keep me\n")
    local_git("add", "README", cwd=clone)
    local_git("commit", "-q", "-m", "first", cwd=clone)
    tip = local_git("rev-parse", "HEAD", cwd=clone).strip()
    gw.git(user, "push", "origin", "HEAD:main", cwd=clone)

    ok(gw, "repo", "remove", path)
    assert not gw.repo_dir(path).exists()
    trashed = [
        p
        for p in (gw.data / "trash").rglob("*")
        if p.is_dir() and (p / "HEAD").is_file() and name in p.name
    ]
    assert len(trashed) == 1, trashed
    assert trashed[0].is_relative_to(gw.data / "trash")
    kept = subprocess.run(
        ["git", "rev-parse", "refs/heads/main"], cwd=trashed[0], capture_output=True, text=True
    )
    assert kept.stdout.strip() == tip

    gone = gw.git(user, "ls-remote", gw.url(path), check=False)
    assert gone.returncode != 0 and f"Repository not found: {path}" in gone.stderr
    assert path not in {r["repository"] for r in as_json(ok(gw, "repo", "list", "--json"))}
    refused(gw, "repo", "remove", path)

    # The name can be used again, for a new empty repository; the trash is untouched.
    ok(gw, "repo", "add", path)
    assert gw.git(user, "ls-remote", gw.url(path)).stdout == ""
    assert (trashed[0] / "HEAD").is_file()


def test_repo_remove_is_case_insensitive(gw):
    ws = gw.workspace()
    ok(gw, "repo", "add", f"{ws}/Gadget")
    ok(gw, "repo", "remove", f"{ws.upper()}/gadget")
    assert not (gw.data / "repos" / ws / "Gadget.git").exists()
    assert as_json(ok(gw, "repo", "list", ws, "--json")) == []


# --- 7. keydir ------------------------------------------------------------------------


def sync(gw: Gateway, keydir: Path) -> subprocess.CompletedProcess:
    result = gw.cli("keys", "sync", "--keydir", str(keydir), check=False)
    assert_clean(result)
    return result


def test_keys_sync_creates_accounts_and_removes_deleted_keys(gw, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    alice, bob = unique("kd"), unique("kd")
    alice_key, bob_key = new_key(gw), new_key(gw)
    shutil.copy(pub(alice_key), keydir / f"{alice}.pub")
    (keydir / bob).mkdir()
    shutil.copy(pub(bob_key), keydir / bob / "laptop.pub")
    (keydir / "README").write_text("drop keys here\n")

    result = sync(gw, keydir)
    assert result.returncode == 0, result.stderr
    assert {alice, bob} <= account_names(gw)
    assert_greets(gw, alice_key, alice, f"{alice_key.name}@test", fingerprint(pub(alice_key)))
    assert_greets(gw, bob_key, bob, "laptop", fingerprint(pub(bob_key)))

    # Idempotent.
    again = sync(gw, keydir)
    assert again.returncode == 0, again.stderr
    assert key_fingerprints(gw, bob) == [fingerprint(pub(bob_key))]

    (keydir / bob / "laptop.pub").unlink()
    result = sync(gw, keydir)
    assert result.returncode == 0, result.stderr
    assert_login_refused(gw, bob_key)
    assert key_fingerprints(gw, bob) == []
    assert_greets(gw, alice_key, alice)


def test_keys_sync_never_removes_keys_added_with_key_add(gw, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    user = gw.user()  # its key came from `account add --key`
    extra = new_key(gw)
    ok(gw, "key", "add", user.name, str(pub(extra)))
    synced = new_key(gw)
    (keydir / user.name).mkdir()
    shutil.copy(pub(synced), keydir / user.name / "desktop.pub")
    assert sync(gw, keydir).returncode == 0
    assert_greets(gw, synced, user.name, "desktop", fingerprint(pub(synced)))

    shutil.rmtree(keydir / user.name)
    assert sync(gw, keydir).returncode == 0
    assert_login_refused(gw, synced)
    assert whoami(gw, user) == user.name
    assert whoami(gw, extra) == user.name
    assert key_fingerprints(gw, user.name) == [fingerprint(user.pub), fingerprint(pub(extra))]


def test_keys_sync_reports_bad_files_and_syncs_the_rest(gw, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    good, broken = unique("kd"), unique("kd")
    good_key, bad_name_key = new_key(gw), new_key(gw)
    shutil.copy(pub(bad_name_key), keydir / "Bad_Name.pub")
    (keydir / f"{broken}.pub").write_text("ssh-ed25519 AAAAnotakey\n")
    shutil.copy(pub(good_key), keydir / f"{good}.pub")

    result = sync(gw, keydir)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert all(line.startswith("ERROR: ") for line in errors), result.stderr
    assert any("Bad_Name.pub" in line for line in errors), result.stderr
    assert any(f"{broken}.pub" in line for line in errors), result.stderr
    assert len(errors) == 2, result.stderr

    assert_greets(gw, good_key, good)
    names = account_names(gw)
    assert good in names
    assert not {"Bad_Name", "bad_name", broken} & names
    assert_login_refused(gw, bad_name_key)


def test_keys_sync_broken_file_keeps_the_keys_it_gave_before(gw, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    carol = unique("kd")
    key = new_key(gw)
    shutil.copy(pub(key), keydir / f"{carol}.pub")
    assert sync(gw, keydir).returncode == 0
    assert whoami(gw, key) == carol
    (keydir / f"{carol}.pub").write_text(
        pub(key).read_text().replace("ssh-ed25519 ", "ssh-ed25519 X")
    )
    result = sync(gw, keydir)
    assert result.returncode == 1 and f"{carol}.pub" in result.stderr
    assert whoami(gw, key) == carol  # a typo does not lock anyone out


def test_keys_sync_reports_key_of_another_account(gw, tmp_path):
    keydir = tmp_path / "keys"
    keydir.mkdir()
    owner = gw.user()
    mallory, other = unique("kd"), unique("kd")
    other_key = new_key(gw)
    shutil.copy(owner.pub, keydir / f"{mallory}.pub")
    shutil.copy(pub(other_key), keydir / f"{other}.pub")

    result = sync(gw, keydir)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: "), result.stderr
    assert f"{mallory}.pub" in errors[0] and owner.name in errors[0]
    assert whoami(gw, owner) == owner.name
    assert key_fingerprints(gw, owner.name) == [fingerprint(owner.pub)]
    assert mallory not in account_names(gw) or key_fingerprints(gw, mallory) == []
    assert whoami(gw, other_key) == other


def test_keys_sync_missing_keydir(gw, tmp_path):
    refused(gw, "keys", "sync", "--keydir", str(tmp_path / "nope"))


# --- 8. audit -------------------------------------------------------------------------


def test_audit_lists_operator_changes(gw):
    user = gw.user()
    ws = gw.workspace((user, "read"))
    path = gw.repo(ws, public=True)
    ok(gw, "account", "disable", user.name)
    ok(gw, "account", "enable", user.name)
    fp = fingerprint(user.pub)

    entries = audit(gw, "--limit", "20")
    mine = [e for e in entries if e["target"] in {user.name, ws, f"{ws}/{user.name}", path}]
    actions = [(e["action"], e["target"]) for e in mine]
    assert actions == [
        ("account.add", user.name),
        ("key.add", user.name),
        ("workspace.add", ws),
        ("member.add", user.name),
        ("repo.add", path),
        ("account.disable", user.name),
        ("account.enable", user.name),
    ], actions
    assert all(e["actor"] == "operator" and e["outcome"] == "ok" for e in mine)
    assert fp in json.dumps(mine[1])
    assert "read" in json.dumps(mine[3]) and "public" in json.dumps(mine[4])
    assert [e["at"] for e in mine] == sorted(e["at"] for e in mine)

    text = ok(gw, "audit", "--limit", "20").stdout
    assert any("repo.add" in line and path in line for line in text.splitlines()), text

    # --limit: the newest N entries.
    last_two = audit(gw, "--limit", "2")
    assert [(e["action"], e["target"]) for e in last_two] == actions[-2:]
    assert len(ok(gw, "audit", "--limit", "1").stdout.strip().splitlines()) == 1


def test_audit_records_refused_git_operations(gw, work):
    reader, outsider = gw.user(), gw.user()
    ws = gw.workspace((reader, "read"))
    path = gw.repo(ws)
    clone = work / "clone"
    gw.git(reader, "clone", gw.url(path), str(clone))
    (clone / "f.txt").write_text("x\n")
    local_git("add", "f.txt", cwd=clone)
    local_git("commit", "-q", "-m", "try", cwd=clone)
    push = gw.git(reader, "push", "origin", "HEAD:main", cwd=clone, check=False)
    assert push.returncode != 0
    assert f"Permission to {path} denied to {reader.name}." in push.stderr
    assert gw.git(reader, "ls-remote", gw.url(path)).stdout == ""  # nothing changed

    denied = [e for e in audit(gw, "--account", reader.name) if e["outcome"] == "denied"]
    assert len(denied) == 1, denied
    assert denied[0]["actor"] == reader.name and denied[0]["target"] == path

    gw.git(outsider, "ls-remote", gw.url(path), check=False)
    entries = audit(gw, "--account", outsider.name)
    assert [e["outcome"] for e in entries if e["target"] == path] == ["denied"]
    # The filter keeps to the one account.
    assert all(outsider.name in (e["actor"], e["target"]) for e in entries), entries
    assert not [e for e in entries if reader.name in (e["actor"], e["target"])]
    text = ok(gw, "audit", "--account", reader.name).stdout
    assert "denied" in text and path in text


def test_audit_account_filter_includes_changes_to_the_account(gw):
    """`audit --account alice` is alice's history: what she did and what was done to her."""
    user = gw.user()
    ok(gw, "account", "disable", user.name)
    ok(gw, "account", "enable", user.name)
    actions = [e["action"] for e in audit(gw, "--account", user.name)]
    assert {"account.add", "key.add", "account.disable", "account.enable"} <= set(actions), actions


def test_audit_account_filter_includes_membership_changes(gw):
    """Being given (or losing) access to a workspace is part of an account's history."""
    user = gw.user()
    ws = gw.workspace((user, "admin"))
    ok(gw, "member", "remove", ws, user.name)
    actions = [e["action"] for e in audit(gw, "--account", user.name)]
    assert {"member.add", "member.remove"} <= set(actions), actions


def test_audit_refusals(gw):
    refused(gw, "audit", "--account", "Bad_Name")
    refused(gw, "audit", "--limit", "-1", status=2)
    # An account that does not exist is said to be so (issue 22), not an empty history.
    ghost = unique("ghost")
    refused(gw, "audit", "--account", ghost, match=f"No such account: {ghost}")
    refused(gw, "audit", "--account", ghost, "--json", match=f"No such account: {ghost}")
