"""Creating the data directory: database, host keys, master key (SPEC §8)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import asyncssh

from .config import Settings
from .errors import Refusal
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
    settings.host_keys_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    paths = []
    for filename, (algorithm, options) in HOST_KEY_ALGORITHMS.items():
        path = settings.host_keys_path / filename
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


def check(settings: Settings) -> None:
    """Refuse, naming the problem and its fix, a data dir the gateway should not run on:
    someone else's, not writable, or with secrets others can read (as sshd refuses a
    readable host key). Whatever does not exist yet is fine: initialise creates it."""
    data = settings.data_dir
    if not data.exists():
        return
    if not data.is_dir():
        raise Refusal(f"Data directory {data} is not a directory: point --data-dir elsewhere")
    owner, me = data.stat().st_uid, os.geteuid()
    if owner != me:
        raise Refusal(
            f"Data directory {data} is owned by uid {owner}, not by the user running "
            f"the gateway (uid {me}): run it as that user, or chown -R it"
        )
    if not os.access(data, os.W_OK | os.X_OK):
        raise Refusal(f"Data directory {data} is not writable: chmod u+rwx {data}")
    secrets_ = [] if os.environ.get("GATEWAY_MASTER_KEY") else [settings.master_key_path]
    if settings.host_keys_path.is_dir():
        secrets_ += [settings.host_keys_path / name for name in HOST_KEY_ALGORITHMS]
    for path in secrets_:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_mode & 0o077:
            raise Refusal(
                f"{path} can be read by other users (mode {st.st_mode & 0o777:o}): chmod 600 {path}"
            )
        if st.st_uid != me:
            raise Refusal(f"{path} is owned by uid {st.st_uid}, not uid {me}: chown it")


async def initialise(settings: Settings, database: bool = True) -> bool:
    """Create whatever is missing; safe to run again on an existing data dir. True if
    host keys were made now (their fingerprints are then worth showing). `database`
    False: the files only (`serve` opens the database itself, waiting for it if down)."""
    check(settings)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.repos_dir.mkdir(exist_ok=True)
    new_keys = not all((settings.host_keys_path / name).exists() for name in HOST_KEY_ALGORITHMS)
    ensure_host_keys(settings)
    ensure_master_key(settings)
    if database:
        backend = await store_db.open_backend(settings)  # created or brought up to date
        await backend.close()
    return new_keys
