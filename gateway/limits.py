"""Caps on connections, so that a flood of sockets cannot keep real users out.

Connections that have not authenticated yet are capped in all (`max_startups`, after
OpenSSH's MaxStartups) and per address (`max_startups_per_address`). When a cap is full
an unauthenticated connection is dropped to make room rather than the new one refused:
the one that has got least far (silent, then still exchanging keys, then authenticating),
oldest first. Sockets held open by an attacker then cannot starve a client that is busy
authenticating, which takes well under a second. All connections from one address are
capped too (`max_connections_per_address`); past it new ones are refused.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable

from .config import Settings

# How far an unauthenticated connection has got.
SILENT, TALKING, AUTHENTICATING = 0, 1, 2


class ConnectionLimits:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings  # read on every call: SIGHUP changes take effect at once
        # ticket -> [address, drop, progress]; in order of arrival
        self._pending: OrderedDict[int, list] = OrderedDict()
        self._address_of: dict[int, str] = {}
        self._per_address: Counter[str] = Counter()
        self._next = 0

    def admit(self, address: str, drop: Callable[[], None]) -> tuple[int | None, int]:
        """A ticket for a new connection, or None when its address has too many; and how
        many older unauthenticated connections were dropped to make room. `drop` closes
        this connection if it is dropped later."""
        cap = self.settings.max_connections_per_address
        if cap and self._per_address[address] >= cap:
            return None, 0
        dropped = 0
        same = [t for t, entry in self._pending.items() if entry[0] == address]
        if len(same) >= self.settings.max_startups_per_address:
            self._drop(self._least_advanced(same))
            dropped += 1
        while len(self._pending) >= self.settings.max_startups:
            self._drop(self._least_advanced(self._pending))
            dropped += 1
        self._next += 1
        ticket = self._next
        self._pending[ticket] = [address, drop, SILENT]
        self._address_of[ticket] = address
        self._per_address[address] += 1
        return ticket, dropped

    def progressed(self, ticket: int, stage: int) -> None:
        entry = self._pending.get(ticket)
        if entry is not None and stage > entry[2]:
            entry[2] = stage

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

    def _least_advanced(self, tickets) -> int:
        return min(tickets, key=lambda t: (self._pending[t][2], t))

    def _drop(self, ticket: int) -> None:
        drop = self._pending[ticket][1]
        self.closed(ticket)
        drop()
