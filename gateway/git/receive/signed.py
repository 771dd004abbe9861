"""The seam where a push's signature checks are called, per ref (`--require-signed`).

The push pipeline (pipeline.py, through branchrules.py) calls `refusal()` for each ref
update a rule requires signatures on, with the quarantined objects, the store, the old
and new values, and the signing keys the server gathered into the job. The verifier
itself (`gateway/git/signatures.py: verify_pushed`, built on another branch) is not on
this one: until it is wired in here, every such ref is REFUSED, so that a rule asking
for signatures never lets an unverified commit through.
"""

from __future__ import annotations

from dataclasses import dataclass

from dulwich.object_store import BaseObjectStore

NOT_AVAILABLE = "signature verification is not available on this server"


@dataclass(frozen=True)
class SigningKey:
    """A signing key registered with the gateway, as the job carries it."""

    account: str
    fingerprint: str
    public_key: str  # the OpenSSH public key line


def refusal(
    quarantine: BaseObjectStore | None,
    store: BaseObjectStore,
    old: bytes,
    new: bytes,
    keys: tuple[SigningKey, ...],
) -> str | None:
    """Why the update from `old` to `new` is refused (one line naming the commit), or
    None when every commit and annotated tag it makes reachable verifies against `keys`
    (already narrowed to the pusher's own for `--own-keys`).

    Fails closed until the verifier is merged: wire `signatures.verify_pushed` here,
    and return its first refusal as f"{commit_id}: {reason}"."""
    return NOT_AVAILABLE
