"""SSH keys for test users: made with ssh-keygen, fingerprinted the way ssh-keygen
prints them (the form the gateway shows and stores)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]+")


@dataclass
class User:
    name: str
    key: Path  # private key file; the public one is key + ".pub"

    @property
    def pub(self) -> Path:
        return Path(str(self.key) + ".pub")


def make_key(directory: Path, name: str, kind: str = "ed25519") -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@test", "-f", str(path)],
        check=True,
    )
    return path


def fingerprint(key_file: Path | str) -> str:
    """The SHA256 fingerprint of KEY_FILE, as `ssh-keygen -lf` prints it (it reads a
    public key file, or a private one without a passphrase)."""
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(key_file), "-E", "sha256"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = _FINGERPRINT_RE.search(out)
    assert match, out
    return match.group(0)
