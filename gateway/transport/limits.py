"""Caps on connections, so that a flood of sockets cannot keep real users out.

Connections that have not authenticated yet are capped in all (`max_startups`, after
OpenSSH's MaxStartups). When the cap is full, an unauthenticated connection that is not
getting anywhere is dropped to make room, first from addresses with more than
`max_startups_per_address` of them: one that has sent nothing for SILENT_GRACE seconds
(its socket is checked, so a client whose bytes have arrived but are not read yet counts
as talking; the grace covers a client that connected but has not had the CPU to write
yet), else one whose handshake has run for more than STALLED seconds, oldest first. With
nothing to drop, the new connection is refused. Below the cap nothing is dropped, so
many real clients behind one address (a CI farm) are never dropped for each other, and
sockets an attacker holds open cannot keep out a client that is logging in.
Connections from one address that are past that stage (talking or logged in) are capped
as well (`max_connections_per_address`); past it new ones are refused.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Settings

# How far an unauthenticated connection has got.
SILENT, TALKING, AUTHENTICATING = 0, 1, 2
SILENT_GRACE = 2.0  # seconds
STALLED = 10.0


@dataclass
class _Pending:
    address: str
    drop: Callable[[], None]
    has_sent: Callable[[], bool]  # whether bytes from the client are waiting
    opened: float
    stage: int = SILENT


class ConnectionLimits:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings  # read on every call: SIGHUP changes take effect at once
        self.clock = clock
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # in order of arrival
        self._address_of: dict[int, str] = {}
        self._per_address: Counter[str] = Counter()
        self._next = 0

    def admit(
        self, address: str, drop: Callable[[], None], has_sent: Callable[[], bool] = lambda: False
    ) -> tuple[int | None, str]:
        """A ticket for a new connection, or None with the reason it is refused. `drop`
        closes this connection if it is dropped later to make room."""
        cap = self.settings.max_connections_per_address
        if cap:
            # Silent sockets are the startup caps' business; this one limits real use.
            silent = sum(
                1 for p in self._pending.values() if p.address == address and p.stage == SILENT
            )
            if self._per_address[address] - silent >= cap:
                return None, "max_connections_per_address"
        if len(self._pending) >= self.settings.max_startups:
            victim = self._droppable(self._crowded_first())
            if victim is None:
                return None, "max_startups"
            self._drop(victim)
        self._next += 1
        ticket = self._next
        self._pending[ticket] = _Pending(address, drop, has_sent, self.clock())
        self._address_of[ticket] = address
        self._per_address[address] += 1
        return ticket, ""

    def progressed(self, ticket: int, stage: int) -> None:
        pending = self._pending.get(ticket)
        if pending is not None and stage > pending.stage:
            pending.stage = stage

    def authenticated(self, ticket: int) -> None:
        self._pending.pop(ticket, None)

    def closed(self, ticket: int) -> None:
        """The connection is gone (or dropped: it stops counting at once, not when its
        socket has finished closing)."""
        self._pending.pop(ticket, None)
        address = self._address_of.pop(ticket, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    @property
    def unauthenticated(self) -> int:
        return len(self._pending)

    @property
    def connections(self) -> int:
        return len(self._address_of)

    def _crowded_first(self) -> list[int]:
        """Pending tickets, those of addresses over their share first, oldest first."""
        count = Counter(p.address for p in self._pending.values())
        share = self.settings.max_startups_per_address
        crowded = [t for t, p in self._pending.items() if count[p.address] > share]
        return crowded + [t for t in self._pending if count[self._pending[t].address] <= share]

    def _droppable(self, tickets: list[int]) -> int | None:
        """The oldest silent connection, else the oldest stalled one, else None."""
        now = self.clock()
        stalled = None
        for ticket in tickets:
            pending = self._pending[ticket]
            age = now - pending.opened
            if pending.stage == SILENT and age >= SILENT_GRACE:
                if not pending.has_sent():
                    return ticket
                pending.stage = TALKING
            if stalled is None and age > STALLED:
                stalled = ticket
        return stalled

    def _drop(self, ticket: int) -> None:
        drop = self._pending[ticket].drop
        self.closed(ticket)
        drop()
