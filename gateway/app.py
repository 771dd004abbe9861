"""What one gateway process holds for every session it runs: the settings, the master
key's sealer and the Git workers. `gateway serve` makes one at start and keeps it until
it stops; `gateway shell` (under OpenSSH) makes one for its single session. Nothing of
this lives in module globals, so two of them (a test's, say) do not share state."""

from __future__ import annotations

from dataclasses import dataclass

from .config import Settings
from .git.workers.pool import GitWorkers
from .twosv.sealing import Sealer


@dataclass
class App:
    settings: Settings
    sealer: Sealer
    git: GitWorkers

    @classmethod
    def load(cls, settings: Settings, worker_log_fd: int | None = None) -> App:
        """Reads the master key (a Refusal if it is missing or unreadable)."""
        return cls(
            settings, Sealer.load(settings.master_key_path), GitWorkers(settings, worker_log_fd)
        )
