"""Behind OpenSSH: sshd checks the key's signature, the gateway does the rest.

    AuthorizedKeysCommand /usr/local/bin/gateway-keys %u %t %k   (runs `gateway authorized-keys`)

`gateway authorized-keys USER TYPE BLOB` prints one authorized_keys line for a key the
gateway knows, with a forced command: `gateway shell --key FINGERPRINT`. sshd runs that
only after the client proved it holds the key, so the fingerprint in the forced command
is a verified identity, as a signature-checked key is under `gateway serve`. The shell
then runs the user's command (`SSH_ORIGINAL_COMMAND`) through the same commands, policy
and 2SV as the gateway's own server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from . import access, commands, logs, sshkeys
from .commands import git as git_command
from .commands.context import Context
from .config import Settings
from .errors import Refusal
from .logs import log_event
from .store import db as store_db
from .twosv.sealing import Sealer

log = logging.getLogger("gateway.shell")
SHELL_LOG = "shell.log"  # in the data dir: stderr is the user's under sshd


async def authorized_keys(settings: Settings, db, config_file: str | None, user: str,
                          key_type: str, key_blob: str) -> str | None:
    """The authorized_keys line for this key, or None (sshd then refuses it)."""
    if user != settings.ssh_user:
        return None
    try:
        (key,) = sshkeys.parse_text(f"{key_type} {key_blob}")
    except (Refusal, ValueError):
        return None
    if await access.identity_for_key(db, key.fingerprint) is None:
        return None
    command = _forced_command(settings, config_file, key.fingerprint)
    # `restrict`: no forwarding of any kind; `pty` back on for the 2SV enrolment's QR code.
    return f'restrict,pty,command="{command}" {key_type} {key_blob}'


def _forced_command(settings: Settings, config_file: str | None, fingerprint: str) -> str:
    words = [sys.executable, "-m", "gateway", "--data-dir", str(settings.data_dir.resolve())]
    if config_file:
        words += ["--config", str(Path(config_file).resolve())]
    words += ["shell", "--key", fingerprint]
    for word in words:
        if any(c in word for c in "\"\\ \n\r\t'$`") or not word.isprintable():
            raise Refusal(f"Cannot put {word!r} in a forced command: move the gateway or its "
                          "data directory to a path without spaces or quotes")
    return " ".join(words)


async def shell(settings: Settings, fingerprint: str) -> int:
    """Run one SSH command for the key sshd verified; the exit status for sshd."""
    _log_to_data_dir(settings)
    line = os.environ.get("SSH_ORIGINAL_COMMAND")
    peer = _peer()
    db = await store_db.connect(settings.db_path, migrate_schema=False)
    try:
        identity = await access.identity_for_key(db, fingerprint)
        if identity is None:
            raise Refusal("This key is no longer accepted")
        stdin, stdout, stderr = await _standard_streams()
        ctx = Context(settings, db, identity, stdin, stdout, stderr, peer,
                      Sealer.load(settings.master_key_path))
        verb, target = commands.describe(line)
        log_event(log, "auth.ok", peer=peer, account=identity.account, key=fingerprint,
                  via="openssh")
        status = await commands.run(ctx, line)
        log_event(log, "command", peer=peer, account=identity.account, verb=verb,
                  target=target, status=status, via="openssh")
        await stdout.drain()
        return status
    finally:
        await db.close()


def _peer() -> str:
    parts = os.environ.get("SSH_CONNECTION", "").split()
    return f"{parts[0]}:{parts[1]}" if len(parts) >= 2 else "-"


def _log_to_data_dir(settings: Settings) -> None:
    """Our log and the workers' go to DATA/shell.log: stderr belongs to the user here."""
    fd = os.open(settings.data_dir / SHELL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    git_command.set_worker_log_fd(fd)
    handler = logging.StreamHandler(os.fdopen(os.dup(fd), "a", buffering=1))
    handler.setFormatter(logs.StructuredFormatter(settings.log_format, tracebacks=False))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))


class _BlockingWriter:
    """For a standard stream that asyncio cannot watch (a regular file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    async def drain(self) -> None:
        pass


class _BlockingReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, n: int = -1) -> bytes:
        return await asyncio.to_thread(os.read, self.fd, n if n > 0 else 65536)


async def _standard_streams():
    """stdin, stdout, stderr as the Reader/Writer that commands expect."""
    loop = asyncio.get_running_loop()
    try:
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(0, "rb", buffering=0, closefd=False))
    except (OSError, ValueError):
        reader = _BlockingReader(0)
    writers = []
    for fd in (1, 2):
        try:
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0, closefd=False))
            writers.append(asyncio.StreamWriter(transport, protocol, None, loop))
        except (OSError, ValueError):
            writers.append(_BlockingWriter(fd))
    return reader, writers[0], writers[1]
