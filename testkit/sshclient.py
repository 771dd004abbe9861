"""An asyncssh client for a test server, for what the `ssh` binary cannot do: many
sessions on one connection, stalled channels, exact bytes on a channel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import asyncssh
from asyncssh.auth import MSG_USERAUTH_PK_OK, _ClientPublicKeyAuth
from asyncssh.packet import Boolean, String

from .server import Gateway


def connect(g: Gateway, key: Path, **options: Any) -> Any:  # awaitable, and `async with`
    """`async with connect(g, key) as conn:` logs in as git with KEY alone (no agent, no
    known_hosts, no ~/.ssh/config); OPTIONS go to asyncssh.connect."""
    return asyncssh.connect(
        "127.0.0.1",
        g.port,
        username="git",
        client_keys=[str(key)],
        known_hosts=None,
        agent_path=None,
        config=None,
        **options,
    )


def probe_then_sign(victim_public: asyncssh.SSHKey, claim_victim_when_signing: bool):
    """A client publickey method that first offers VICTIM_PUBLIC without a signature, and
    when the server answers PK_OK, signs with the client's own key (and, optionally,
    claims the victim's public key in the signed request)."""

    class ProbeThenSign(_ClientPublicKeyAuth):
        # One class per call: the list is that call's record of PK_OK answers.
        probes_ok: ClassVar[list[bytes]] = []

        async def _start(self) -> None:
            self._keypair = await self._conn.public_key_auth_requested()
            if self._keypair is None:
                self._conn.try_next_auth(next_method=True)
                return
            await self.send_request(
                Boolean(False), String(victim_public.algorithm), String(victim_public.public_data)
            )

        def _pk_ok(self, _pkttype, _pktid, packet) -> None:
            packet.get_string()
            key_data = packet.get_string()
            packet.check_end()
            ProbeThenSign.probes_ok.append(key_data)
            self.create_task(self._sign())

        async def _sign(self) -> None:
            claimed = (
                victim_public.public_data
                if claim_victim_when_signing
                else self._keypair.public_data
            )
            await self.send_request(
                Boolean(True),
                String(self._keypair.algorithm),
                String(claimed),
                key=self._keypair,
                trivial=False,
            )

        _packet_handlers: ClassVar[dict[int, Callable[..., None]]] = {MSG_USERAUTH_PK_OK: _pk_ok}

    return ProbeThenSign
