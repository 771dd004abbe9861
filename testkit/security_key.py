"""A software security key (an `sk-ssh-ed25519` key whose "touch" is a flag), since the
real `ssh` needs hardware for `sk` keys, and an asyncssh client to log in with it.
Shared by the security-key and stolen-key tests."""

from __future__ import annotations

import asyncio
import hashlib

import asyncssh
from asyncssh.packet import Byte, String, UInt32
from asyncssh.sk_eddsa import _SKEd25519Key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

USER_PRESENCE = 0x01


class SoftwareSecurityKey(_SKEd25519Key):
    def __init__(self, touch: bool = True) -> None:
        self._private = Ed25519PrivateKey.generate()
        public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        super().__init__(public, "ssh:", USER_PRESENCE, b"software")
        self.touch = touch

    def sign_ssh(self, data: bytes, sig_algorithm: bytes) -> bytes:
        flags = USER_PRESENCE if self.touch else 0
        counter = 1
        message = (
            hashlib.sha256(b"ssh:").digest()
            + bytes([flags])
            + counter.to_bytes(4, "big")
            + hashlib.sha256(data).digest()
        )
        return String(self._private.sign(message)) + Byte(flags) + UInt32(counter)

    @property
    def line(self) -> str:
        return self.export_public_key().decode().strip()


def run_with(gw, key, command: str, input: str = "") -> asyncssh.SSHCompletedProcess:
    async def go():
        async with asyncssh.connect(
            "127.0.0.1",
            gw.port,
            username="git",
            client_keys=[key],
            known_hosts=None,
            agent_path=None,
            config=None,
        ) as conn:
            return await conn.run(command, input=input)

    return asyncio.run(go())
