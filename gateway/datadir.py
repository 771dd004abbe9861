"""Creating the data directory: database, host keys, master key (SPEC §8)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncssh

from .config import Settings
from .store import db as store_db

HOST_KEY_ALGORITHMS = {
    "ssh_host_ed25519_key": ("ssh-ed25519", {}),
    "ssh_host_ecdsa_key": ("ecdsa-sha2-nistp256", {}),
    "ssh_host_rsa_key": ("ssh-rsa", {"key_size": 3072}),
}


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file with mode 0600 atomically (no window where it is readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_host_keys(settings: Settings) -> list[Path]:
    settings.host_keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = []
    for filename, (algorithm, options) in HOST_KEY_ALGORITHMS.items():
        path = settings.host_keys_dir / filename
        if not path.exists():
            key = asyncssh.generate_private_key(algorithm, comment="gateway host key", **options)
            _write_private(path, key.export_private_key())
            (path.with_name(filename + ".pub")).write_bytes(key.export_public_key())
        paths.append(path)
    return paths


def host_key_fingerprints(settings: Settings) -> list[str]:
    lines = []
    for path in ensure_host_keys(settings):
        key = asyncssh.read_private_key(path)
        lines.append(f"{key.get_algorithm()} {key.get_fingerprint('sha256')}")
    return lines


def ensure_master_key(settings: Settings) -> None:
    if not settings.master_key_path.exists():
        _write_private(settings.master_key_path, secrets.token_bytes(32))


async def initialise(settings: Settings) -> None:
    """Create whatever is missing; safe to run again on an existing data dir."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.repos_dir.mkdir(exist_ok=True)
    ensure_host_keys(settings)
    ensure_master_key(settings)
    db = await store_db.connect(settings.db_path)
    await db.close()
