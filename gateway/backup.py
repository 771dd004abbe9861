"""`gateway backup DEST`: a consistent copy of what the gateway cannot rebuild, taken while
it runs: the database (SQLite's online backup API), the host keys and the master key.

Repositories are not in it (they can be large and are plain Git): see the README for
copying them. Nothing half-made is left behind: a failed backup removes DEST again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from . import __version__
from .config import Settings
from .errors import Refusal

MANIFEST = "backup.json"


def backup(settings: Settings, dest: Path) -> list[str]:
    """Write the backup into DEST (new, or an empty directory); the lines to print."""
    if settings.database_url:
        raise Refusal(
            "database_url names a PostgreSQL database: back it up with PostgreSQL's own "
            "tools (pg_dump); gateway backup copies an SQLite installation"
        )
    if not settings.db_path.is_file():
        raise Refusal(f"No gateway database in {settings.data_dir}: nothing to back up")
    created = _prepare(dest)
    try:
        lines = _write(settings, dest)
    except BaseException:
        _remove_contents(dest, created)
        raise
    return lines


def _prepare(dest: Path) -> bool:
    """Make DEST (mode 0700); True if this call created it."""
    if dest.exists():
        if not dest.is_dir():
            raise Refusal(f"Backup destination {dest} exists and is not a directory")
        if any(dest.iterdir()):
            raise Refusal(f"Backup destination {dest} is not empty: give a new or empty directory")
        try:
            os.chmod(dest, 0o700)
        except OSError as exc:
            raise Refusal(f"Cannot use backup destination {dest}: {exc.strerror}") from None
        return False
    try:
        dest.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise Refusal(f"Cannot create backup destination {dest}: {exc.strerror}") from None
    return True


def _write(settings: Settings, dest: Path) -> list[str]:
    lines = []
    files: dict[str, str] = {}
    try:
        schema = _copy_database(settings.db_path, dest / "gateway.db")
    except sqlite3.Error as exc:
        raise Refusal(f"Cannot back up the database: {exc}") from None
    files["gateway.db"] = _sha256(dest / "gateway.db")
    lines.append(f"database: {dest / 'gateway.db'} (online copy, integrity ok, schema {schema})")
    keys_dir = settings.host_keys_path
    if keys_dir.is_dir():
        (dest / "host_keys").mkdir(mode=0o700)
        for path in sorted(keys_dir.iterdir()):
            if path.is_file() and not path.name.endswith(".tmp"):
                target = dest / "host_keys" / path.name
                _copy_private(path, target)
                files[f"host_keys/{path.name}"] = _sha256(target)
        lines.append(f"host keys: {dest / 'host_keys'}")
    if os.environ.get("GATEWAY_MASTER_KEY"):
        lines.append(
            "master key: NOT in this backup, it comes from GATEWAY_MASTER_KEY; keep that "
            "value safe with the backup, or the 2SV secrets cannot be opened"
        )
    elif settings.master_key_path.is_file():
        _copy_private(settings.master_key_path, dest / "master.key")
        files["master.key"] = _sha256(dest / "master.key")
        lines.append(f"master key: {dest / 'master.key'} (mode 0600; it opens the 2SV secrets)")
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gateway": __version__,
        "schema": schema,
        "files": files,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    lines.append(
        f"Backup complete in {dest}. To restore: stop the gateway, copy gateway.db, "
        "host_keys/ and master.key into an empty data directory (mode 0700), add the "
        "repositories, start it."
    )
    return lines


def _copy_database(source: Path, target: Path) -> int:
    """SQLite's online backup: a consistent snapshot even while the server writes."""
    partial = target.with_name(target.name + ".partial")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            (status,) = dst.execute("PRAGMA integrity_check").fetchone()
            if status != "ok":
                raise Refusal(f"The database copy failed its integrity check: {status}")
            (schema,) = dst.execute("PRAGMA user_version").fetchone()
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(partial, target)
    return schema


def _copy_private(source: Path, target: Path) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as data:
        shutil.copyfileobj(data, out)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _remove_contents(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for path in dest.iterdir():  # an empty directory the operator gave: empty it again
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
