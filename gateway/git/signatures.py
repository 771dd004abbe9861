"""Git's SSH signatures (`gpg.format=ssh`), verified in Python against known keys.

A signed commit carries its signature in a `gpgsig` header, over the commit without
that header; a signed annotated tag carries it after its message, over what comes
before. The signature is an armored SSHSIG blob (OpenSSH's PROTOCOL.sshsig), made in
the `git` namespace. The gateway trusts a signature only when it verifies over exactly
those bytes and its key is one of the signing keys registered with the gateway (and,
when asked, one of the pusher's): the key inside the blob is the signer's claim, not
proof. asyncssh parses the key and checks the SSH signature; neither ssh-keygen nor
git is run. Every refusal is one short line, a reason safe to show the pusher.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncssh

# asyncssh (and cryptography under it) is imported when a signature is first checked,
# not with this module: every Git worker imports the push pipeline, and those imports
# would cost each worker (and the zygote they fork from) about 20 MB for pushes that
# check no signature.

NAMESPACE = b"git"
# A 16384-bit RSA key and its signature are about 5 KiB armored: well past any real
# signing key, and small enough that nothing is parsed at scale.
MAX_ARMORED = 16 * 1024
BEGIN = b"-----BEGIN SSH SIGNATURE-----"
END = b"-----END SSH SIGNATURE-----"
# Git's other signature formats, named in the refusal.
OTHER_FORMATS = {
    b"-----BEGIN PGP SIGNATURE-----": "a PGP signature",
    b"-----BEGIN PGP MESSAGE-----": "a PGP signature",
    b"-----BEGIN SIGNED MESSAGE-----": "an X.509 signature",
}
SIGNATURE_HEADERS = (b"gpgsig", b"gpgsig-sha256")
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASHES = {b"sha256": hashlib.sha256, b"sha512": hashlib.sha512}
# Key types a signing key may be (DSA is gone from OpenSSH; certificates are refused:
# a registered key is a key).
KEY_ALGORITHMS = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
# An RSA signature over SHA-1 is refused, as ssh-keygen -Y verify does.
WEAK_SIGNATURE_ALGORITHMS = frozenset({b"ssh-rsa"})


class Unverified(ValueError):
    """A signature the gateway does not accept; str() is the one-line reason."""


@dataclass(frozen=True)
class Signer:
    """Whose registered key made a verified signature."""

    fingerprint: str
    account: str


# --- the armored blob -----------------------------------------------------------------


def _unarmor(armored: bytes) -> bytes:
    """The SSHSIG blob inside the armor (refusing anything else on the way)."""
    if len(armored) > MAX_ARMORED:
        raise Unverified(f"signature too large (over {MAX_ARMORED} bytes)")
    lines = [line.strip() for line in armored.strip().split(b"\n")]
    for marker, name in OTHER_FORMATS.items():
        if lines and lines[0] == marker:
            raise Unverified(f"{name}, not an SSH signature")
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise Unverified("malformed SSH signature (armor)")
    body = b"".join(lines[1:-1])
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise Unverified("malformed SSH signature (not base64)") from None


class _Reader:
    """SSH wire format: uint32 lengths, then that many bytes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise Unverified("malformed SSH signature (truncated)")
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def uint32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self) -> None:
        if self.at != len(self.data):
            raise Unverified("malformed SSH signature (trailing data)")


@dataclass(frozen=True)
class _Blob:
    public_key: bytes  # wire format
    namespace: bytes
    hash_name: bytes
    signature: bytes  # an SSH signature: string algorithm, then its own fields


def _parse(blob: bytes) -> _Blob:
    reader = _Reader(blob)
    if reader.take(6) != _MAGIC:
        raise Unverified("malformed SSH signature (not SSHSIG)")
    if reader.uint32() != _VERSION:
        raise Unverified("unsupported SSH signature version")
    public_key, namespace = reader.string(), reader.string()
    reader.string()  # reserved
    hash_name, signature = reader.string(), reader.string()
    reader.end()
    return _Blob(public_key, namespace, hash_name, signature)


def _key(public_key: bytes) -> asyncssh.SSHKey:
    import asyncssh  # see the imports above

    algorithm = _Reader(public_key).string()
    name = algorithm.decode("ascii", "replace")
    if name.endswith("-cert-v01@openssh.com"):
        raise Unverified("signed with a certificate, not a registered signing key")
    if name not in KEY_ALGORITHMS:
        raise Unverified(f"unknown key algorithm {name[:40]!r}")
    try:
        key = asyncssh.import_public_key(f"{name} {base64.b64encode(public_key).decode()}")
    except (asyncssh.KeyImportError, ValueError):
        raise Unverified("malformed SSH signature (public key)") from None
    if key.get_algorithm() != name:
        raise Unverified("malformed SSH signature (public key)")
    # A security key's signature counts only if it was touched (asyncssh's default for a
    # decoded key is not to ask; ssh-keygen -Y verify's is to).
    key.set_touch_required(True)
    return key


def verify(
    armored: bytes,
    message: bytes,
    keys: Mapping[str, str],
    own_account: str | None = None,
) -> Signer:
    """The registered signer of `message`, or Unverified with the reason.

    `keys` maps the fingerprint of every registered signing key to its account; with
    `own_account`, only that account's keys count (None: any registered key)."""
    blob = _parse(_unarmor(armored))
    if blob.namespace != NAMESPACE:
        shown = blob.namespace.decode("utf-8", "replace")[:40]
        raise Unverified(f"signature made for namespace {shown!r}, not 'git'")
    hash_function = _HASHES.get(blob.hash_name)
    if hash_function is None:
        shown = blob.hash_name.decode("ascii", "replace")[:20]
        raise Unverified(f"unknown hash algorithm {shown!r}")
    key = _key(blob.public_key)
    signature_algorithm = _Reader(blob.signature).string()
    if signature_algorithm in WEAK_SIGNATURE_ALGORITHMS:
        raise Unverified("RSA signature over SHA-1 (ssh-rsa) is not accepted")
    signed = (
        _MAGIC
        + _string(NAMESPACE)
        + _string(b"")
        + _string(blob.hash_name)
        + _string(hash_function(message).digest())
    )
    if not key.verify(signed, blob.signature):
        raise Unverified("bad signature: it does not match the signed content")
    signer = _fingerprint(blob.public_key)
    account = keys.get(signer)
    if account is None:
        raise Unverified(f"signed by {signer}, which is not a registered signing key")
    if own_account is not None and account != own_account:
        raise Unverified(f"signed by {signer}, which is not one of the pusher's signing keys")
    return Signer(signer, account)


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


# --- where Git puts the signature -----------------------------------------------------


def split_commit(raw: bytes) -> tuple[bytes, bytes]:
    """(the signature, the signed payload) of a commit's raw content.

    The payload is the commit with its `gpgsig` header (and continuation lines) taken
    out, as git verifies it. Unsigned, or signed twice (`gpgsig` and `gpgsig-sha256`, or
    one repeated): Unverified."""
    head, sep, body = raw.partition(b"\n\n")
    kept: list[bytes] = []
    found: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in head.split(b"\n"):
        if line.startswith(b" ") and current is not None:
            current.append(line[1:])
            continue
        current = None
        name = line.split(b" ", 1)[0]
        if name in SIGNATURE_HEADERS:
            current = [line[len(name) + 1 :]]
            found.append(current)
            continue
        kept.append(line)
    if not found:
        raise Unverified("unsigned")
    if len(found) > 1:
        raise Unverified("more than one signature header")
    return b"\n".join(found[0]) + b"\n", b"\n".join(kept) + sep + body


def split_tag(raw: bytes) -> tuple[bytes, bytes]:
    """(the signature, the signed payload) of an annotated tag's raw content: the
    signature is the block from the last line that starts one to the end, as git reads
    it. A signature header in a tag (git's sha256 interop form) is refused."""
    head = raw.split(b"\n\n", 1)[0]
    if any(line.split(b" ", 1)[0] in SIGNATURE_HEADERS for line in head.split(b"\n")):
        raise Unverified("signature header in a tag (not supported)")
    markers = (BEGIN, *OTHER_FORMATS)
    start = -1
    at = 0
    for line in raw.splitlines(keepends=True):
        if line.startswith(markers):
            start = at
        at += len(line)
    if start < 0:
        raise Unverified("unsigned")
    return raw[start:], raw[:start]


Verifier = Callable[[bytes, Mapping[str, str], str | None], Signer]


def verify_commit(raw: bytes, keys: Mapping[str, str], own_account: str | None = None) -> Signer:
    signature, payload = split_commit(raw)
    return verify(signature, payload, keys, own_account)


def verify_tag(raw: bytes, keys: Mapping[str, str], own_account: str | None = None) -> Signer:
    signature, payload = split_tag(raw)
    return verify(signature, payload, keys, own_account)


def _fingerprint(public_key: bytes) -> str:
    from ..sshkeys import fingerprint  # imports asyncssh: see the imports above

    return fingerprint(public_key)
