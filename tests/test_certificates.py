"""OpenSSH user certificates made by `ssh-keygen -s`, presented by the real `ssh` and
`git` to a real `gateway serve` that trusts a CA (setting `trusted_user_ca_keys`): the
valid one logs in as the account its principal names, under the same access decision
and 2SV policy as keys; every other kind is refused with its reason in the log; the
revocation list is reread on SIGHUP; trust files that do not parse stop the start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from gateway import certificates
from gateway.errors import Refusal
from gateway.transport import asyncssh_seam
from testkit import GATEWAY, Gateway, User, fingerprint, free_port, make_key, unique, wait_for
from testkit.twosv import URI_RE, Session, enable


class CA:
    """A certificate authority on disk: `ssh-keygen -s` signs with it."""

    def __init__(self, directory: Path, name: str) -> None:
        self.key = make_key(directory, name)
        self.directory = directory

    @property
    def pub_line(self) -> str:
        return Path(f"{self.key}.pub").read_text()

    def sign(
        self,
        key: Path,
        *,
        principals: str | None,
        key_id: str = "alice@laptop",
        serial: int = 1,
        validity: str = "-5m:+1h",
        options: tuple[str, ...] = (),
        host: bool = False,
    ) -> Path:
        args = ["ssh-keygen", "-q", "-s", str(self.key), "-I", key_id, "-z", str(serial)]
        args += ["-V", validity]
        if principals is not None:
            args += ["-n", principals]
        for option in options:
            args += ["-O", option]
        if host:
            args.append("-h")
        subprocess.run([*args, f"{key}.pub"], check=True, capture_output=True)
        return Path(f"{key}-cert.pub")


@pytest.fixture
def certs(private, tmp_path):
    """A server trusting one CA, with an (empty) revocation list: (server, ca, revoked)."""
    ca = CA(tmp_path, "ca")
    trusted = tmp_path / "trusted_cas"
    trusted.write_text(f"# the team's CA\n{ca.pub_line}")
    revoked = tmp_path / "revoked"
    revoked.write_text("# nothing yet\n")
    g = private(f'trusted_user_ca_keys = "{trusted}"\nrevoked_user_certificates = "{revoked}"\n')
    return g, ca, revoked


def cert_ssh(g: Gateway, key: Path, *command: str, input: str | None = None):
    return g.ssh(key, *command, input=input, extra=("-o", f"CertificateFile={key}-cert.pub"))


def cert_user(g: Gateway, key: Path, name: str) -> User:
    """A User whose git goes through ssh with the certificate."""
    return User(name, key)


def refused_for(g: Gateway, key: Path, reason: str) -> None:
    result = cert_ssh(g, key, "whoami")
    assert result.returncode == 255 and "Permission denied" in result.stderr, result
    assert wait_for(lambda: f"reason={reason}" in g.server_log()), g.server_log()[-2000:]


def test_a_valid_certificate_logs_in_as_its_principal_and_clones(certs, tmp_path):
    g, ca, _ = certs
    account = unique("alice")
    g.cli("account", "add", account)  # no key of its own: the certificate is its login
    workspace = unique("ws")
    g.cli("workspace", "add", workspace)
    g.cli("member", "add", workspace, account, "--role", "write")
    repo = f"{workspace}/r"
    g.cli("repo", "add", repo)
    key = make_key(tmp_path, "laptop")
    ca.sign(key, principals=f"nobody-{account},{account}", key_id="alice@laptop", serial=4242)

    who = cert_ssh(g, key, "whoami")
    assert who.returncode == 0 and who.stdout.strip() == account, who
    greeting = cert_ssh(g, key)
    assert f"Hi {account}!" in greeting.stdout
    assert 'certificate "alice@laptop" serial 4242' in greeting.stdout
    assert fingerprint(key) in greeting.stdout  # the certified key's fingerprint

    log = g.server_log()
    (ok,) = [line for line in log.splitlines() if "auth.ok" in line and account in line][:1]
    assert "certificate=alice@laptop" in ok and "serial=4242" in ok, ok
    assert wait_for(lambda: "auth.certificate" in g.cli("audit", "--account", account).stdout)
    audit = g.cli("audit", "--account", account).stdout
    assert "key_id=alice@laptop serial=4242" in audit

    env = {
        "GIT_SSH_COMMAND": " ".join(g.ssh_command(key) + ["-o", f"CertificateFile={key}-cert.pub"])
    }
    clone = g.git(cert_user(g, key, account), "clone", g.url(repo), str(tmp_path / "c"), env=env)
    assert clone.returncode == 0


REFUSED = {
    "cert-expired": dict(validity="-2h:-1h"),
    "cert-not-yet-valid": dict(validity="+1h:+2h"),
    "cert-no-principals": dict(principals=None),
    "cert-unknown-principal": dict(principals="nosuchaccount"),
    "cert-source-address": dict(options=("source-address=10.1.0.0/16",)),
    "cert-force-command": dict(options=("force-command=whoami",)),
}


def test_certificates_that_may_not_log_in(certs, tmp_path):
    g, ca, _ = certs
    account = unique("bob")
    g.cli("account", "add", account)
    for reason, sign in REFUSED.items():
        key = make_key(tmp_path, unique("k"))
        ca.sign(key, **{"principals": account, **sign})
        refused_for(g, key, reason)
    assert g.proc.poll() is None and "Traceback" not in g.server_log()


def test_a_host_certificate_is_not_a_user_certificate(tmp_path):
    # ssh never offers one to log in, so this is checked on the decoded certificate.
    import base64

    ca = CA(tmp_path, "ca")
    key = make_key(tmp_path, "host")
    blob = base64.b64decode(ca.sign(key, principals="x", host=True).read_text().split()[1])
    facts, _ = asyncssh_seam.read_certificate(blob)
    trust = certificates.Trust(frozenset({facts.ca_blob}))
    assert trust.refusal(facts, "127.0.0.1", facts.valid_after) == "cert-not-a-user-certificate"


def test_a_matching_source_address_logs_in(certs, tmp_path):
    g, ca, _ = certs
    account = unique("carol")
    g.cli("account", "add", account)
    key = make_key(tmp_path, "k")
    ca.sign(key, principals=account, options=("source-address=10.0.0.0/8,127.0.0.1/32",))
    assert cert_ssh(g, key, "whoami").stdout.strip() == account


def test_a_certificate_from_another_ca_or_a_disabled_account(certs, tmp_path):
    g, _ca, _ = certs
    other = CA(tmp_path, "other-ca")
    account = unique("dave")
    g.cli("account", "add", account)
    key = make_key(tmp_path, "k")
    other.sign(key, principals=account)
    refused_for(g, key, "cert-untrusted-ca")

    good = make_key(tmp_path, "good")
    _ca.sign(good, principals=account)
    g.cli("account", "disable", account)
    refused_for(g, good, "account-disabled")


def test_no_trusted_ca_means_no_certificate_logs_in(gw: Gateway, tmp_path):
    ca = CA(tmp_path, "ca")
    account = unique("erin")
    gw.cli("account", "add", account)
    key = make_key(tmp_path, "k")
    ca.sign(key, principals=account)
    refused_for(gw, key, "cert-no-trusted-ca")


def test_revocation_reread_on_sighup_and_a_bad_list_keeps_the_old(certs, tmp_path):
    g, ca, revoked = certs
    account = unique("frank")
    g.cli("account", "add", account)
    first, second, third = (make_key(tmp_path, n) for n in ("one", "two", "three"))
    ca.sign(first, principals=account, serial=7)
    ca.sign(second, principals=account, serial=8, key_id="frank@ci")
    ca.sign(third, principals=account, serial=9)
    for key in (first, second, third):
        assert cert_ssh(g, key, "whoami").stdout.strip() == account

    revoked.write_text(f"serial 7\nkey-id frank@ci\nkey {fingerprint(third)}\n")
    g.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "certificates.loaded cas=1 revoked=3" in g.server_log())
    for key in (first, second, third):
        refused_for(g, key, "cert-revoked")

    revoked.write_text("serial seven\n")
    g.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "certificates.reload_failed" in g.server_log())
    assert "line 1 is not 'serial N'" in g.server_log()
    refused_for(g, first, "cert-revoked")  # the old list stays
    assert g.proc.poll() is None


def test_revoking_closes_a_connection_already_in(certs, tmp_path):
    g, ca, revoked = certs
    account = unique("gina")
    g.cli("account", "add", account)
    key = make_key(tmp_path, "k")
    ca.sign(key, principals=account, serial=31)  # as k-cert.pub, which ssh -i k picks up
    waiting = Session(g, User(account, key), "2sv", "enable")  # waits at its prompt
    waiting.read_until(URI_RE)  # the QR code is out: the prompt waits for a code
    revoked.write_text("serial 31\n")
    g.proc.send_signal(signal.SIGHUP)
    # The prompt's stdin stays open until the server has closed the connection: finish()
    # closes it, and an end of input at the prompt would end the session by itself.
    assert wait_for(lambda: "certificate.closed" in g.server_log())
    assert "reason=cert-revoked" in g.server_log()
    result = waiting.finish(timeout=30)
    assert result.returncode != 0
    assert "Two-step verification is now on" not in result.stdout


def test_the_2sv_policy_applies_and_the_session_is_the_certified_keys(certs, tmp_path):
    g, ca, _ = certs
    user = g.user()
    _secret, codes, _ = enable(g, user)
    workspace = g.workspace((user, "write"))
    g.cli("workspace", "require-2sv", workspace, "session")
    repo = g.repo(workspace)
    key = make_key(tmp_path, "k")
    ca.sign(key, principals=user.name)
    env = {
        "GIT_SSH_COMMAND": " ".join(g.ssh_command(key) + ["-o", f"CertificateFile={key}-cert.pub"])
    }
    as_cert = User(user.name, key)
    denied = g.git(as_cert, "ls-remote", g.url(repo), check=False, env=env)
    assert "requires a verified two-step session" in denied.stderr
    verified = cert_ssh(g, key, "2sv", "verify", input=codes[0] + "\n")
    assert verified.returncode == 0 and fingerprint(key) in verified.stdout, verified
    assert g.git(as_cert, "ls-remote", g.url(repo), env=env).returncode == 0
    # The plain key of the same account has no session of its own.
    assert "requires a verified" in g.git(user, "ls-remote", g.url(repo), check=False).stderr
    sessions = g.ssh(user, "2sv", "sessions").stdout
    assert fingerprint(key) in sessions and "(a certificate)" in sessions


def test_trust_files_that_do_not_parse_stop_the_start(private, tmp_path):
    ca = CA(tmp_path, "ca")
    cases = {
        "not a key": ("trusted_user_ca_keys", "ssh-ed25519 AAAAnotbase64\n", "line 1 is not a CA"),
        "a certificate": (
            "trusted_user_ca_keys",
            None,
            "is not a CA public key line",
        ),
        "empty": ("trusted_user_ca_keys", "# none\n", "holds no CA key"),
        "bad revocation": ("revoked_user_certificates", "serial -1\n", "is not 'serial N'"),
    }
    for name, (setting, text, says) in cases.items():
        path = tmp_path / unique("f")
        if text is None:  # a certificate line where a CA key belongs
            key = make_key(tmp_path, unique("k"))
            text = ca.sign(key, principals="x").read_text()
        path.write_text(text)
        toml = f'{setting} = "{path}"\n'
        if setting == "revoked_user_certificates":
            (tmp_path / "ok-ca").write_text(ca.pub_line)
            toml += f'trusted_user_ca_keys = "{tmp_path / "ok-ca"}"\n'
        g = private(toml, start=False)
        result = subprocess.run(
            [*GATEWAY, "--data-dir", str(g.data), "serve", "--listen", f"127.0.0.1:{g.port}"],
            capture_output=True,
            text=True,
            env=g.env,
            timeout=60,
        )
        assert result.returncode == 1, (name, result)
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("ERROR: ") and says in errors[0], (
            name,
            result.stderr,
        )
        check = g.cli("config", "check", check=False)
        assert check.returncode == 1 and says in check.stderr, (name, check.stderr)


# --- the decoding and the policy, unit by unit -------------------------------------------


def test_malformed_and_unknown_certificate_blobs_are_refused_not_raised(tmp_path):
    import base64

    ca = CA(tmp_path, "ca")
    key = make_key(tmp_path, "k")
    blob = base64.b64decode(ca.sign(key, principals="x").read_text().split()[1])
    facts, _key = asyncssh_seam.read_certificate(blob)
    assert facts.principals == ("x",) and facts.serial == 1
    name = b"ssh-ed25519-cert-v01@openssh.com"
    unknown = (
        len(b"ssh-foo-cert-v01@openssh.com").to_bytes(4, "big") + b"ssh-foo-cert-v01@openssh.com"
    )
    for bad in (
        blob[:-10],
        blob[:40],
        unknown + blob[4 + len(name) :],
        blob[:-1] + bytes([blob[-1] ^ 1]),
        blob.replace(b"\x00\x00\x00\x01x", b"\x00\x00\x00\x01y", 1),  # a forged principal
    ):
        assert asyncssh_seam.claims_certificate(bad)
        with pytest.raises(asyncssh_seam.MalformedCertificate):
            asyncssh_seam.read_certificate(bad)
    assert not asyncssh_seam.claims_certificate(b"\x00")
    assert not asyncssh_seam.claims_certificate(base64.b64decode(ca.pub_line.split()[1]))


def test_revocation_file_syntax(tmp_path):
    path = tmp_path / "r"
    path.write_text("# c\n\nserial 18446744073709551615\nkey-id a b\n")
    ca = tmp_path / "ca"
    ca.write_text(CA(tmp_path, "ca-key").pub_line)
    trust = certificates.load(str(ca), str(path))
    assert trust.revoked.serials == {2**64 - 1} and trust.revoked.key_ids == {"a b"}
    for bad in ("serial 18446744073709551616", "key-id", "key SHA256:short", "revoke 1"):
        path.write_text(bad + "\n")
        with pytest.raises(Refusal, match=re.escape("line 1")):
            certificates.load(str(ca), str(path))


# --- behind OpenSSH: TrustedUserCAKeys + AuthorizedPrincipalsCommand ---------------------


@pytest.fixture(scope="module")
def sshd_ca(tmp_path_factory):
    from test_openssh import SSHD, Sshd

    if os.geteuid() != 0 or not os.path.exists(SSHD):
        pytest.fail("these tests run OpenSSH's sshd as root (.ci/run installs openssh-server)")
    root = tmp_path_factory.mktemp("openssh-ca")
    ca = CA(root, "ca")
    trusted = root / "trusted_cas"
    trusted.write_text(ca.pub_line)
    revoked = root / "revoked"
    revoked.write_text("")
    g = Gateway(root / "gw")
    g.cli("init")
    port = free_port()
    (g.data / "gateway.toml").write_text(
        g.database_toml
        + f'ssh_user = "root"\nssh_port = {port}\ntrusted_user_ca_keys = "{trusted}"\n'
        f'revoked_user_certificates = "{revoked}"\n'
    )
    sshd = Sshd(g, root, port, trusted_user_ca_keys=trusted)
    yield sshd, ca, revoked
    sshd.stop()


def test_certificates_behind_openssh(sshd_ca, tmp_path):
    sshd, ca, revoked = sshd_ca
    g = sshd.g
    account = unique("olive")
    g.cli("account", "add", account)
    workspace = unique("ws")
    g.cli("workspace", "add", workspace)
    g.cli("member", "add", workspace, account, "--role", "write")
    g.cli("repo", "add", f"{workspace}/r")

    def login(key: Path, *command: str) -> subprocess.CompletedProcess:
        return sshd.ssh(key, *command, extra=("-o", f"CertificateFile={key}-cert.pub"))

    good = make_key(tmp_path, "good")
    ca.sign(good, principals=account, key_id="olive@ci", serial=77)
    who = login(good, "whoami")
    assert who.stdout.strip() == account, who
    greeting = login(good).stdout
    assert 'certificate "olive@ci" serial 77' in greeting and fingerprint(good) in greeting
    env = {
        **g.env,
        "GIT_SSH_COMMAND": " ".join(
            [*g.ssh_command(good), "-o", f"CertificateFile={good}-cert.pub"]
        ),
    }
    clone = subprocess.run(
        ["git", "clone", sshd.url(f"{workspace}/r"), str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert clone.returncode == 0, clone.stderr
    shell_log = (g.data / "shell.log").read_text()
    assert "certificate=olive@ci" in shell_log and "serial=77" in shell_log
    assert "auth.certificate" in g.cli("audit", "--account", account).stdout

    for name, sign in {
        "unknown": dict(principals="nosuchaccount"),
        # The unix user's name: sshd without the principals command would take it.
        "unix-user": dict(principals="root"),
        "none": dict(principals=None),
        "force": dict(options=("force-command=whoami",)),
        "expired": dict(validity="-2h:-1h"),
        "source": dict(options=("source-address=10.1.0.0/16",)),
    }.items():
        key = make_key(tmp_path, name)
        ca.sign(key, **{"principals": account, **sign})
        refused = login(key, "whoami")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr, (name, refused)

    other = CA(tmp_path, "other")
    stranger = make_key(tmp_path, "stranger")
    other.sign(stranger, principals=account)
    assert login(stranger, "whoami").returncode == 255

    # The gateway's own revocation list counts under sshd as well (read on every login).
    revoked.write_text("serial 77\n")
    try:
        assert login(good, "whoami").returncode == 255
    finally:
        revoked.write_text("")
