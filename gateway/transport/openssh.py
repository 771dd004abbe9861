"""Behind OpenSSH: sshd checks the key's signature, the gateway does the rest.

    AuthorizedKeysCommand /usr/local/bin/gateway-keys %u %t %k   (runs `gateway authorized-keys`)

`gateway authorized-keys USER TYPE BLOB` prints one authorized_keys line for a key the
gateway knows, with a forced command: `gateway shell --key FINGERPRINT`. sshd runs that
only after the client proved it holds the key, so the fingerprint in the forced command
is a verified identity, as a signature-checked key is under `gateway serve`. The shell
then runs the user's command (`SSH_ORIGINAL_COMMAND`) through the same session core
(gateway/session.py), commands, policy and 2SV as the gateway's own server; this module
only makes the standard streams into the session's three.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import selectors
import sys
from pathlib import Path

from .. import access, certificates, config, logs, sshkeys
from ..app import App
from ..certificates import CertificateFacts
from ..commands.context import Reader, Writer
from ..config import Settings
from ..decision import Identity
from ..errors import Refusal
from ..git import protocol
from ..logs import log_event
from ..names import printable
from ..session import Streams, Transport, run_session
from ..store import audit
from ..store import db as store_db
from ..store.database import Backend, Database, Unusable
from . import asyncssh_seam

log = logging.getLogger("gateway.shell")
SHELL_LOG = "shell.log"  # in the data dir: stderr is the user's under sshd
# sshd hands the forced command to the login shell (`$SHELL -c`): its words are left
# unquoted, so only characters that no shell treats specially may appear in them.
PLAIN_WORD = re.compile(r"[A-Za-z0-9_./+:=@%,-]+")
# A client may send variables (sshd's AcceptEnv): none of these may steer the shell.
IGNORED_ENV_PREFIXES = ("GATEWAY_", "PYTHON")
# sshd's pty (ssh -t) is a real terminal: it echoes and cooks lines itself. Our stdout
# and stderr are asyncio pipes: drained before the process exits.
OPENSSH = Transport(via="openssh", cooks_terminal=False, drain_at_end=True)


async def authorized_keys(
    settings: Settings,
    db: Database,
    config_file: str | None,
    user: str,
    key_type: str,
    key_blob: str,
) -> str | None:
    """The authorized_keys line for this key, or None (sshd then refuses it)."""
    if user != settings.ssh_user:
        return None
    try:
        (key,) = sshkeys.parse_text(f"{key_type} {key_blob}")
    except (Refusal, ValueError):
        return None
    if await access.identity_for_key(db, key.fingerprint) is None:
        return None
    # The config file this lookup used, so that the shell reads the same one.
    config_file = config_file or os.environ.get("GATEWAY_CONFIG")
    command = _forced_command(settings, config_file, ["--key", key.fingerprint])
    # `restrict`: no forwarding of any kind; `pty` back on for the 2SV enrolment's QR code.
    return f'restrict,pty,command="{command}" {key_type} {key_blob}'


async def authorized_principals(
    settings: Settings,
    db: Database,
    config_file: str | None,
    user: str,
    cert_blob: str,
) -> str | None:
    """For sshd's AuthorizedPrincipalsCommand (`%u %k`): the one principal line, with its
    forced command, of a certificate the gateway's own policy lets in, or None.

    sshd has checked the certificate against its TrustedUserCAKeys, its validity and
    `source-address`, and (before running the forced command) the login's signature;
    the gateway checks its own trust and revocation files, the principals and
    `force-command` again, and which principal names an enabled account."""
    if user != settings.ssh_user:
        return None
    facts = _certificate(cert_blob)
    if facts is None:
        return None
    trust = certificates.load(settings.trusted_user_ca_keys, settings.revoked_user_certificates)
    identity, _reason = await access.identity_for_certificate(db, trust, facts, None)
    if identity is None or identity.certificate is None:
        return None
    command = _forced_command(settings, config_file, ["--certificate", cert_blob])
    # The principal is an account's name (checked when it was made): plain text.
    return f'restrict,pty,command="{command}" {identity.certificate.principal}'


def _certificate(cert_blob: str) -> CertificateFacts | None:
    try:
        blob = base64.b64decode(cert_blob, validate=True)
        if not asyncssh_seam.claims_certificate(blob):
            return None
        return asyncssh_seam.read_certificate(blob)[0]
    except (ValueError, asyncssh_seam.MalformedCertificate):
        return None


def _forced_command(settings: Settings, config_file: str | None, who: list[str]) -> str:
    # -I: no PYTHON* variables, no user site-packages, not the login's working directory
    # on sys.path (sshd starts the command in the unix user's home).
    words = [sys.executable, "-I", "-m", "gateway", "--data-dir", str(settings.data_dir.resolve())]
    if config_file:
        words += ["--config", str(Path(config_file).resolve())]
    words += ["shell", *who]
    for word in words:
        if not PLAIN_WORD.fullmatch(word):
            raise Refusal(
                f"Cannot put {word!r} in a forced command: use paths for Python, "
                "the data directory and the config file made only of letters, "
                "digits and . _ - / + : = @ % ,"
            )
    return " ".join(words)


async def shell(
    settings: Settings,
    fingerprint: str | None,
    config_file: str | None = None,
    certificate: str | None = None,
) -> int:
    """Run one SSH command for the key (or certificate) sshd verified; the exit status
    for sshd."""
    settings = _settings_without_client_env(settings, config_file)
    settings.spare_workers = 0  # one request, one worker: none kept waiting for the next
    log_fd = _log_to_data_dir(settings)
    backend: Backend | None = None
    try:
        # One backend for the process (a pool of one on PostgreSQL): not migrated here,
        # as sshd's commands never change the schema.
        backend = await store_db.open_backend(settings, migrate=False)
        who = (
            fingerprint
            if certificate is None
            else await _certificate_identity(settings, backend, certificate)
        )
        if who is None:
            raise Refusal("This certificate is no longer accepted.")
        return await _run(settings, backend, who, log_fd)
    except Unusable as problem:  # the operator's to fix: in the log, not for the user
        log_event(log, "session.failed", logging.ERROR, peer=_peer(), error=problem.message)
        raise Refusal("internal error; the operator has the details") from None
    except Refusal:
        raise  # meant for the user
    except Exception as exc:
        # Before the session core could run (the master key, the streams): as there, one
        # line for the user, the details in the log.
        log_event(
            log,
            "session.failed",
            logging.ERROR,
            peer=_peer(),
            error=f"{exc.__class__.__name__}: {exc}",
        )
        log.debug("session failure details", exc_info=True)
        raise Refusal("internal error; the operator has the details") from None
    finally:
        if backend is not None:
            await backend.close()


async def _certificate_identity(
    settings: Settings, backend: Backend, cert_blob: str
) -> Identity | None:
    """The identity of the certificate sshd verified, checked again now (revoked, expired
    or its account disabled since sshd asked: None); logged as gateway serve logs it."""
    facts = _certificate(cert_blob)
    if facts is None:
        log_event(log, "auth.failed", peer=_peer(), reason="cert-malformed", via="openssh")
        return None
    try:
        trust = certificates.load(settings.trusted_user_ca_keys, settings.revoked_user_certificates)
    except Refusal as refusal:  # the operator's to fix; no path for the user
        raise RuntimeError(refusal.message) from None
    db = await backend.connect()
    try:
        identity, reason = await access.identity_for_certificate(db, trust, facts, None)
        if identity is None:
            log_event(
                log,
                "auth.failed",
                peer=_peer(),
                reason=reason,
                key=facts.key_fingerprint,
                via="openssh",
                **facts.log_fields(),
            )
            return None
        log_event(
            log,
            "auth.ok",
            peer=_peer(),
            account=identity.account,
            key=facts.key_fingerprint,
            via="openssh",
            **facts.log_fields(),
        )
        await audit.write(
            db,
            identity.account,
            "auth.certificate",
            identity.account,
            detail=f"key_id={printable(facts.key_id, 100)} serial={facts.serial} "
            f"ca={facts.ca_fingerprint} key={facts.key_fingerprint} peer={_peer()} via=openssh",
        )
        await db.commit()
        return identity
    finally:
        await db.close()


async def _run(settings: Settings, backend: Backend, who: Identity | str, log_fd: int) -> int:
    try:
        app = App.load(settings, worker_log_fd=log_fd)
    except Refusal as refusal:  # the operator's to fix; no path for the user
        raise RuntimeError(refusal.message) from None
    app.backend = backend
    stdin, stdout, stderr = await _standard_streams()
    # The identity is looked up from the fingerprint in the session core: the key may
    # have been removed, or its account disabled, since sshd asked.
    return await run_session(
        app,
        who,
        os.environ.get("SSH_ORIGINAL_COMMAND"),
        Streams(stdin, stdout, stderr),
        peer=_peer(),
        terminal=os.isatty(1),
        transport=OPENSSH,
        # sshd passes the client's GIT_PROTOCOL with `AcceptEnv GIT_PROTOCOL`.
        git_protocol=protocol.from_environment(os.environ),
    )


def _settings_without_client_env(settings: Settings, config_file: str | None) -> Settings:
    """The settings from the data dir and config file alone. sshd may have passed on
    variables the client sent (AcceptEnv): GATEWAY_* would otherwise change settings or
    the master key, PYTHON* what the Git workers load."""
    ignored = [name for name in os.environ if name.startswith(IGNORED_ENV_PREFIXES)]
    if not ignored:
        return settings
    for name in ignored:
        del os.environ[name]
    return config.load(str(settings.data_dir), config_file)


def _peer() -> str:
    parts = (os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT") or "").split()
    return f"{parts[0]}:{parts[1]}" if len(parts) >= 2 else "-"


def _log_to_data_dir(settings: Settings) -> int:
    """Our log and the workers' go to DATA/shell.log: stderr belongs to the user here."""
    try:
        fd = os.open(settings.data_dir / SHELL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError:
        # Said to the user, who can tell the operator; no path or errno for them.
        raise Refusal(
            "The gateway cannot write its log; the operator has to check the "
            "data directory's owner and permissions"
        ) from None
    handler = logging.StreamHandler(os.fdopen(os.dup(fd), "a", buffering=1))
    handler.setFormatter(logs.StructuredFormatter(settings.log_format, tracebacks=False))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    return fd  # the workers' log too


class _BlockingWriter:
    """For a standard stream that asyncio cannot watch (a regular file)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    async def drain(self) -> None:
        pass


class _BlockingReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, n: int = -1) -> bytes:
        return await asyncio.to_thread(os.read, self.fd, n if n > 0 else 65536)


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch fd: sshd's pipes, sockets and ptys, yes; a regular
    file or /dev/null (a test, an operator trying it by hand), no."""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
        return True
    except (OSError, ValueError):
        return False


async def _standard_streams() -> tuple[Reader, Writer, Writer]:
    """stdin, stdout, stderr as the Reader/Writer that commands expect. Under `ssh -t`
    they are sshd's pty, whose line discipline echoes and ends lines itself: unlike under
    `gateway serve`, no terminal wrapper is needed."""
    loop = asyncio.get_running_loop()
    reader: Reader = _BlockingReader(0)
    if _pollable(0):
        try:
            stream = asyncio.StreamReader(limit=1 << 20)
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stream),
                os.fdopen(0, "rb", buffering=0, closefd=False),
            )
            reader = stream
        except (OSError, ValueError):
            pass
    writers: list[Writer] = []
    for fd in (1, 2):
        writer: Writer = _BlockingWriter(fd)
        if _pollable(fd):
            try:
                transport, protocol = await loop.connect_write_pipe(
                    asyncio.streams.FlowControlMixin,
                    os.fdopen(fd, "wb", buffering=0, closefd=False),
                )
                writer = asyncio.StreamWriter(transport, protocol, None, loop)
            except (OSError, ValueError):
                pass
        writers.append(writer)
    return reader, writers[0], writers[1]
