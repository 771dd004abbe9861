"""OpenSSH user certificates: which CAs are trusted, which certificates are revoked, and
whether one certificate may log in.

A certificate logs in when it is a user certificate, signed by a CA in
`trusted_user_ca_keys`, valid now, not revoked, names at least one principal (an
account), carries no `force-command` (the gateway decides what runs; a certificate
that asks for one is refused rather than half-honoured) and, if it has a
`source-address`, the client's address is in it. Which principal names an active
account is for the caller (it needs the database); so is the signature over the login.

Both files are read at start (a line that does not parse stops the gateway: trusting
nothing or everything by mistake is worse than not starting) and again on SIGHUP (a
bad file is logged and the old lists stay).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from .errors import Refusal
from .names import printable
from .sshkeys import fingerprint

USER_CERTIFICATE, HOST_CERTIFICATE = 1, 2


@dataclass(frozen=True)
class CertificateFacts:
    """What an OpenSSH certificate says, read by transport/asyncssh_seam.py (asyncssh
    checked the CA's signature over it while decoding)."""

    cert_type: int
    serial: int
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    ca_blob: bytes  # the signing CA's public key, wire format
    key_blob: bytes  # the certified key's public key, wire format
    force_command: str | None
    source_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @property
    def key_fingerprint(self) -> str:
        """The certified key's: what the login's two-step session belongs to."""
        return fingerprint(self.key_blob)

    @property
    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_blob)

    def log_fields(self) -> dict[str, object]:
        """The certificate's key id (the CA's text: escaped) and serial, for the log."""
        return {
            "certificate": printable(self.key_id, 100),
            "serial": self.serial,
            "ca": self.ca_fingerprint,
        }


@dataclass(frozen=True)
class Revoked:
    serials: frozenset[int] = frozenset()
    key_ids: frozenset[str] = frozenset()
    key_fingerprints: frozenset[str] = frozenset()  # every certificate of a stolen key

    def covers(self, cert: CertificateFacts) -> bool:
        return (
            cert.serial in self.serials
            or cert.key_id in self.key_ids
            or cert.key_fingerprint in self.key_fingerprints
        )


@dataclass(frozen=True)
class Trust:
    """The trusted CAs and the revocation list in force."""

    ca_blobs: frozenset[bytes] = frozenset()
    revoked: Revoked = field(default_factory=Revoked)

    @property
    def enabled(self) -> bool:
        return bool(self.ca_blobs)

    def refusal(self, cert: CertificateFacts, peer_host: str | None, now: float) -> str | None:
        """Why this certificate may not log in (a reason for the log), or None.
        `peer_host` None: `source-address` is left to sshd, which checks it itself."""
        if cert.cert_type != USER_CERTIFICATE:
            return "cert-not-a-user-certificate"
        if cert.ca_blob not in self.ca_blobs:
            return "cert-untrusted-ca"
        if self.revoked.covers(cert):
            return "cert-revoked"
        if now < cert.valid_after:
            return "cert-not-yet-valid"
        if now >= cert.valid_before:
            return "cert-expired"
        if not cert.principals:
            return "cert-no-principals"  # asyncssh and sshd would take it for any name
        if cert.force_command is not None:
            return "cert-force-command"
        if (
            peer_host is not None
            and cert.source_addresses
            and not in_networks(peer_host, cert.source_addresses)
        ):
            return "cert-source-address"
        return None


def in_networks(
    host: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def load(ca_file: str, revoked_file: str) -> Trust:
    """Both files as the settings name them ("" for none); a Refusal names the file and
    line of the first thing that does not parse."""
    if not ca_file:
        if revoked_file:
            _read_revoked(Path(revoked_file))  # still checked: a typo should not wait
        return Trust()
    cas = _read_cas(Path(ca_file))
    revoked = _read_revoked(Path(revoked_file)) if revoked_file else Revoked()
    return Trust(cas, revoked)


def _lines(path: Path, setting: str) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise Refusal(
            f"{setting}: cannot read {path}: {exc.strerror or exc.__class__.__name__}"
        ) from None
    except UnicodeDecodeError:
        raise Refusal(f"{setting}: {path} is not UTF-8 text") from None
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _read_cas(path: Path) -> frozenset[bytes]:
    """TrustedUserCAKeys' format: one public key line each (a comment may follow)."""
    blobs = set()
    for number, line in _lines(path, "trusted_user_ca_keys"):
        words = line.split()
        try:
            if len(words) < 2 or "-cert-" in words[0]:
                raise ValueError
            key = asyncssh.import_public_key(f"{words[0]} {words[1]}")
        except (asyncssh.KeyImportError, ValueError):
            raise Refusal(
                f"trusted_user_ca_keys: {path} line {number} is not a CA public key line "
                f"(as in sshd's TrustedUserCAKeys): {printable(line, 60)!r}"
            ) from None
        blobs.add(key.public_data)
    if not blobs:
        raise Refusal(f"trusted_user_ca_keys: {path} holds no CA key")
    return frozenset(blobs)


def _read_revoked(path: Path) -> Revoked:
    """`serial N`, `key-id TEXT` or `key SHA256:...`, one a line."""
    serials, key_ids, fingerprints = set(), set(), set()
    for number, line in _lines(path, "revoked_user_certificates"):
        word, _, value = line.partition(" ")
        value = value.strip()
        if word == "serial" and value.isdigit() and int(value) < 2**64:
            serials.add(int(value))
        elif word == "key-id" and value:
            key_ids.add(value)
        elif word == "key" and value.startswith("SHA256:") and len(value) == 50:
            fingerprints.add(value)
        else:
            raise Refusal(
                f"revoked_user_certificates: {path} line {number} is not 'serial N', "
                f"'key-id TEXT' or 'key SHA256:...': {printable(line, 60)!r}"
            )
    return Revoked(frozenset(serials), frozenset(key_ids), frozenset(fingerprints))
