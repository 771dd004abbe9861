"""Git's SSH signatures verified in Python (gateway/git/signatures.py) and the commits a
ref update makes reachable (gateway/git/receive/signed.py), against signatures made by
the real `ssh-keygen -Y sign` and `git commit -S` / `git tag -s`."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import subprocess
from pathlib import Path

import asyncssh
import pytest
from dulwich.repo import Repo

from gateway.git import signatures
from gateway.git.receive import signed
from gateway.git.signatures import Unverified
from testkit.keys import fingerprint, make_key
from testkit.localgit import local_git
from testkit.security_key import SoftwareSecurityKey

KINDS = ("ed25519", "ecdsa", "rsa")


def git_env(key: Path | None = None) -> dict[str, str]:
    """A git that reads no user config, signing with KEY (gpg.format=ssh)."""
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@example.com",
    }
    if key is not None:
        env.update(
            GIT_CONFIG_COUNT="2",
            GIT_CONFIG_KEY_0="gpg.format",
            GIT_CONFIG_VALUE_0="ssh",
            GIT_CONFIG_KEY_1="user.signingKey",
            GIT_CONFIG_VALUE_1=str(key),
        )
    return env


def git(tree: Path, *args: str, key: Path | None = None) -> str:
    return local_git(*args, cwd=tree, env=git_env(key))


def new_commit(tree: Path, message: str, key: Path | None = None) -> str:
    git(tree, "commit", "-q", "--allow-empty", *(["-S"] if key else []), "-m", message, key=key)
    return git(tree, "rev-parse", "HEAD").strip()


def raw(tree: Path, kind: str, rev: str) -> bytes:
    return subprocess.run(
        ["git", "cat-file", kind, rev], cwd=tree, capture_output=True, check=True
    ).stdout


@pytest.fixture
def tree(tmp_path) -> Path:
    path = tmp_path / "tree"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("signing-keys")
    return {kind: make_key(directory, kind, kind) for kind in KINDS}


def registered(*paths: Path, account: str = "alice") -> dict[str, str]:
    return {fingerprint(str(p) + ".pub"): account for p in paths}


def ssh_keygen_sign(key: Path, data: bytes, namespace: str = "git") -> bytes:
    return subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key)],
        input=data,
        capture_output=True,
        check=True,
    ).stdout


def refused(armored: bytes, message: bytes, keys: dict[str, str], own: str | None = None) -> str:
    with pytest.raises(Unverified) as caught:
        signatures.verify(armored, message, keys, own)
    return str(caught.value)


def armor(blob: bytes) -> bytes:
    text = base64.b64encode(blob)
    lines = [text[i : i + 70] for i in range(0, len(text), 70)]
    return b"\n".join([signatures.BEGIN, *lines, signatures.END]) + b"\n"


def unarmor(armored: bytes) -> bytes:
    return base64.b64decode(b"".join(armored.strip().split(b"\n")[1:-1]))


def string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def fields(blob: bytes) -> list[bytes]:
    """An SSHSIG blob's six fields after the magic: version, key, namespace, reserved,
    hash, signature (the version as its 4 bytes)."""
    out, at = [blob[6:10]], 10
    while at < len(blob):
        (n,) = struct.unpack(">I", blob[at : at + 4])
        out.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def rebuild(parts: list[bytes]) -> bytes:
    return b"SSHSIG" + parts[0] + b"".join(string(p) for p in parts[1:])


# --- made by ssh-keygen -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ssh_keygen_signatures_verify(keys, kind):
    armored = ssh_keygen_sign(keys[kind], b"payload\n")
    signer = signatures.verify(armored, b"payload\n", registered(keys[kind]))
    assert signer == signatures.Signer(fingerprint(str(keys[kind]) + ".pub"), "alice")


def test_content_other_than_signed_is_refused(keys):
    armored = ssh_keygen_sign(keys["ed25519"], b"payload\n")
    assert "bad signature" in refused(armored, b"payloaD\n", registered(keys["ed25519"]))


def test_wrong_namespace_is_refused(keys):
    armored = ssh_keygen_sign(keys["ed25519"], b"payload\n", namespace="file")
    reason = refused(armored, b"payload\n", registered(keys["ed25519"]))
    assert reason == "signature made for namespace 'file', not 'git'"


def test_unknown_and_other_accounts_keys_are_refused(keys):
    armored = ssh_keygen_sign(keys["ed25519"], b"payload\n")
    assert "not a registered signing key" in refused(armored, b"payload\n", registered(keys["rsa"]))
    reason = refused(armored, b"payload\n", registered(keys["ed25519"]), own="bob")
    assert "not one of the pusher's signing keys" in reason
    assert signatures.verify(armored, b"payload\n", registered(keys["ed25519"]), "alice")


def test_truncated_not_base64_and_huge_are_refused(keys):
    good = registered(keys["ed25519"])
    armored = ssh_keygen_sign(keys["ed25519"], b"x")
    assert "truncated" in refused(armor(unarmor(armored)[:-10]), b"x", good)
    assert "trailing data" in refused(armor(unarmor(armored) + b"\0"), b"x", good)
    lines = armored.split(b"\n")
    lines[1] = b"!!!!" + lines[1][4:]
    assert "not base64" in refused(b"\n".join(lines), b"x", good)
    assert "armor" in refused(armored.replace(signatures.END, b""), b"x", good)
    huge = armor(b"A" * signatures.MAX_ARMORED)
    assert "too large" in refused(huge, b"x", good)
    assert "not SSHSIG" in refused(armor(b"NOTSIG" + unarmor(armored)[6:]), b"x", good)


def test_unknown_algorithms_are_refused(keys):
    good = registered(keys["ed25519"])
    parts = fields(unarmor(ssh_keygen_sign(keys["ed25519"], b"x")))
    sha1 = [*parts[:4], b"sha1", parts[5]]
    assert refused(armor(rebuild(sha1)), b"x", good) == "unknown hash algorithm 'sha1'"
    foo = [parts[0], string(b"ssh-foo") + string(b"k"), *parts[2:]]
    assert refused(armor(rebuild(foo)), b"x", good) == "unknown key algorithm 'ssh-foo'"
    dss = [parts[0], string(b"ssh-dss") + string(b"k"), *parts[2:]]
    assert "unknown key algorithm" in refused(armor(rebuild(dss)), b"x", good)


def test_pgp_and_x509_signatures_are_named():
    pgp = b"-----BEGIN PGP SIGNATURE-----\n\nabc\n-----END PGP SIGNATURE-----\n"
    assert refused(pgp, b"x", {}) == "a PGP signature, not an SSH signature"
    x509 = b"-----BEGIN SIGNED MESSAGE-----\nabc\n-----END SIGNED MESSAGE-----\n"
    assert refused(x509, b"x", {}) == "an X.509 signature, not an SSH signature"


def test_rsa_over_sha1_is_refused(keys):
    """ssh-keygen never makes one; a hand-made one is refused as ssh-keygen -Y verify does."""
    private = asyncssh.read_private_key(str(keys["rsa"]))
    public = private.public_data
    signed_data = (
        b"SSHSIG"
        + string(b"git")
        + string(b"")
        + string(b"sha512")
        + string(hashlib.sha512(b"x").digest())
    )
    sig = private.sign(signed_data, b"ssh-rsa")
    blob = rebuild([struct.pack(">I", 1), public, b"git", b"", b"sha512", sig])
    assert "SHA-1" in refused(armor(blob), b"x", registered(keys["rsa"]))


def test_security_key_signatures_need_the_touch():
    touched, untouched = SoftwareSecurityKey(), SoftwareSecurityKey(touch=False)
    for key in (touched, untouched):
        armored = asyncssh.create_sshsig(key, b"x", namespace="git")
        known = {key.get_fingerprint("sha256"): "alice"}
        if key is touched:
            assert signatures.verify(armored, b"x", known).account == "alice"
        else:
            assert "bad signature" in refused(armored, b"x", known)


# --- made by git ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_git_signed_commits_and_tags_verify(tree, keys, kind):
    sha = new_commit(tree, "signed", keys[kind])
    git(tree, "tag", "-s", "-m", "release", "v1", key=keys[kind])
    known = registered(keys[kind])
    assert signatures.verify_commit(raw(tree, "commit", sha), known).account == "alice"
    assert signatures.verify_tag(raw(tree, "tag", "v1"), known).account == "alice"


def test_forged_commit_and_tag_are_refused(tree, keys):
    sha = new_commit(tree, "signed", keys["ed25519"])
    git(tree, "tag", "-s", "-m", "release", "v1", key=keys["ed25519"])
    known = registered(keys["ed25519"])
    forged = raw(tree, "commit", sha).replace(b"signed", b"forged")
    with pytest.raises(Unverified, match="bad signature"):
        signatures.verify_commit(forged, known)
    with pytest.raises(Unverified, match="bad signature"):
        signatures.verify_tag(raw(tree, "tag", "v1").replace(b"release", b"released"), known)


def test_unsigned_and_twice_signed_commits_are_refused(tree, keys):
    plain = new_commit(tree, "plain")
    with pytest.raises(Unverified, match=r"^unsigned$"):
        signatures.verify_commit(raw(tree, "commit", plain), {})
    git(tree, "tag", "-a", "-m", "plain", "v0")
    with pytest.raises(Unverified, match=r"^unsigned$"):
        signatures.verify_tag(raw(tree, "tag", "v0"), {})
    once = raw(tree, "commit", new_commit(tree, "signed", keys["ed25519"]))
    head, body = once.split(b"\n\n", 1)
    block = head[head.index(b"gpgsig ") :]
    for second in (block, block.replace(b"gpgsig ", b"gpgsig-sha256 ", 1)):
        twice = head + b"\n" + second + b"\n\n" + body
        with pytest.raises(Unverified, match="more than one signature header"):
            signatures.verify_commit(twice, registered(keys["ed25519"]))


# --- what a ref update brings -----------------------------------------------------------


def test_only_what_the_update_brings_is_checked(tree, keys):
    key = keys["ed25519"]
    store = Repo(str(tree)).object_store
    known = registered(key)
    base = new_commit(tree, "old and unsigned")
    one = new_commit(tree, "one", key).encode()
    two = new_commit(tree, "two", key).encode()
    assert signed.first_unverified(store, two, base.encode(), known) is None
    # a new ref: its whole history, unsigned base and all, unless a known tip has it
    assert signed.first_unverified(store, two, signed.ZERO, known) == (base.encode(), "unsigned")
    assert signed.first_unverified(store, two, signed.ZERO, known, known=[base.encode()]) is None
    assert signed.first_unverified(store, signed.ZERO, two, {}) is None  # a deletion
    assert signed.first_unverified(store, two, one, {}) == (
        two,
        f"signed by {fingerprint(str(key) + '.pub')}, which is not a registered signing key",
    )
    assert signed.first_unverified(store, two, one, known, "bob")[0] == two


def test_a_stored_unsigned_branch_moved_onto_a_ref_is_checked(tree, keys):
    """`git push origin feature:main` brings no object, yet makes feature's commits main's."""
    key = keys["ed25519"]
    store = Repo(str(tree)).object_store
    main = new_commit(tree, "main", key).encode()
    git(tree, "checkout", "-q", "-b", "feature")
    unsigned = new_commit(tree, "unsigned").encode()
    tip = new_commit(tree, "signed on top", key).encode()
    assert signed.first_unverified(store, tip, main, registered(key)) == (unsigned, "unsigned")


def test_merges_check_both_sides_down_to_the_old_tip(tree, keys):
    key = keys["ed25519"]
    store = Repo(str(tree)).object_store
    old = new_commit(tree, "base", key).encode()
    git(tree, "checkout", "-q", "-b", "side")
    side = new_commit(tree, "side, unsigned").encode()
    git(tree, "checkout", "-q", "main")
    new_commit(tree, "main", key)
    git(tree, "merge", "-q", "-S", "--no-ff", "-m", "merge", "side", key=key)
    merge = git(tree, "rev-parse", "HEAD").strip().encode()
    assert signed.first_unverified(store, merge, old, registered(key)) == (side, "unsigned")
    found = signed.new_commits(store, merge, [old])
    assert found is not None and len(found) == 3 and old not in found
    assert signed.new_commits(store, merge, [old], max_commits=2) is None
    reason = signed.first_unverified(store, merge, old, registered(key), max_commits=2)
    assert reason == (merge, "more than 2 commits to verify; push fewer at a time")


def test_annotated_tags_on_the_way_are_checked(tree, keys):
    key = keys["ed25519"]
    store = Repo(str(tree)).object_store
    new_commit(tree, "signed", key)
    git(tree, "tag", "-a", "-m", "unsigned tag", "v0")
    git(tree, "tag", "-s", "-m", "signed tag", "v1", key=key)
    v0 = git(tree, "rev-parse", "v0").strip().encode()
    v1 = git(tree, "rev-parse", "v1").strip().encode()
    assert signed.first_unverified(store, v1, signed.ZERO, registered(key)) is None
    assert signed.first_unverified(store, v0, signed.ZERO, registered(key)) == (v0, "unsigned")
