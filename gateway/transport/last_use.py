"""Each login key's last use, written at most once a minute per key (and each
certificate login in the audit log, at most once a minute per certificate).

The server remembers when it last wrote each key's use, so a CI farm logging in many
times a second costs one write a minute per key, not one per login. The write goes
through a connection of its own, in the background: a busy database never holds up a
login, and the connection shared for key look-ups never waits on a write lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..certificates import CertificateFacts
from ..logs import log_event
from ..names import printable
from ..store import audit, keys
from ..store import db as store_db
from ..store.database import Database

log = logging.getLogger("gateway")


class LastUse:
    def __init__(self, connect: Callable[[], Awaitable[Database]]) -> None:
        self._connect = connect  # the server's backend, opened at start
        self._db: Database | None = None
        self._written: dict[str, float] = {}  # fingerprint: time.monotonic() of the write
        self._lock = asyncio.Lock()

    def due(self, fingerprint: str) -> bool:
        """Whether a login with this key should be written now (and note that it is)."""
        now = time.monotonic()
        last = self._written.get(fingerprint)
        if last is not None and now - last < keys.LAST_USE_INTERVAL:
            return False
        self._written[fingerprint] = now
        if len(self._written) > 100_000:  # bounded: forget the oldest half
            for old in sorted(self._written, key=self._written.__getitem__)[:50_000]:
                del self._written[old]
        return True

    async def record(self, fingerprint: str) -> None:
        async with self._lock:
            try:
                if self._db is None:
                    self._db = await self._connect()
                await keys.mark_used(self._db, fingerprint, store_db.now())
                await self._db.commit()
            except Exception as exc:  # a locked or full database: a login is not refused
                await self._abandon()
                log_event(log, "key.last_use_failed", logging.WARNING, error=str(exc))

    async def audit_certificate(self, account: str, cert: CertificateFacts, peer: str) -> None:
        """A certificate login in the audit log: key id, serial, CA and the client."""
        detail = (
            f"key_id={printable(cert.key_id, 100)} serial={cert.serial} "
            f"ca={cert.ca_fingerprint} key={cert.key_fingerprint} peer={peer}"
        )
        async with self._lock:
            try:
                if self._db is None:
                    self._db = await self._connect()
                await audit.write(self._db, account, "auth.certificate", account, detail=detail)
                await self._db.commit()
            except Exception as exc:
                await self._abandon()
                log_event(log, "audit.failed", logging.WARNING, error=str(exc))

    async def _abandon(self) -> None:
        """After a failed write: nothing half-done kept open (nor a pooled connection)."""
        if self._db is not None:
            try:
                await self._db.rollback()
            except Exception:
                pass  # the connection is gone: nothing left to roll back

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None
