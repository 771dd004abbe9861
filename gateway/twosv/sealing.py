"""Sealing 2SV secrets at rest with AES-GCM under the master key (SPEC §5).

The master key is 32 bytes in DATA/master.key (mode 0600), or GATEWAY_MASTER_KEY
(64 hex digits). Each sealed value is bound to its purpose and owner through the
associated data, so a sealed value copied to another row does not open.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import Refusal

NONCE_BYTES = 12


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise Refusal("The master key must be 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, master_key_path: Path) -> Sealer:
        from_env = os.environ.get("GATEWAY_MASTER_KEY")
        if from_env:
            try:
                return cls(bytes.fromhex(from_env))
            except ValueError:
                raise Refusal("GATEWAY_MASTER_KEY must be 64 hex digits") from None
        try:
            return cls(master_key_path.read_bytes())
        except OSError as exc:
            raise Refusal(f"Cannot read the master key {master_key_path}: {exc.strerror}") from None

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise RuntimeError(
                f"sealed value for {context} does not open with this master key"
            ) from None
