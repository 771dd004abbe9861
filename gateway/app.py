"""What one gateway process holds for every session it runs: the settings, the master
key's sealer, the Git workers and the database (a PostgreSQL pool, or the SQLite file).
`gateway serve` makes one at start and keeps it until it stops; `gateway shell` (under
OpenSSH) makes one for its single session. Nothing of this lives in module globals, so
two of them (a test's, say) do not share state."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .git.workers.pool import GitWorkers
from .store import db as store_db
from .store.database import Backend, Database
from .twosv.sealing import Sealer


@dataclass
class App:
    settings: Settings
    sealer: Sealer
    git: GitWorkers
    # Set by whoever opened (and migrated) it; else opened at the first session, unmigrated.
    backend: Backend | None = None

    async def database(self) -> Database:
        """A new line of transactions (gateway/store/database.py) for one session."""
        if self.backend is None:
            self.backend = await store_db.open_backend(self.settings, migrate=False)
        return await self.backend.connect()

    async def close_database(self) -> None:
        if self.backend is not None:
            await self.backend.close()
            self.backend = None

    @classmethod
    def load(cls, settings: Settings, worker_log_fd: int | None = None) -> App:
        """Reads the master key (a Refusal if it is missing or unreadable)."""
        return cls(
            settings, Sealer.load(settings.master_key_path), GitWorkers(settings, worker_log_fd)
        )
